#!/usr/bin/env bash
# scripts/bench-rewrap.sh [FLAGS] — the re-wrap benchmark (issue 3), one command:
# builds benches/rewrap.rs in release mode and runs it. It makes a fresh
# SoftHSM2 token in a temporary directory, 100 000 DEK records sealed under
# KEK v1, rotates to v2 and re-wraps every record, printing records/s and the
# total seconds (goal: 100 000 records in <= 10 s).
#
#   bash scripts/bench-rewrap.sh                         100 000 records, batch 500
#   bash scripts/bench-rewrap.sh --records 20000 --batch 100
#   bash scripts/bench-rewrap.sh --keep                  keep the token directory
#   bash scripts/bench-rewrap.sh --threads 2             two worker threads
#
# Needs SoftHSM2 and pkcs11-tool (Debian packages softhsm2 and opensc; see
# scripts/deps.sh), and cargo.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo_root"

if [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi
command -v cargo >/dev/null 2>&1 || {
    echo "bench-rewrap.sh: error: cargo not found (install Rust: https://rustup.rs)" >&2
    exit 1
}
for tool in softhsm2-util pkcs11-tool; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "bench-rewrap.sh: error: $tool not found (install the Debian packages softhsm2 and opensc, e.g. bash scripts/deps.sh)" >&2
        exit 1
    }
done

echo "bench-rewrap.sh: cargo build --release --bench rewrap" >&2
exe=$(cargo build --release --bench rewrap --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\/rewrap-[^"]*\)".*/\1/p' | tail -n 1)
if [[ -z $exe || ! -x $exe ]]; then
    echo "bench-rewrap.sh: error: could not find the built benchmark executable" >&2
    exit 1
fi
echo "bench-rewrap.sh: $exe --bench $*" >&2
exec "$exe" --bench "$@"
