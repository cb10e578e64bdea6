#!/usr/bin/env bash
# Mutation testing: how much of what the tests claim they would catch, they do catch.
#
#   ./scripts/mutants.sh [protocol|gateway|all]     (default: all)
#
# Runs cargo-mutants (installed from crates.io on first use) on the code where a silent
# mistake costs money or trust: the protocol crate's signing, XML reader and notification
# modules, and the gateway's payment and refund decisions (service/notifications.rs,
# service/refunds.rs, provider/v2/mod.rs). Each
# mutant is built and the package's own tests run against it; a mutant the tests do not
# catch is a test that is missing, or a change that makes no difference (then it is listed,
# with the reason, in scripts/mutants-equivalent.md).
#
# Slow (about 40 minutes for the protocol set and an hour for the gateway's on two cores),
# so not part of CI. Results go to target/mutants/<set>/
# (mutants.out/caught.txt, missed.txt, timeout.txt, unviable.txt).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo-mutants >/dev/null 2>&1; then
    echo "mutants: installing cargo-mutants from crates.io"
    cargo install --locked cargo-mutants
fi

which=${1:-all}
# Each set runs once, then once more with --iterate on what survived (missed or timed out):
# the first pass may use a quick subset of the tests, the second always runs them all.
run() {
    local set=$1
    shift
    mkdir -p "target/mutants/$set"
    echo "== mutants: $set"
    # A missed mutant is the finding, not a failure of this script: the summary says it.
    cargo mutants --no-shuffle -j 1 --output "target/mutants/$set" "$@" || true
}
summary() {
    local set=$1
    echo "== mutants: $set, after both passes"
    for f in caught missed timeout unviable; do
        printf '%-9s %s\n' "$f" "$(wc -l < "target/mutants/$set/mutants.out/$f.txt" 2>/dev/null || echo '?')"
    done
}

# Neither set needs PostgreSQL: SQLite suffices to judge a decision, and a developer's
# DATABASE_URL must not slow every mutant down.
unset DATABASE_URL WXPAY_REQUIRE_POSTGRES

protocol=(-p wxpay-protocol
    --file crates/wxpay-protocol/src/sign.rs
    --file crates/wxpay-protocol/src/xml.rs
    --file crates/wxpay-protocol/src/v2/notify.rs)
gateway=(-p wxpay-gateway
    --file crates/wxpay-gateway/src/service/notifications.rs
    --file crates/wxpay-gateway/src/service/refunds.rs
    --file crates/wxpay-gateway/src/provider/v2/mod.rs
    # Log formatting only: what is clipped for a log line or how a peer is named.
    --exclude-re 'peer_of|clip')

if [[ $which == protocol || $which == all ]]; then
    run protocol "${protocol[@]}" -- --lib --test it
    run protocol --iterate "${protocol[@]}" -- --lib --test it
    summary protocol
fi
if [[ $which == gateway || $which == all ]]; then
    # First the end-to-end modules that exercise notifications and refunds (about 30 s a
    # mutant on two cores), then every gateway test on the survivors.
    run gateway "${gateway[@]}" -- --lib --test it -- flow:: refunds:: golden:: jobs::
    run gateway --iterate "${gateway[@]}" -- --lib --test it
    summary gateway
fi
