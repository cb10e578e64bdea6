#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer): a smoke run for CI, and campaigns for the trust report.
#
#   scripts/fuzz.sh smoke [SECONDS]                   # each protocol target SECONDS (default 10)
#   scripts/fuzz.sh campaign [CPU_MINUTES] [TARGET…]  # each target CPU_MINUTES of CPU (default 30)
#
# The smoke run builds the protocol's targets on the stable toolchain without a sanitizer (a
# minute's build; Rust's own checks catch panics and, with debug assertions, overflows). A
# campaign builds every target, the gateway's too, on the nightly toolchain with
# AddressSanitizer, runs each until its process has used CPU_MINUTES of CPU (measured from
# /proc, so that other work on the machine does not shorten it), and writes what it found to
# docs/trust/runs/fuzz-<target>.json, which the trust report reads.
#
# Each target starts from the seeds that reach its code (below). A crash, a timeout (an input
# that takes over a second) or an out-of-memory is saved under fuzz/artifacts/<target>/ and
# fails the run: copy the input to testdata/fuzz/ (the tests replay it from then on) and fix
# the bug. libFuzzer's timeout is wall-clock time, so a campaign sharing the machine with
# other work would see inputs of a few milliseconds "time out" while it waits for a CPU: a
# campaign runs with a 10 s timeout, then replays its whole corpus and anything it saved
# with the 1 s limit, and only an input slow on its own fails it. cargo-fuzz and the
# nightly toolchain are installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOCOL_TARGETS=(xml_reader notification refund_req_info bill v3_notification)
ALL_TARGETS=("${PROTOCOL_TARGETS[@]}" gateway_bodies)

# seeds TARGET: the files a target's corpus starts from.
seeds() {
  case "$1" in
    xml_reader | notification)
      ls testdata/vectors/xml/*.xml testdata/cli/*.xml testdata/fuzz/*.xml testdata/golden/*.xml ;;
    refund_req_info) ls testdata/fuzz/refund-inner.xml testdata/golden/notify-refund-*.xml ;;
    bill) ls testdata/golden/bill-all.txt ;;
    v3_notification) ls testdata/fuzz/v3-notification.txt testdata/cli/v3-notify*.http ;;
    gateway_bodies) ls testdata/fuzz/gateway/*.json testdata/golden/notify-pay-md5.xml ;;
    *) echo "fuzz: unknown target $1" >&2; exit 2 ;;
  esac
}

need_cargo_fuzz() {
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
}

# Campaigns keep their corpora and findings under fuzz/; the smoke run, under target/, so
# that the two never touch each other's files.
WORK=fuzz

# prepare TARGET: a fresh artifacts folder and a corpus holding at least the seeds.
prepare() {
  mkdir -p "$WORK/corpus/$1" "$WORK/artifacts/$1"
  rm -f "$WORK/artifacts/$1"/*
  # shellcheck disable=SC2046
  cp $(seeds "$1") "$WORK/corpus/$1/"
}

# found TARGET: how many crashes, timeouts and out-of-memory inputs libFuzzer saved.
found() {
  find "$WORK/artifacts/$1" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l
}

# The options of every run: over 2 GiB an input is an OOM (the timeout is each mode's).
LIBFUZZER_OPTS=(-rss_limit_mb=2048 -max_len=8192 -print_final_stats=1)

smoke() {
  local seconds="${1:-10}" failed=0 target
  WORK=target/fuzz-smoke
  need_cargo_fuzz
  # Without the gateway feature: the gateway's target is left out, and its dependencies. Its
  # own target folder, so that it never replaces a campaign's sanitized builds.
  (cd fuzz && cargo fuzz build -s none --target-dir ../target/fuzz-smoke)
  for target in "${PROTOCOL_TARGETS[@]}"; do
    prepare "$target"
    echo "== fuzz smoke: $target, ${seconds}s"
    local log="$WORK/$target.log"
    "$WORK/x86_64-unknown-linux-gnu/release/$target" "${LIBFUZZER_OPTS[@]}" -timeout=1 \
      -max_total_time="$seconds" -artifact_prefix="$WORK/artifacts/$target/" "$WORK/corpus/$target" \
      >"$log" 2>&1 || true
    grep -E '^#[0-9]+' "$log" | tail -1
    if [[ "$(found "$target")" -ne 0 ]] || ! grep -q '^Done [0-9]* runs' "$log"; then
      tail -30 "$log" >&2
      echo "fuzz: $target found an input that breaks it: $WORK/artifacts/$target/" >&2
      failed=1
    fi
  done
  return "$failed"
}

# cpu_seconds PID: the CPU time a process has used so far, in whole seconds.
cpu_seconds() {
  local stat ticks
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo -1; return; }
  # Fields 14 and 15 (utime, stime), counted after the command name, which may hold spaces.
  stat=${stat##*) }
  read -r -a f <<<"$stat"
  ticks=$((f[11] + f[12]))
  echo $((ticks / $(getconf CLK_TCK)))
}

campaign() {
  local minutes="${1:-30}"
  shift || true
  local targets=("$@")
  [[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")
  need_cargo_fuzz
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  (cd fuzz && cargo +nightly fuzz build -a --features gateway)
  mkdir -p docs/trust/runs target/trust/fuzz
  local target failed=0
  for target in "${targets[@]}"; do
    prepare "$target"
    local log="target/trust/fuzz/$target.log" budget=$((minutes * 60)) started pid used=0
    started=$(date +%s)
    echo "== fuzz campaign: $target, $minutes CPU-minutes (AddressSanitizer), log in $log"
    # A wall-clock limit too, so that a machine busy with other work cannot keep it forever.
    local bin="fuzz/target/x86_64-unknown-linux-gnu/release/$target"
    "$bin" "${LIBFUZZER_OPTS[@]}" -timeout=10 \
      -max_total_time=$((budget * 4)) -artifact_prefix="fuzz/artifacts/$target/" \
      "fuzz/corpus/$target" >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      used=$(cpu_seconds "$pid")
      if [[ "$used" -ge "$budget" ]]; then
        kill -INT "$pid"
        break
      fi
      sleep 5
    done
    wait "$pid" || true
    local wall=$(($(date +%s) - started)) crashes execs cov ft corpus rss last slow
    # Every input of the corpus, and every timeout saved, alone with the 1 s limit.
    slow=0
    "$bin" -timeout=1 -rss_limit_mb=2048 -runs=0 "fuzz/corpus/$target" >"$log.replay" 2>&1 || slow=1
    for t in "fuzz/artifacts/$target"/timeout-*; do
      [[ -e "$t" ]] || continue
      if "$bin" -timeout=1 -rss_limit_mb=2048 "$t" >>"$log.replay" 2>&1; then
        rm "$t" # fast alone: it timed out waiting for a CPU
      else
        slow=1
      fi
    done
    crashes=$(( $(found "$target") + slow ))
    execs=$(grep -oP 'stat::number_of_executed_units:\s+\K[0-9]+' "$log" | tail -1 || true)
    rss=$(grep -oP 'stat::peak_rss_mb:\s+\K[0-9]+' "$log" | tail -1 || true)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(grep -oP 'cov: \K[0-9]+' <<<"$last" || echo 0)
    ft=$(grep -oP 'ft: \K[0-9]+' <<<"$last" || echo 0)
    corpus=$(grep -oP 'corp: \K[0-9]+' <<<"$last" || echo 0)
    local ok=true
    [[ "$crashes" -eq 0 && -n "$execs" ]] || { ok=false; failed=1; }
    python3 - "$target" "$ok" "$used" "$wall" "${execs:-0}" "$cov" "$ft" "$corpus" "${rss:-0}" "$crashes" "$minutes" <<'EOF'
import json, subprocess, sys, datetime
t, ok, cpu, wall, execs, cov, ft, corpus, rss, crashes, minutes = sys.argv[1:]
commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
figure = (f"{t}: {int(cpu) / 60:.1f} CPU-min with AddressSanitizer, {int(execs):,} executions "
          f"({int(execs) / max(int(cpu), 1):,.0f}/s), coverage {cov} edges / {ft} features, corpus {corpus}, "
          f"peak RSS {rss} MB, {crashes} crashes, timeouts (>1 s) or OOMs")
run = {
    "run": f"fuzz-{t}", "promises": ["39"], "ok": ok == "true", "figure": figure,
    "date": datetime.date.today().isoformat(), "commit": commit,
    "command": f"scripts/fuzz.sh campaign {minutes} {t}",
    "cpu_seconds": int(cpu), "wall_seconds": int(wall), "executions": int(execs),
    "coverage": int(cov), "features": int(ft), "corpus": int(corpus), "peak_rss_mb": int(rss), "crashes": int(crashes),
}
open(f"docs/trust/runs/fuzz-{t}.json", "w").write(json.dumps(run, indent=1, ensure_ascii=False) + "\n")
print(figure)
EOF
  done
  return "$failed"
}

case "${1:-}" in
  smoke) shift; smoke "$@" ;;
  campaign) shift; campaign "$@" ;;
  *) sed -n '2,5p' "$0" >&2; exit 2 ;;
esac
