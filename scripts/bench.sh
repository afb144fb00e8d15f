#!/usr/bin/env bash
# scripts/bench.sh [FLAGS] — the side-by-side benchmark (issue 4), one command:
# builds the module (target/release/libhsm_envelope.so) and benches/side_by_side.rs
# in release mode, then runs the bench, which loads that module and SoftHSM2 in
# one process and prints the table (CSV in target/bench/).
#
#   bash scripts/bench.sh              full run (~2 min; run it on an idle machine)
#   bash scripts/bench.sh --quick      short cells, for development
#   bash scripts/bench.sh --help       all flags (--csv PATH, --threads N, --sizes ...)
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
    echo "bench.sh: error: cargo not found (install Rust: https://rustup.rs)" >&2
    exit 1
}
for tool in softhsm2-util pkcs11-tool; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "bench.sh: error: $tool not found (install the Debian packages softhsm2 and opensc, e.g. bash scripts/deps.sh)" >&2
        exit 1
    }
done

# One cargo invocation, one profile (release): the module and the bench are
# built together, so target/release/libhsm_envelope.so is the module the bench
# loads (`cargo bench` would rebuild the library under the bench profile).
echo "bench.sh: cargo build --release --lib --bench side_by_side" >&2
exe=$(cargo build --release --lib --bench side_by_side --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\/side_by_side-[^"]*\)".*/\1/p' | tail -n 1)
if [[ -z $exe || ! -x $exe ]]; then
    echo "bench.sh: error: could not find the built benchmark executable" >&2
    exit 1
fi
echo "bench.sh: $exe --bench $*" >&2
exec "$exe" --bench "$@"
