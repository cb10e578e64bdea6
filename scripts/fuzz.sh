#!/usr/bin/env bash
# Fuzzes the XML reader and the notification parser, each for SECONDS (default 60), seeded
# with the hostile samples, the CLI fixtures and testdata/fuzz. Works on the stable
# toolchain (cargo-fuzz without a sanitizer; Rust's own checks catch what matters here:
# panics, overflows in debug assertions, and the invariants the targets assert).
#
#   cargo install cargo-fuzz     # once
#   scripts/fuzz.sh 60
#
# A crash is saved under fuzz/artifacts/<target>/; copy it to testdata/fuzz/ so that
# `cargo test` checks it from then on, and fix the bug.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"
for target in xml_reader notification; do
  mkdir -p "fuzz/corpus/$target"
  cp testdata/vectors/xml/*.xml testdata/cli/*.xml testdata/cli/*.json testdata/fuzz/*.xml "fuzz/corpus/$target/"
  (cd fuzz && cargo fuzz run -s none "$target" -- -max_total_time="$SECONDS_PER_TARGET" -max_len=8192)
done
