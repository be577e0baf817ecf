#!/usr/bin/env bash
# Builds every fuzz target and runs each for a few seconds (default 10; the first
# argument overrides), seeded with a copy of the checked-in corpus so the tree is not
# modified. Fails if any target crashes. Used by CI (STYLE.md C12).
#
#   bash fuzz/smoke.sh [SECONDS]
#
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable toolchain build it.
set -euo pipefail

secs="${1:-10}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets=$(cargo fuzz list)
echo "smoke: building $(echo $targets | wc -w) targets" >&2
# -a: debug assertions and overflow checks on, so they count as crashes too.
cargo fuzz build -a

work="$(mktemp -d "${TMPDIR:-/tmp}/kogge-fuzz-smoke.XXXXXX")"
trap 'rm -rf "$work"' EXIT

failed=()
for t in $targets; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    if [ -d "corpus/$t" ]; then
        cp -R "corpus/$t/." "$work/corpus/$t/"
    fi
    echo "smoke: $t for ${secs}s" >&2
    # One target at a time, one job: -max_total_time bounds the run.
    if ! cargo fuzz run -a "$t" "$work/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 \
        -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        echo "smoke: $t FAILED; log tail:" >&2
        tail -n 40 "$work/$t.log" >&2
        mkdir -p "artifacts/$t"
        cp -R "$work/artifacts/$t/." "artifacts/$t/" || true
        failed+=("$t")
    else
        grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$t.log" >&2 || tail -n 3 "$work/$t.log" >&2
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "smoke: crashes in: ${failed[*]} (inputs copied to fuzz/artifacts/)" >&2
    exit 1
fi
echo "smoke: all targets ran ${secs}s without a crash" >&2
