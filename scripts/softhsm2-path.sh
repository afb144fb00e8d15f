#!/usr/bin/env bash
# scripts/softhsm2-path.sh [--candidates]
#
# Prints the path of SoftHSM2's PKCS#11 module (libsofthsm2.so): the file
# named by $SOFTHSM2_MODULE if that is set (it must exist), else the first of
# the candidates below that exists. Exits 1 with a message on stderr if there
# is none. With --candidates, prints the candidate list, one per line.
#
# This is the scripts' one copy of the list (new-token.sh and deps.sh run
# this script); the Rust one is SOFTHSM2_CANDIDATES in src/config.rs, and
# tests/token_setup.rs checks that the two agree.
set -euo pipefail

prog=softhsm2-path.sh
candidates=(
    /usr/lib/softhsm/libsofthsm2.so
    /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so
)
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

case "${1:-}" in
"") ;;
--candidates)
    printf '%s\n' "${candidates[@]}"
    exit 0
    ;;
*)
    printf 'usage: %s [--candidates]\n' "$0" >&2
    exit 2
    ;;
esac

if [[ -n ${SOFTHSM2_MODULE:-} ]]; then
    [[ -f $SOFTHSM2_MODULE ]] || die "SOFTHSM2_MODULE=$SOFTHSM2_MODULE: no such file"
    printf '%s\n' "$SOFTHSM2_MODULE"
    exit 0
fi
for candidate in "${candidates[@]}"; do
    if [[ -f $candidate ]]; then
        printf '%s\n' "$candidate"
        exit 0
    fi
done
die "SoftHSM2 module libsofthsm2.so not found (looked at ${candidates[*]}); install the Debian package softhsm2 (scripts/deps.sh) or set SOFTHSM2_MODULE"
