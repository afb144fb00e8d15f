#!/usr/bin/env bash
# scripts/test.sh — the project's test command (also what .ci/run runs).
#
#   1. scripts/deps.sh --fips    tools and packages (installs what is missing;
#                                --fips: Go and CMake for the FIPS build)
#   2. cargo fmt --check         formatting
#   3. cargo clippy -D warnings  lints, all targets, default and FIPS builds
#   4. cargo test --doc          doc tests
#   5. cargo nextest run         the portable build (no aws-lc-rs): unit
#      --no-default-features     tests and tests/envelope_core.rs
#   6. cargo nextest run         the FIPS build (AWS-LC's FIPS module, issue
#      --features fips           15): every unit and integration test, the
#                                known-answer tests on the FIPS module and
#                                tests/fips_mode.rs among them
#   7. scripts/interop.sh        python-pkcs11, PyKCS11 and SunPKCS11 against
#                                the module and SoftHSM2 direct
#   8. cargo nextest run         unit and integration tests, one process per
#                                test: each test loads the PKCS#11 module (a
#                                process-global singleton) with its own token
#
# Every step runs even if an earlier one failed, so one run shows all
# problems; the exit status is non-zero if any step failed. nextest runs last
# so that its summary is the closing test-runner output.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo_root"

if [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
fi

bash scripts/deps.sh --fips

failed=()
# step NAME COMMAND...: runs COMMAND, records NAME if it fails; says how
# long it took (the CI run has 90 minutes in all).
step() {
    local name=$1 rc=0 started=$SECONDS
    shift
    printf '\n==> [%s] %s\n' "$name" "$*"
    "$@" || rc=$?
    if ((rc == 0)); then
        printf '<== [%s] ok (%d s)\n' "$name" $((SECONDS - started))
    else
        printf '<== [%s] FAILED (exit %d, %d s)\n' "$name" "$rc" $((SECONDS - started))
        failed+=("$name")
    fi
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --all-targets -- -D warnings
step clippy-fips cargo clippy --all-targets --features fips -- -D warnings
step doctest cargo test --doc

# The portable build (pure-Rust aes-gcm, no aws-lc-rs): unit tests and the
# module's behaviour tests. The full suite below runs on the default build.
step portable cargo nextest run --no-default-features --no-fail-fast --lib --test envelope_core

# The FIPS build (every software AES operation on AWS-LC's FIPS module,
# fips_mode available): the whole suite, which also builds the examples
# (the fault-injecting backend). It rebuilds the module in target/debug, as
# the portable step does; the steps below build the default one again.
step fips cargo nextest run --features fips --no-fail-fast

# Third-party suites (python-pkcs11, PyKCS11 from PyPI; SunPKCS11 with every
# JDK on the machine) against the module and SoftHSM2 direct: every test
# that passes on SoftHSM2 must pass on the module (scripts/interop.sh).
step interop bash scripts/interop.sh

step nextest cargo nextest run --no-fail-fast

if ((${#failed[@]} > 0)); then
    printf '\ntest.sh: FAILED steps: %s\n' "${failed[*]}"
    exit 1
fi
printf '\ntest.sh: all steps passed\n'
