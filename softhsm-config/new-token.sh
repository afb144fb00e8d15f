#!/usr/bin/env bash
# softhsm-config/new-token.sh DIR
#
# Makes a fresh SoftHSM2 token for hsm-envelope under DIR:
#   DIR/softhsm2.conf      SoftHSM2 configuration (from softhsm2.conf.template)
#   DIR/tokens/            the token store
#   DIR/hsm-envelope.toml  hsm-envelope configuration pointing at the token
# The token is labelled "hsm-envelope", user PIN ${PIN:-1234}, SO PIN
# ${SO_PIN:-5678}, and holds the KEK: AES-256, label "kek", CKA_ID 01,
# token, private, sensitive, never extractable, encrypt/decrypt/wrap/unwrap;
# and the audit HMAC key: generic secret of 32 bytes, label "audit-hmac",
# CKA_ID 02, token, private, sensitive, never extractable, sign/verify (it
# authenticates the audit log's checkpoints with CKM_SHA256_HMAC).
#
# The configuration names the store DIR/deks.sqlite, the log file
# DIR/hsm-envelope.log and the audit log DIR/audit.log.
#
# On success stdout is exactly two lines, so that
#     eval "$(softhsm-config/new-token.sh DIR)"
# prepares a shell:
#     export SOFTHSM2_CONF=DIR/softhsm2.conf
#     export HSM_ENVELOPE_CONF=DIR/hsm-envelope.toml
# On failure (exit status 1, or 2 for a usage error) stdout is one line that
# makes that eval fail too, visibly, and exports nothing:
#     echo 'new-token.sh failed (exit 1): ...' >&2; false
# Everything else goes to stderr. DIR may be relative or absolute and is
# created if missing; it must not already hold a token.
#
# Environment:
#   PIN, SO_PIN        token PINs (defaults 1234 / 5678; test values only)
#   SOFTHSM2_MODULE    path of libsofthsm2.so (default: searched by
#                      scripts/softhsm2-path.sh)
set -euo pipefail

prog=new-token.sh
# stdout is what `eval "$(new-token.sh DIR)"` runs: on failure, make that
# fail as well (a plain `false`: an `exit` would close the user's shell).
on_exit() {
    local rc=$?
    if ((rc != 0)); then
        printf "echo '%s failed (exit %d): see its messages above; nothing was exported' >&2; false\n" \
            "$prog" "$rc"
    fi
    return "$rc"
}
trap on_exit EXIT
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}
note() {
    printf '%s: %s\n' "$prog" "$*" >&2
}

if [[ $# -ne 1 || -z "$1" ]]; then
    printf 'usage: %s DIR\n' "$0" >&2
    exit 2
fi
dir_arg=$1

self=${BASH_SOURCE[0]}
if [[ $self == */* ]]; then self_dir=${self%/*}; else self_dir=.; fi
script_dir=$(cd -- "${self_dir:-/}" && pwd -P) || die "cannot locate $self"
template=$script_dir/softhsm2.conf.template
finder=$script_dir/../scripts/softhsm2-path.sh

user_pin=${PIN:-1234}
so_pin=${SO_PIN:-5678}
token_label=hsm-envelope
kek_label=kek
kek_id=01
hmac_label=audit-hmac
hmac_id=02

# --- tools -------------------------------------------------------------------
command -v softhsm2-util >/dev/null 2>&1 ||
    die "softhsm2-util not found (install the Debian package 'softhsm2', e.g. scripts/deps.sh)"
command -v pkcs11-tool >/dev/null 2>&1 ||
    die "pkcs11-tool not found (install the Debian package 'opensc', e.g. scripts/deps.sh)"
[[ -r $template ]] || die "template not found: $template"
[[ -r $finder ]] || die "script not found: $finder"

# SoftHSM2's module: $SOFTHSM2_MODULE, else searched by scripts/softhsm2-path.sh
# (which explains on stderr why, if it finds none).
module=$("$BASH" "$finder") || exit 1

# --- DIR ---------------------------------------------------------------------
case $dir_arg in
*[[:cntrl:]]*) die "DIR must not contain control characters" ;;
esac
mkdir -p -- "$dir_arg" || die "cannot create directory $dir_arg"
dir=$(cd -- "$dir_arg" && pwd -P) || die "cannot enter directory $dir_arg"

softhsm_conf=$dir/softhsm2.conf
tokendir=$dir/tokens
conf=$dir/hsm-envelope.toml

if [[ -e $softhsm_conf || -e $conf ]] ||
    { [[ -d $tokendir ]] && [[ -n $(ls -A -- "$tokendir") ]]; }; then
    die "$dir already holds a token (softhsm2.conf, hsm-envelope.toml or tokens/ exists); use a new directory or remove it first"
fi

# --- SoftHSM2 configuration ----------------------------------------------------
mkdir -p -- "$tokendir"
chmod 700 -- "$tokendir"
template_text=$(<"$template")
printf '%s\n' "${template_text//@TOKENDIR@/$tokendir}" >"$softhsm_conf"
export SOFTHSM2_CONF=$softhsm_conf

# Run a tool quietly; show its output (stdout and stderr) on stderr if it fails.
run_quiet() {
    local out
    if ! out=$("$@" 2>&1); then
        printf '%s\n' "$out" >&2
        die "command failed: $1 ${2:-} ..."
    fi
}

# --- token -------------------------------------------------------------------
note "initialising token '$token_label' in $tokendir"
run_quiet softhsm2-util --init-token --free --label "$token_label" \
    --pin "$user_pin" --so-pin "$so_pin"

# --- KEK ---------------------------------------------------------------------
# pkcs11-tool 0.23 --keygen template for a secret key: CKA_TOKEN true;
# CKA_PRIVATE, CKA_SENSITIVE and CKA_EXTRACTABLE are each set true by
# --private / --sensitive / --extractable and explicitly FALSE otherwise
# (so EXTRACTABLE is false here); --usage-decrypt sets ENCRYPT+DECRYPT and
# --usage-wrap sets WRAP+UNWRAP on a secret key.
note "generating AES-256 KEK '$kek_label' (id $kek_id)"
run_quiet pkcs11-tool --module "$module" --token-label "$token_label" \
    --login --pin "$user_pin" \
    --keygen --key-type AES:32 --label "$kek_label" --id "$kek_id" \
    --private --sensitive --usage-decrypt --usage-wrap

# --- audit HMAC key ------------------------------------------------------------
# Generic secret for CKM_SHA256_HMAC over the audit log's checkpoints. In
# pkcs11-tool 0.23 --usage-sign does not reach secret keys (SoftHSM2's default
# CKA_SIGN/CKA_VERIFY, true, apply; newer pkcs11-tool sets them explicitly),
# and -O does not print "sign" for them: both are checked below by signing
# and verifying with the key.
note "generating audit HMAC key '$hmac_label' (generic secret, 32 bytes, id $hmac_id)"
run_quiet pkcs11-tool --module "$module" --token-label "$token_label" \
    --login --pin "$user_pin" \
    --keygen --key-type GENERIC:32 --label "$hmac_label" --id "$hmac_id" \
    --private --sensitive --usage-sign

# Check the result instead of trusting the tool's defaults.
listing=$(pkcs11-tool --module "$module" --token-label "$token_label" \
    --login --pin "$user_pin" --list-objects --type secrkey 2>/dev/null) ||
    die "cannot list objects on the new token"
# key_info LABEL: the header, "Usage:" and "Access:" lines of each secret key
# labelled LABEL in $listing (one "Type: ..." line per such key).
key_info() {
    printf '%s\n' "$listing" | awk -v want="$1" '
    /^[^ \t]/ { header = $0; inkey = ($0 ~ /^Secret Key Object/); label = ""; next }
    inkey && /^[ \t]+label:/ {
        sub(/^[ \t]+label:[ \t]*/, ""); label = $0
        if (label == want) print "Type: " header
        next
    }
    inkey && label == want && /^[ \t]+(Usage|Access):/ { print }
'
}
kek_info=$(key_info "$kek_label")
if [[ $(printf '%s\n' "$kek_info" | grep -c '^Type: ') -ne 1 ]]; then
    printf '%s\n' "$listing" >&2
    die "expected exactly one secret key labelled '$kek_label' on the token (listing above)"
fi
grep -qx 'Type: Secret Key Object; AES length 32' <<<"$kek_info" ||
    die "KEK is not an AES-256 key: $(printf '%s\n' "$kek_info" | grep '^Type: ')"
access=$(printf '%s\n' "$kek_info" | sed -n 's/^[[:space:]]*Access:[[:space:]]*//p')
usage=$(printf '%s\n' "$kek_info" | sed -n 's/^[[:space:]]*Usage:[[:space:]]*//p')
has_flag() { # has_flag "a, b, c" "b"
    [[ ", $1, " == *", $2, "* ]]
}
for flag in "sensitive" "always sensitive" "never extractable"; do
    has_flag "$access" "$flag" || die "KEK lacks '$flag' (Access: $access)"
done
if has_flag "$access" "extractable"; then
    die "KEK is extractable (Access: $access)"
fi
for flag in encrypt decrypt wrap unwrap; do
    has_flag "$usage" "$flag" || die "KEK lacks usage '$flag' (Usage: $usage)"
done
# CKA_PRIVATE: the KEK must not be visible without login.
public_listing=$(pkcs11-tool --module "$module" --token-label "$token_label" \
    --list-objects 2>/dev/null) || die "cannot list public objects on the new token"
if grep -Eq "^[[:space:]]+label:[[:space:]]+$kek_label\$" <<<"$public_listing"; then
    die "KEK is visible without login (CKA_PRIVATE is not set)"
fi

# The audit HMAC key: one generic secret of 32 bytes, sensitive, never
# extractable, private, and it signs and verifies with CKM_SHA256_HMAC.
hmac_info=$(key_info "$hmac_label")
if [[ $(printf '%s\n' "$hmac_info" | grep -c '^Type: ') -ne 1 ]]; then
    printf '%s\n' "$listing" >&2
    die "expected exactly one secret key labelled '$hmac_label' on the token (listing above)"
fi
grep -qx 'Type: Secret Key Object; Generic secret length 32' <<<"$hmac_info" ||
    die "audit HMAC key is not a 32-byte generic secret: $(printf '%s\n' "$hmac_info" | grep '^Type: ')"
access=$(printf '%s\n' "$hmac_info" | sed -n 's/^[[:space:]]*Access:[[:space:]]*//p')
usage=$(printf '%s\n' "$hmac_info" | sed -n 's/^[[:space:]]*Usage:[[:space:]]*//p')
for flag in "sensitive" "always sensitive" "never extractable"; do
    has_flag "$access" "$flag" || die "audit HMAC key lacks '$flag' (Access: $access)"
done
if has_flag "$access" "extractable"; then
    die "audit HMAC key is extractable (Access: $access)"
fi
has_flag "$usage" verify || die "audit HMAC key lacks usage 'verify' (Usage: $usage)"
if grep -Eq "^[[:space:]]+label:[[:space:]]+$hmac_label\$" <<<"$public_listing"; then
    die "audit HMAC key is visible without login (CKA_PRIVATE is not set)"
fi
# CKA_SIGN and CKA_VERIFY, for real: sign a test message and verify the MAC.
check_dir=$(mktemp -d) || die "cannot create a temporary directory"
printf 'hsm-envelope audit HMAC key check\n' >"$check_dir/msg"
hmac_ok=0
if pkcs11-tool --module "$module" --token-label "$token_label" \
    --login --pin "$user_pin" --sign --mechanism SHA256-HMAC --id "$hmac_id" \
    --input-file "$check_dir/msg" --output-file "$check_dir/mac" >/dev/null 2>&1 &&
    [[ $(wc -c <"$check_dir/mac") -eq 32 ]] &&
    verdict=$(pkcs11-tool --module "$module" --token-label "$token_label" \
        --login --pin "$user_pin" --verify --mechanism SHA256-HMAC --id "$hmac_id" \
        --input-file "$check_dir/msg" --signature-file "$check_dir/mac" 2>/dev/null) &&
    grep -qx 'Signature is valid' <<<"$verdict"; then
    hmac_ok=1
fi
rm -rf -- "$check_dir"
[[ $hmac_ok -eq 1 ]] || die "audit HMAC key cannot sign and verify with CKM_SHA256_HMAC"

# --- hsm-envelope configuration ------------------------------------------------
toml_str() { # TOML basic string
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}
{
    printf '# hsm-envelope configuration (made by softhsm-config/new-token.sh)\n'
    printf 'backend_module = %s\n' "$(toml_str "$module")"
    printf 'token_label = %s\n' "$(toml_str "$token_label")"
    printf 'kek_label = %s\n' "$(toml_str "$kek_label")"
    printf 'store_path = %s\n' "$(toml_str "$dir/deks.sqlite")"
    printf 'log_file = %s\n' "$(toml_str "$dir/hsm-envelope.log")"
    printf 'log_level = "info"\n'
    printf 'audit_log = %s\n' "$(toml_str "$dir/audit.log")"
} >"$conf"

note "token ready in $dir (user PIN and SO PIN as given by PIN/SO_PIN, default 1234/5678)"
printf 'export SOFTHSM2_CONF=%q\n' "$softhsm_conf"
printf 'export HSM_ENVELOPE_CONF=%q\n' "$conf"
