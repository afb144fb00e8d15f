#!/usr/bin/env bash
# scripts/bench.sh [rewrap|scale|replicas|modes] [FLAGS] — the benchmarks, one command each. Builds
# the bench in release mode and runs its executable with --bench FLAGS.
#
# Side-by-side (issue 4, benches/side_by_side.rs): builds the module
# (target/release/libhsm_envelope.so) together with the bench, which loads that
# module and SoftHSM2 in one process and prints the table (CSV in target/bench/).
#
#   bash scripts/bench.sh              full run (~2 min; run it on an idle machine)
#   bash scripts/bench.sh --quick      short cells, for development
#   bash scripts/bench.sh --help       all flags (--csv PATH, --threads N, --sizes ...)
#   bash scripts/bench.sh --fips ...   the same on the FIPS build (cargo --features
#                                      fips: the module and the bench's raw
#                                      aws-lc-rs both on AWS-LC's FIPS module)
#
# Re-wrap (issue 3, benches/rewrap.rs): makes a fresh SoftHSM2 token in a
# temporary directory, 100 000 DEK records sealed under KEK v1, rotates to v2
# and re-wraps every record, printing records/s and the total seconds (goal:
# 100 000 records in <= 10 s).
#
#   bash scripts/bench.sh rewrap                         100 000 records, batch 500
#   bash scripts/bench.sh rewrap --records 20000 --batch 100
#   bash scripts/bench.sh rewrap --keep                  keep the token directory
#   bash scripts/bench.sh rewrap --threads 2             two worker threads
#
# Scale (issue 14, benches/scale.rs): a fresh token, 1 000 000 DEKs sealed on
# the HSM into SQLite and a throwaway PostgreSQL, then fresh processes load the
# module and time a first search, searches by label and CKA_ID, first use of
# DEKs and memory; change propagation between processes on PostgreSQL.
#
#   bash scripts/bench.sh scale                          both engines, 1 000 000 DEKs
#   bash scripts/bench.sh scale --deks 100000 --engine sqlite
#   bash scripts/bench.sh scale --make 1000000           also: one process makes and uses N
#
# Replicas (issue 13, benches/replicas.rs): two SoftHSM2 tokens holding the
# same KEK, kek_mode = "replicas", main reached through the fault-injecting
# backend; times unwraps with both members up, the first after main dies,
# the following ones, and after main is back, against the target (failover
# adds <= 1 s to the first unwrap after a member dies, nothing after).
#
#   bash scripts/bench.sh replicas                       200 unwraps per phase
#   bash scripts/bench.sh replicas --unwraps 1000 --keep
#
# Modes (issue 13, benches/kek_modes.rs): one HSM, any-of and all-of (two
# SoftHSM2 tokens with KEKs of their own) side by side in one process, the
# module loaded once per mode and round; times making a DEK, its first use
# (record opened on the HSMs) and warm use, against the target (at most one
# extra HSM unwrap on first use, nothing on warm use).
#
#   bash scripts/bench.sh modes                          3 rounds x 200 first uses
#   bash scripts/bench.sh modes --rounds 5 --uses 500
#
# Needs SoftHSM2 and pkcs11-tool (Debian packages softhsm2 and opensc; see
# scripts/deps.sh), and cargo.
set -euo pipefail

prog=bench.sh
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo_root"

features=()
if [[ ${1:-} == --fips ]]; then
    shift
    features=(--features fips)
fi

if [[ ${1:-} == rewrap ]]; then
    shift
    bench=rewrap
    # The bench links the library (rlib); it does not load the module.
    build=(--bench rewrap)
elif [[ ${1:-} == scale ]]; then
    shift
    bench=scale
    # Fills the store with the library (rlib), measures through the module.
    build=(--lib --bench scale)
elif [[ ${1:-} == modes ]]; then
    shift
    bench=kek_modes
    # Loads the release module once per kek_mode and round.
    build=(--lib --bench kek_modes)
elif [[ ${1:-} == replicas ]]; then
    shift
    bench=replicas
    # Loads the release module, which reaches main through the fault backend.
    build=(--lib --example faulty_backend --bench replicas)
else
    bench=side_by_side
    # One cargo invocation, one profile (release): the module and the bench
    # are built together, so target/release/libhsm_envelope.so is the module
    # the bench loads (`cargo bench` would rebuild the library under the
    # bench profile).
    build=(--lib --bench side_by_side)
fi

if [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs)"
for tool in softhsm2-util pkcs11-tool; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool not found (install the Debian packages softhsm2 and opensc, e.g. bash scripts/deps.sh)"
done

echo "$prog: cargo build --release ${build[*]} ${features[*]}" >&2
exe=$(cargo build --release "${build[@]}" "${features[@]}" --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\/'"$bench"'-[^"]*\)".*/\1/p' | tail -n 1)
[[ -n $exe && -x $exe ]] || die "could not find the built benchmark executable"
echo "$prog: $exe --bench $*" >&2
exec "$exe" --bench "$@"
