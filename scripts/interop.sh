#!/usr/bin/env bash
# scripts/interop.sh [--suite python-pkcs11|pykcs11|java|all] [--target ours|softhsm|both]
#
# Interop harness: runs third-party PKCS#11 test suites against our module
# (target/release/libhsm_envelope.so, "ours") and against SoftHSM2 directly
# ("softhsm"), each run on a fresh token made by softhsm-config/new-token.sh
# in a temporary directory, and prints pass/fail/skip side by side.
#
#   python-pkcs11  the upstream suite of python-pkcs11 (sdist from PyPI)
#   pykcs11        the upstream suite of PyKCS11 (sdist from PyPI)
#   java           tests/java/InteropTest.java through SunPKCS11, once per
#                  JDK found (java on PATH, $JAVA_HOME, /usr/lib/jvm/*), with
#                  the README's SunPKCS11 configuration ("Java (SunPKCS11)")
#
# Defaults: --suite all --target both. Everything it downloads or builds is
# cached under target/interop/ (sdists, a venv, the unpacked suites, compiled
# Java classes), so only the first run needs the network (PyPI). Results of
# each run go to target/interop/results/SUITE/TARGET/ (results.tsv: test id,
# outcome, message; output.log; for ours hsm-envelope.log at log level debug).
#
# By-design differences of our module are skipped on ours only, by test id,
# from scripts/interop-skips.txt; nothing else is skipped.
#
# Exit status: 0 if every test that passes on SoftHSM2 also passes on ours
# (for the suites run against both); 1 if one does not (it failed, or the
# suite skipped it on ours only) or a suite run crashed or timed out; 2 on
# a usage error, a missing tool, or a failed setup step (download, build,
# token).
#
# Environment:
#   INTEROP_NO_BUILD=1   do not run `cargo build --release --lib` first
#   INTEROP_TIMEOUT      seconds per suite run (default 300)
#   SOFTHSM2_MODULE      path of libsofthsm2.so (default: searched)
set -euo pipefail

prog=interop.sh
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 2
}
note() { printf '%s: %s\n' "$prog" "$*" >&2; }
usage() {
    printf 'usage: %s [--suite python-pkcs11|pykcs11|java|all] [--target ours|softhsm|both]\n' "$prog" >&2
    exit 2
}

suite=all
target=both
while (($# > 0)); do
    case $1 in
    --suite)
        (($# >= 2)) || usage
        suite=$2
        shift 2
        ;;
    --suite=*)
        suite=${1#--suite=}
        shift
        ;;
    --target)
        (($# >= 2)) || usage
        target=$2
        shift 2
        ;;
    --target=*)
        target=${1#--target=}
        shift
        ;;
    -h | --help) usage ;;
    *) usage ;;
    esac
done
case $suite in python-pkcs11 | pykcs11 | java | all) ;; *) usage ;; esac
case $target in ours | softhsm | both) ;; *) usage ;; esac

# The upstream suites, pinned.
PYTHON_PKCS11_VERSION=0.10.1
PYKCS11_VERSION=1.5.20

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
work=$root/target/interop
skips_file=$root/scripts/interop-skips.txt
helpers=$root/scripts/interop
timeout_secs=${INTEROP_TIMEOUT:-300}

suites=()
case $suite in
all) suites=(python-pkcs11 pykcs11 java) ;;
*) suites=("$suite") ;;
esac
targets=()
case $target in
both) targets=(softhsm ours) ;;
*) targets=("$target") ;;
esac
wants() { # wants SUITE
    local s
    for s in "${suites[@]}"; do [[ $s == "$1" ]] && return 0; done
    return 1
}
wants_python() { wants python-pkcs11 || wants pykcs11; }

# --- tools ---------------------------------------------------------------------
missing=()
need_cmd() { # need_cmd COMMAND WHAT
    command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)")
}
need_cmd softhsm2-util "Debian package softhsm2"
need_cmd pkcs11-tool "Debian package opensc; softhsm-config/new-token.sh needs it"
need_cmd timeout "Debian package coreutils"
if [[ -n ${SOFTHSM2_MODULE:-} ]]; then
    softhsm_lib=$SOFTHSM2_MODULE
    [[ -f $softhsm_lib ]] || missing+=("SOFTHSM2_MODULE=$softhsm_lib (no such file)")
else
    softhsm_lib=
    for c in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
        if [[ -f $c ]]; then
            softhsm_lib=$c
            break
        fi
    done
    [[ -n $softhsm_lib ]] || missing+=("libsofthsm2.so (Debian package softhsm2)")
fi
if wants_python; then
    need_cmd python3 "Debian package python3"
    if command -v python3 >/dev/null 2>&1 && [[ ! -x $work/venv/bin/python ]] &&
        ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=("python3 venv module (Debian package python3-venv)")
    fi
    need_cmd gcc "Debian package gcc; builds the python-pkcs11 and PyKCS11 extensions"
    need_cmd g++ "Debian package g++; builds the PyKCS11 extension"
fi
for t in "${targets[@]}"; do
    if [[ $t == ours && ${INTEROP_NO_BUILD:-0} != 1 ]]; then
        need_cmd cargo "Rust toolchain, https://rustup.rs; or set INTEROP_NO_BUILD=1 with a built target/release/libhsm_envelope.so"
    fi
done

# JDKs: java on PATH, $JAVA_HOME, /usr/lib/jvm/*; one per distinct binary.
jdk_homes=()
if wants java; then
    declare -A seen_java=()
    candidates=()
    if command -v java >/dev/null 2>&1; then
        candidates+=("$(dirname -- "$(dirname -- "$(readlink -f -- "$(command -v java)")")")")
    fi
    [[ -n ${JAVA_HOME:-} ]] && candidates+=("$JAVA_HOME")
    for d in /usr/lib/jvm/*/; do candidates+=("${d%/}"); done
    for home in "${candidates[@]}"; do
        [[ -x $home/bin/java && -x $home/bin/javac ]] || continue
        real=$(readlink -f -- "$home/bin/java")
        [[ -n ${seen_java[$real]:-} ]] && continue
        seen_java[$real]=1
        jdk_homes+=("$(dirname -- "$(dirname -- "$real")")")
    done
    ((${#jdk_homes[@]} > 0)) ||
        missing+=("a JDK with java and javac (Debian package openjdk-17-jdk-headless)")
fi

if ((${#missing[@]} > 0)); then
    printf '%s: error: missing:\n' "$prog" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
fi

# --- our module ------------------------------------------------------------------
ours_lib=$root/target/release/libhsm_envelope.so
for t in "${targets[@]}"; do
    [[ $t == ours ]] || continue
    if [[ ${INTEROP_NO_BUILD:-0} != 1 ]]; then
        note "cargo build --release --lib"
        (cd "$root" && cargo build --release --lib --quiet) || die "cargo build --release --lib failed"
    fi
    [[ -f $ours_lib ]] || die "$ours_lib not found (run cargo build --release)"
done

mkdir -p "$work"

# --- Python: sdists, venv, unpacked suites -------------------------------------------
venv=$work/venv
py=$venv/bin/python
setup_python() {
    local sdist_dir=$work/sdist
    mkdir -p "$sdist_dir"
    local want=("python-pkcs11==$PYTHON_PKCS11_VERSION" "PyKCS11==$PYKCS11_VERSION")
    local pp_sdist=$sdist_dir/python_pkcs11-$PYTHON_PKCS11_VERSION.tar.gz
    local pk_sdist=$sdist_dir/pykcs11-$PYKCS11_VERSION.tar.gz
    if [[ ! -x $py ]]; then
        note "creating the venv $venv"
        python3 -m venv "$venv" || die "python3 -m venv $venv failed"
    fi
    if [[ ! -f $pp_sdist || ! -f $pk_sdist ]]; then
        note "downloading the sdists of ${want[*]} from PyPI"
        # Source distributions (they hold the tests) of these two only; no
        # dependencies, which the venv gets from requirements.txt.
        "$py" -m pip download --quiet --disable-pip-version-check --no-deps \
            --no-binary python-pkcs11,PyKCS11 --dest "$sdist_dir" "${want[@]}" ||
            die "pip download of ${want[*]} failed (PyPI reachable?)"
    fi
    [[ -f $pp_sdist && -f $pk_sdist ]] || die "sdists not where expected: $pp_sdist, $pk_sdist"

    # The venv is rebuilt when the requirements or the sdists change.
    local stamp
    stamp=$(cat "$helpers/requirements.txt" "$pp_sdist" "$pk_sdist" | sha256sum | cut -d' ' -f1)
    if [[ $(cat "$venv/.interop-stamp" 2>/dev/null) != "$stamp" ]]; then
        if [[ -f $venv/.interop-stamp ]]; then
            # installed from other requirements or sdists: start again
            rm -rf -- "$venv"
            python3 -m venv "$venv" || die "python3 -m venv $venv failed"
        fi
        note "installing into $venv (python-pkcs11 and PyKCS11 are built from source; takes a minute)"
        "$py" -m pip install --quiet --disable-pip-version-check \
            -r "$helpers/requirements.txt" "$pp_sdist" "$pk_sdist" ||
            die "pip install into $venv failed"
        printf '%s\n' "$stamp" >"$venv/.interop-stamp"
    fi

    # Each suite's tests, unpacked once (read-only use; runs are from here).
    local name dir member sdist
    for name in python-pkcs11 pykcs11; do
        if [[ $name == python-pkcs11 ]]; then
            dir=$work/suites/python_pkcs11-$PYTHON_PKCS11_VERSION
            member=python_pkcs11-$PYTHON_PKCS11_VERSION/tests
            sdist=$pp_sdist
        else
            dir=$work/suites/pykcs11-$PYKCS11_VERSION
            member=pykcs11-$PYKCS11_VERSION/test
            sdist=$pk_sdist
        fi
        if [[ ! -d $dir/${member#*/} ]]; then
            mkdir -p "$work/suites"
            tar -xzf "$sdist" -C "$work/suites" "$member" || die "cannot unpack $member from $sdist"
        fi
    done
}

# --- tokens ------------------------------------------------------------------------
tmp_dirs=()
cleanup() {
    local d
    for d in "${tmp_dirs[@]}"; do rm -rf -- "$d"; done
}
trap cleanup EXIT

# make_token RUN_TARGET SO_PIN: a fresh token in a new temporary directory;
# sets SOFTHSM2_CONF and HSM_ENVELOPE_CONF (and tok_dir) in this shell.
make_token() {
    local run_target=$1 so_pin=$2
    tok_dir=$(mktemp -d "${TMPDIR:-/tmp}/hsme-interop.XXXXXX")
    tmp_dirs+=("$tok_dir")
    local exports
    exports=$(PIN=1234 SO_PIN=$so_pin SOFTHSM2_MODULE=$softhsm_lib \
        "$root/softhsm-config/new-token.sh" "$tok_dir" 2>"$tok_dir/new-token.err") || {
        cat "$tok_dir/new-token.err" >&2
        die "softhsm-config/new-token.sh failed"
    }
    eval "$exports"
    if [[ $run_target == ours ]]; then
        # The module's log, with every refused call, for the report.
        sed -i 's/^log_level = .*/log_level = "debug"/' "$HSM_ENVELOPE_CONF"
    fi
}

finish_run() { # finish_run RESULT_DIR RC: keep the module log, note the exit code
    local res=$1 rc=$2
    printf '%s\n' "$rc" >"$res/rc"
    if [[ -f $tok_dir/hsm-envelope.log ]]; then
        cp -- "$tok_dir/hsm-envelope.log" "$res/hsm-envelope.log"
    fi
    rm -rf -- "$tok_dir"
}

# --- the Python suites -------------------------------------------------------------
run_pytest() { # run_pytest SUITE TARGET
    local s=$1 t=$2 res=$work/results/$1/$2 testdir lib so_pin
    rm -rf -- "$res"
    mkdir -p "$res"
    if [[ $s == python-pkcs11 ]]; then
        testdir=$work/suites/python_pkcs11-$PYTHON_PKCS11_VERSION/tests
        so_pin=5678
    else
        testdir=$work/suites/pykcs11-$PYKCS11_VERSION/test
        so_pin=123456 # PyKCS11's tests hard-code user PIN 1234, SO PIN 123456
    fi
    make_token "$t" "$so_pin"
    if [[ $t == softhsm ]]; then
        lib=$softhsm_lib
    elif [[ $s == python-pkcs11 ]]; then
        # python-pkcs11's tests recognise SoftHSM2 by the file name of the
        # module (tests/__init__.py, class Is) and then apply its quirks:
        # Only.softhsm2 tests run, Not.softhsm2 ones are skipped, EC points
        # are DER-wrapped. Our module passes those calls to SoftHSM2, so it is
        # loaded through a symlink with that name: the same tests run on both.
        mkdir -p "$tok_dir/ours"
        ln -s "$ours_lib" "$tok_dir/ours/libsofthsm2.so"
        lib=$tok_dir/ours/libsofthsm2.so
    else
        lib=$ours_lib
    fi
    # PyKCS11's tests gate on CK_INFO.libraryVersion as "the SoftHSM version";
    # on ours the plugin reports the backend's (see interop_pytest.py).
    local backend_version=
    if [[ $s == pykcs11 && $t == ours ]]; then
        backend_version=$("$py" -c 'import sys
from PyKCS11 import PyKCS11Lib
v = PyKCS11Lib().load(sys.argv[1]).getInfo().libraryVersion
print(f"{v[0]}.{v[1]}")' "$softhsm_lib") || die "cannot read the library version of $softhsm_lib"
    fi
    note "$s on $t: $lib"
    local rc=0
    (
        cd "$testdir"
        export PYTHONPATH=$helpers PYTHONDONTWRITEBYTECODE=1
        export INTEROP_SUITE=$s INTEROP_TARGET=$t INTEROP_SKIPS_FILE=$skips_file
        export INTEROP_RESULTS=$res/results.tsv
        export PKCS11_MODULE=$lib PKCS11_TOKEN_LABEL=hsm-envelope
        export PKCS11_TOKEN_PIN=1234 PKCS11_TOKEN_SO_PIN=$so_pin
        export PYKCS11LIB=$lib INTEROP_PYKCS11_LIBRARY_VERSION=$backend_version
        exec timeout --kill-after=10 "$timeout_secs" "$py" -m pytest -p no:cacheprovider \
            -p interop_pytest --rootdir=. -q -rfE --junitxml="$res/junit.xml" .
    ) >"$res/output.log" 2>&1 || rc=$?
    finish_run "$res" "$rc"
}

# --- Java ----------------------------------------------------------------------------
# The README's SunPKCS11 configuration (the fenced block under "### Java
# (SunPKCS11)"): InteropTest makes every provider from it, so the example a
# user copies is the one these checks run.
readme_sunpkcs11_config() {
    awk '/^### Java \(SunPKCS11\)/ { sec = 1; next }
        sec && /^#/ { exit }
        sec && /^```/ { if (inb) exit; inb = 1; next }
        inb { print }' "$root/README.md"
}

run_java() { # run_java JDK_HOME TARGET; suite name java-FEATURE
    local home=$1 t=$2 ver name res classes lib
    ver=$("$home/bin/java" -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = //p')
    [[ -n $ver ]] || ver=unknown
    name=java-$ver
    # a second JDK of the same version gets its directory name as well
    if [[ -n ${java_names[$name]:-} && ${java_names[$name]} != "$home" ]]; then
        name=java-$ver-$(basename -- "$home")
    fi
    java_names[$name]=$home
    res=$work/results/$name/$t
    rm -rf -- "$res"
    mkdir -p "$res"
    classes=$work/java/$(basename -- "$home")
    if [[ ! -f $classes/InteropTest.class || $root/tests/java/InteropTest.java -nt $classes/InteropTest.class ]]; then
        rm -rf -- "$classes"
        mkdir -p "$classes"
        "$home/bin/javac" -d "$classes" "$root/tests/java/InteropTest.java" ||
            die "javac ($home) failed on tests/java/InteropTest.java"
    fi
    make_token "$t" 5678
    if [[ $t == softhsm ]]; then lib=$softhsm_lib; else lib=$ours_lib; fi
    readme_sunpkcs11_config >"$res/sunpkcs11.cfg"
    grep -q '^library *=' "$res/sunpkcs11.cfg" ||
        die "README.md has no SunPKCS11 configuration under '### Java (SunPKCS11)'"
    note "$name on $t: $lib ($home), configuration from README.md"
    # checks listed for "java" in the skip list, on ours only
    local skips=
    if [[ $t == ours ]]; then
        skips=$(sed -n 's/^java[[:space:]]\{1,\}\([^[:space:]#]\{1,\}\)[[:space:]]*#[[:space:]]*\(.*\)$/\1\t\2/p' "$skips_file")
    fi
    local rc=0
    INTEROP_JAVA_SKIPS=$skips timeout --kill-after=10 "$timeout_secs" \
        "$home/bin/java" -cp "$classes" InteropTest "$lib" 1234 "$res/sunpkcs11.cfg" \
        >"$res/output.log" 2>&1 || rc=$?
    # PASS/FAIL/SKIP lines -> results.tsv
    awk '
        /^(PASS|FAIL|SKIP|BYDESIGN) / {
            st = $1; rest = substr($0, length(st) + 2)
            i = index(rest, ": ")
            if (i > 0 && st != "PASS") { id = substr(rest, 1, i - 1); msg = substr(rest, i + 2) }
            else { id = rest; msg = "" }
            out = (st == "PASS") ? "pass" : (st == "FAIL") ? "fail" : (st == "SKIP") ? "skip" : "bydesign"
            gsub(/\t/, " ", msg)
            printf "%s\t%s\t%s\n", id, out, msg
        }' "$res/output.log" >"$res/results.tsv"
    finish_run "$res" "$rc"
}

# --- run ---------------------------------------------------------------------------
if wants_python; then setup_python; fi

declare -A java_names=()
ran_suites=()
for s in "${suites[@]}"; do
    if [[ $s == java ]]; then
        for home in "${jdk_homes[@]}"; do
            for t in "${targets[@]}"; do run_java "$home" "$t"; done
        done
        # the names run_java chose
        for n in "${!java_names[@]}"; do ran_suites+=("$n"); done
    else
        for t in "${targets[@]}"; do run_pytest "$s" "$t"; done
        ran_suites+=("$s")
    fi
done

python3 "$helpers/report.py" --results "$work/results" --skips "$skips_file" \
    --targets "${targets[*]}" "${ran_suites[@]}"
