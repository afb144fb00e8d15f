#!/usr/bin/env bash
# scripts/install-p11-kit.sh [--user | --system] [--module PATH] [--uninstall]
#
# Registers the module with p11-kit, so that `p11-kit list-modules`,
# `p11tool --list-tokens` (GnuTLS) and programs that load p11-kit-proxy.so
# find it: writes softhsm-config/hsm-envelope.module with the module's
# absolute path to
#   --user    ~/.config/pkcs11/modules/hsm-envelope.module (the default when
#             not root; p11-kit ignores user configuration in programs run
#             as root)
#   --system  /etc/pkcs11/modules/hsm-envelope.module (the default as root)
# --module PATH   the module to register (default:
#                 target/release/libhsm_envelope.so; `cargo build --release`)
# --uninstall     remove the file instead
#
# Programs that load the module through p11-kit need HSM_ENVELOPE_CONF (and
# SOFTHSM2_CONF for SoftHSM2) in their own environment.
# Exit status: 0 done, 1 failed, 2 usage.
set -euo pipefail

prog=install-p11-kit.sh
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}
usage() {
    printf 'usage: %s [--user | --system] [--module PATH] [--uninstall]\n' "$0" >&2
    exit 2
}

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
template=$root/softhsm-config/hsm-envelope.module
scope=
module=$root/target/release/libhsm_envelope.so
uninstall=false
while (($# > 0)); do
    case $1 in
    --user | --system)
        [[ -z $scope ]] || usage
        scope=${1#--}
        ;;
    --module)
        (($# >= 2)) || usage
        module=$2
        shift
        ;;
    --uninstall) uninstall=true ;;
    *) usage ;;
    esac
    shift
done
if [[ -z $scope ]]; then
    if [[ $(id -u) -eq 0 ]]; then scope=system; else scope=user; fi
fi

case $scope in
user)
    [[ -n ${HOME:-} ]] || die "HOME is not set"
    dir=$HOME/.config/pkcs11/modules
    if [[ $(id -u) -eq 0 ]]; then
        printf '%s: note: p11-kit ignores user configuration in programs run as root; use --system for those\n' \
            "$prog" >&2
    fi
    ;;
system)
    dir=/etc/pkcs11/modules
    [[ $(id -u) -eq 0 ]] || die "--system writes $dir: run it as root (or use --user)"
    ;;
esac
file=$dir/hsm-envelope.module

if $uninstall; then
    rm -f -- "$file" || die "cannot remove $file"
    printf '%s: removed %s\n' "$prog" "$file"
    exit 0
fi

[[ -r $template ]] || die "template not found: $template"
[[ -f $module ]] || die "module not found: $module (build it: cargo build --release, or give --module PATH)"
case $module in
/*) ;;
*) module=$(cd -- "$(dirname -- "$module")" && pwd -P)/$(basename -- "$module") ;;
esac
case $module in
*[[:space:]]*) die "the module's path must not contain white space (p11-kit reads it as one word): $module" ;;
esac

mkdir -p -- "$dir" || die "cannot create $dir"
text=$(<"$template")
printf '%s\n' "${text//@MODULE@/$module}" >"$file.tmp.$$" || die "cannot write $file"
chmod 644 -- "$file.tmp.$$"
mv -f -- "$file.tmp.$$" "$file" || die "cannot write $file"
printf '%s: wrote %s (module: %s)\n' "$prog" "$file" "$module"
printf '%s: check with: p11-kit list-modules; p11tool --list-tokens\n' "$prog"
