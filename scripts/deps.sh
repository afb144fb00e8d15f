#!/usr/bin/env bash
# scripts/deps.sh [--demo] [--fips]
#
# Checks for what hsm-envelope needs on a Debian machine and, when run as
# root with apt-get available, installs what is missing:
#   Debian packages: softhsm2 (softhsm2-util, libsofthsm2.so), opensc
#   (pkcs11-tool), gcc, pkg-config, python3, sqlite3, openssl; for the
#   tests also postgresql (initdb and pg_ctl in
#   /usr/lib/postgresql/<version>/bin: the tests start throwaway clusters of
#   their own, tests/common/pg.rs; the package's own cluster is not used),
#   p11-kit and gnutls-bin (p11tool: tests/p11_kit.rs), g++ and
#   default-jdk-headless (the interop step; java, javac also for
#   tests/java_sunpkcs11.rs)
#   Rust: cargo with rustfmt and clippy, cargo-nextest (cargo itself is not
#   installed: use rustup)
# `apt-get update` runs only if a package must be installed. cargo-nextest is
# installed with `cargo install cargo-nextest --locked` only if missing.
# With --demo, the test-only tools (rustfmt, clippy, cargo-nextest,
# postgresql, p11-kit, gnutls-bin, g++, a JDK) are not required.
# With --fips (or HSM_ENVELOPE_FIPS=1), also what the FIPS build
# (`cargo build --features fips`: AWS-LC's FIPS module, built from source by
# aws-lc-fips-sys) needs: golang-go and cmake (README, FIPS mode).
# Exits non-zero, naming what is missing, if something cannot be fixed.
set -euo pipefail

prog=deps.sh
say() { printf '%s: %s\n' "$prog" "$*"; }
err() { printf '%s: error: %s\n' "$prog" "$*" >&2; }

demo_only=false
fips=false
[[ ${HSM_ENVELOPE_FIPS:-} == 1 ]] && fips=true
for arg in "$@"; do
    case "$arg" in
    --demo) demo_only=true ;;
    --fips) fips=true ;;
    *)
        printf 'usage: %s [--demo] [--fips]\n' "$0" >&2
        exit 2
        ;;
    esac
done

# rustup installs cargo here; CI shells do not always have it on PATH.
if [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
softhsm_module_found() {
    "$BASH" "$script_dir/softhsm2-path.sh" >/dev/null 2>&1
}

# The PostgreSQL server binaries the tests run (not on PATH in Debian).
postgres_server_found() {
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        [[ -x $bin/initdb && -x $bin/pg_ctl ]] && return 0
    done
    return 1
}

# Prints the Debian packages that are missing, one per line.
missing_packages() {
    if ! command -v softhsm2-util >/dev/null 2>&1 || ! softhsm_module_found; then
        echo softhsm2
    fi
    command -v pkcs11-tool >/dev/null 2>&1 || echo opensc
    command -v gcc >/dev/null 2>&1 || echo gcc
    command -v pkg-config >/dev/null 2>&1 || echo pkg-config
    command -v python3 >/dev/null 2>&1 || echo python3
    command -v sqlite3 >/dev/null 2>&1 || echo sqlite3
    command -v openssl >/dev/null 2>&1 || echo openssl
    if $fips; then
        # aws-lc-fips-sys builds AWS-LC's FIPS module with CMake and Go.
        command -v go >/dev/null 2>&1 || echo golang-go
        command -v cmake >/dev/null 2>&1 || echo cmake
    fi
    if ! $demo_only; then
        postgres_server_found || echo postgresql
        command -v p11-kit >/dev/null 2>&1 || echo p11-kit
        command -v p11tool >/dev/null 2>&1 || echo gnutls-bin
        # The interop step: g++ builds PyKCS11's extension, javac the
        # SunPKCS11 test program (also tests/java_sunpkcs11.rs).
        command -v g++ >/dev/null 2>&1 || echo g++
        if ! command -v javac >/dev/null 2>&1 && ! compgen -G '/usr/lib/jvm/*/bin/javac' >/dev/null; then
            echo default-jdk-headless
        fi
    fi
}

# --- Debian packages ---------------------------------------------------------------
mapfile -t missing < <(missing_packages)
if ((${#missing[@]} > 0)); then
    say "missing Debian packages: ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        err "not root, cannot install them; run: sudo apt-get install ${missing[*]}"
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        err "apt-get not available, cannot install: ${missing[*]}"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    say "apt-get update"
    apt-get update -qq || {
        err "apt-get update failed"
        exit 1
    }
    say "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" || {
        err "apt-get install ${missing[*]} failed"
        exit 1
    }
    mapfile -t still < <(missing_packages)
    if ((${#still[@]} > 0)); then
        err "still missing after installing: ${still[*]}"
        if [[ " ${still[*]} " == *" softhsm2 "* && -n ${SOFTHSM2_MODULE:-} ]]; then
            err "(SOFTHSM2_MODULE=$SOFTHSM2_MODULE does not exist)"
        fi
        exit 1
    fi
fi

# --- Rust toolchain ----------------------------------------------------------------
rust_ok=true
if ! command -v cargo >/dev/null 2>&1; then
    err "cargo not found (install the Rust toolchain with rustup; it is not a Debian package here)"
    exit 1
fi
if ! $demo_only; then
    if ! cargo fmt --version >/dev/null 2>&1; then
        err "rustfmt missing: rustup component add rustfmt"
        rust_ok=false
    fi
    if ! cargo clippy --version >/dev/null 2>&1; then
        err "clippy missing: rustup component add clippy"
        rust_ok=false
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        say "cargo-nextest missing: cargo install cargo-nextest --locked"
        if ! cargo install cargo-nextest --locked; then
            err "cargo install cargo-nextest failed"
            rust_ok=false
        elif ! cargo nextest --version >/dev/null 2>&1; then
            err "cargo-nextest installed but 'cargo nextest' still not found (is ~/.cargo/bin on PATH?)"
            rust_ok=false
        fi
    fi
fi
$rust_ok || exit 1

say "ok: softhsm2, opensc, gcc, pkg-config, python3, sqlite3, openssl$($fips && printf ', go, cmake (FIPS build)')$($demo_only || printf ', postgresql, p11-kit, gnutls-bin, g++, a JDK'), $(cargo --version)$($demo_only || printf ', %s' "$(cargo nextest --version 2>/dev/null | head -n1)")"
