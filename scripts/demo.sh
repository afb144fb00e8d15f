#!/usr/bin/env bash
# scripts/demo.sh — hsm-envelope on a fresh local SoftHSM2 token, with pkcs11-tool.
#
#   1. scripts/deps.sh --demo, cargo build --release
#   2. a fresh token + KEK in a temporary directory (softhsm-config/new-token.sh)
#   3. pkcs11-tool --module target/release/libhsm_envelope.so:
#      list slots and the AES mechanisms, generate a DEK, import a DEK of
#      known value, list objects, AES-CBC-PAD encrypt + decrypt + cmp, and
#      compare the module's ciphertext with OpenSSL's for the known key
#   4. the wrapped-DEK store (SQLite): each DEK's row and its wrapped record
#      decoded field by field, and a search showing the known key's
#      plaintext is in neither the store nor the log
#   5. the admin tool: a customer's AES-256 KEK imported (BYOK, wrapped with
#      scripts/byok-wrap.sh), then an RSA-3072 KEK and `rewrap` under it; the
#      file encrypted earlier still decrypts
# Every pkcs11-tool run is a new process: each one finds the DEKs in the
# store and has the HSM unwrap them again.
#
# Environment:
#   KEEP=1         keep the temporary directory (token, store, log, files)
#   DEMO_MODULE=…  run the pkcs11-tool steps against another PKCS#11 module
#                  (e.g. SoftHSM2's: `bash scripts/softhsm2-path.sh` prints
#                  it) without building; only for checking this script
#                  itself. The store steps are then skipped if the module
#                  wrote no store.
# The PINs are the fixed test PINs of new-token.sh (user 1234, SO 5678).
set -euo pipefail

prog=demo.sh
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PIN=1234
DEK_LABEL=demo-dek
IMPORTED_LABEL=demo-imported
# pkcs11-tool 0.23 ignores --label when choosing the key for --encrypt and
# --decrypt (it takes the first secret key it finds, often the KEK), so every
# key here gets a CKA_ID and is chosen with --id.
DEK_ID=10
IMPORTED_ID=11

say() { printf '\n### %s\n' "$*"; }
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}
# show CMD...: prints the command, then runs it.
show() {
    printf '$'
    printf ' %q' "$@"
    printf '\n'
    "$@"
}
hex() { od -An -v -tx1 "$@" | tr -d ' \n'; }

p11() {
    show pkcs11-tool --module "$MODULE" "$@"
}

# show_aes_mechanisms: the AES lines of `pkcs11-tool -M` (the full list is
# long: the module also passes the HSM's own mechanisms through); fails if a
# mechanism the module runs in software is missing.
show_aes_mechanisms() {
    local mechs m
    printf '$ pkcs11-tool --module %q -M | grep AES\n' "$MODULE"
    mechs=$(pkcs11-tool --module "$MODULE" -M)
    printf '%s\n' "$mechs" | grep -E '^[[:space:]]+AES' || true
    printf '(%d mechanisms in all; the others are the HSM'"'"'s, passed through)\n' \
        "$(printf '%s\n' "$mechs" | grep -c '^[[:space:]]')"
    for m in AES-GCM AES-CBC-PAD AES-CTR AES-KEY-GEN; do
        grep -Eq "^[[:space:]]+$m," <<<"$mechs" || die "mechanism $m not listed"
    done
}

# show_records STORE: each DEK row with its wrapped record decoded (format
# HEV1, src/envelope/record.rs). Returns non-zero if the store does not have
# the expected `dek` table, so that the caller can fall back to show_store.
show_records() {
    local store=$1
    printf '$ sqlite3 -readonly %q "SELECT ... FROM dek"  (decoded below)\n' "$store"
    python3 - "$store" <<'EOF'
import sqlite3, struct, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
try:
    rows = db.execute("SELECT id, label, ckaid, length(attrs), record, kek_label, kek_version"
                      " FROM dek ORDER BY created, id").fetchall()
except sqlite3.Error as e:
    print(f"(cannot read the dek table: {e})")
    sys.exit(1)
text = lambda b: bytes(b or b"").decode("utf-8", "replace")
for dek_id, label, ckaid, attrs_len, rec, kek_label, kek_version in rows:
    rec = bytes(rec)
    print(f"\nDEK '{text(label)}'  (CKA_ID {bytes(ckaid or b'').hex()}, store id {bytes(dek_id).hex()})")
    print(f"  kek_label, kek_version  {kek_label}, {kek_version}")
    print(f"  attrs                   {attrs_len} bytes of PKCS#11 attributes (bound into the record)")
    print(f"  record                  {len(rec)} bytes: X'{rec.hex()}'")
    try:
        if rec[:4] != b"HEV1":
            raise ValueError("no HEV1 magic")
        version, alg, n = rec[4], rec[5], struct.unpack(">H", rec[6:8])[0]
        p = 8 + n
        kek = rec[8:p].decode()
        (kver,) = struct.unpack(">I", rec[p:p + 4]); p += 4
        iv_len = rec[p]; iv = rec[p + 1:p + 1 + iv_len]; p += 1 + iv_len
        (ct_len,) = struct.unpack(">I", rec[p:p + 4]); ct = rec[p + 4:p + 4 + ct_len]
        alg_name = {1: "AES-256-GCM with the KEK, on the HSM"}.get(alg, f"algorithm {alg}")
        print(f"    magic, format         HEV1, {version}")
        print(f"    wrapping              {alg_name}")
        print(f"    KEK                   '{kek}' version {kver}")
        print(f"    IV                    {iv.hex()} ({iv_len} bytes)")
        print(f"    ciphertext + tag      {ct.hex()}")
        print(f"                          ({ct_len} bytes = {ct_len - 16}-byte key + 16-byte GCM tag)")
    except (ValueError, IndexError, struct.error, UnicodeDecodeError) as e:
        print(f"    (not decoded: {e})")
if not rows:
    print("(the dek table is empty)")
    sys.exit(1)
EOF
}

# show_store STORE: schema, then the rows naming $DEK_LABEL (blobs as X'hex').
show_store() {
    local store=$1 t rows matching label_hex any=false
    local -a tables
    show sqlite3 -readonly "$store" .schema
    mapfile -t tables < <(sqlite3 -readonly "$store" \
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    label_hex=$(printf '%s' "$DEK_LABEL" | hex)
    for t in "${tables[@]}"; do
        rows=$(sqlite3 -readonly "$store" .headers\ on .mode\ quote \
            "SELECT * FROM \"${t//\"/\"\"}\"")
        matching=$(printf '%s\n' "$rows" | tail -n +2 |
            grep -i -e "'$DEK_LABEL'" -e "$label_hex" || true)
        if [[ -n $matching ]]; then
            any=true
            printf '\ntable %s, row(s) naming %s (text quoted, blobs as X'"'"'hex'"'"'):\n' "$t" "$DEK_LABEL"
            printf '%s\n' "$rows" | head -n 1
            printf '%s\n' "$matching"
        fi
    done
    if ! $any; then
        printf '\nno row names %s as text or inside a blob; all tables (first 20 rows each):\n' "$DEK_LABEL"
        for t in "${tables[@]}"; do
            printf '\ntable %s:\n' "$t"
            sqlite3 -readonly "$store" .headers\ on .mode\ quote \
                "SELECT * FROM \"${t//\"/\"\"}\" LIMIT 20"
        done
    fi
}

# check_no_plaintext KEYFILE FILE...: fails if any FILE holds the key's bytes,
# raw or as hex or base64.
check_no_plaintext() {
    local key=$1 keyhex f n rc=0
    shift
    keyhex=$(hex "$key")
    for f in "$@"; do
        n=$(grep -a -i -c -e "$keyhex" "$f" || true)
        printf '$ grep -a -i -c <hex of the known key> %q  ->  %s\n' "$f" "$n"
        [[ $n == 0 ]] || rc=1
    done
    python3 - "$key" "$@" <<'EOF' || rc=1
import base64, sys
key = open(sys.argv[1], "rb").read()
forms = {"raw bytes": key, "hex": key.hex().encode(), "HEX": key.hex().upper().encode(),
         "base64": base64.b64encode(key)}
bad = False
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    found = [name for name, form in forms.items() if form in data]
    if found:
        print(f"{path}: CONTAINS the plaintext key ({', '.join(found)})")
        bad = True
    else:
        print(f"{path}: {len(data)} bytes, no plaintext key (raw, hex or base64)")
sys.exit(1 if bad else 0)
EOF
    return $rc
}

main() {
    cd "$repo_root"
    if [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin ]]; then
        PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    fi

    say "1. dependencies and build"
    bash scripts/deps.sh --demo
    if [[ -n ${DEMO_MODULE:-} ]]; then
        MODULE=$DEMO_MODULE
        printf 'DEMO_MODULE set: using %s, not building\n' "$MODULE"
    else
        show cargo build --release
        MODULE=$repo_root/target/release/libhsm_envelope.so
    fi
    [[ -f $MODULE ]] || die "module not found: $MODULE"

    work=$(mktemp -d "${TMPDIR:-/tmp}/hsm-envelope-demo.XXXXXX")
    if [[ ${KEEP:-0} == 1 ]]; then
        trap 'printf "\n(kept %s)\n" "$work"' EXIT
    else
        trap 'rm -rf -- "$work"' EXIT
    fi

    say "2. a fresh SoftHSM2 token with the KEK"
    # shellcheck disable=SC2016 # the command is printed, not run
    printf '$ eval "$(bash softhsm-config/new-token.sh %q)"\n' "$work/token"
    exports=$(bash softhsm-config/new-token.sh "$work/token")
    printf '%s\n' "$exports"
    eval "$exports"
    [[ -f ${SOFTHSM2_CONF:-} && -f ${HSM_ENVELOPE_CONF:-} ]] || die "new-token.sh did not make the token"
    show cat "$HSM_ENVELOPE_CONF"
    store=$(sed -n 's/^store_path = "\(.*\)"$/\1/p' "$HSM_ENVELOPE_CONF")
    log_file=$(sed -n 's/^log_file = "\(.*\)"$/\1/p' "$HSM_ENVELOPE_CONF")

    say "3. the module: its slot, and the AES mechanisms"
    p11 -L
    show_aes_mechanisms

    say "4. generate a DEK (AES-256) through the module"
    echo "(pkcs11-tool's warning 'C_GetAttributeValue(VALUE) failed: CKR_ATTRIBUTE_SENSITIVE'"
    echo " is expected here and below: a sensitive key's value cannot be read)"
    p11 --login --pin "$PIN" --keygen --key-type AES:32 --label "$DEK_LABEL" --id "$DEK_ID" \
        --sensitive

    say "5. import a DEK of known value (so we can look for it in the store later)"
    head -c 32 /dev/urandom >"$work/known-key.bin"
    p11 --login --pin "$PIN" --write-object "$work/known-key.bin" --type secrkey \
        --key-type AES:32 --label "$IMPORTED_LABEL" --id "$IMPORTED_ID" --sensitive

    say "6. objects on the token (the KEK lives on the HSM, the DEKs in the store)"
    p11 --login --pin "$PIN" --list-objects

    say "7. AES-CBC-PAD encrypt and decrypt a file with $DEK_LABEL (id $DEK_ID)"
    head -c 1048576 /dev/urandom >"$work/plain.bin"
    iv=$(head -c 16 /dev/urandom | hex)
    p11 --login --pin "$PIN" --encrypt -m AES-CBC-PAD --iv "$iv" --id "$DEK_ID" \
        -i "$work/plain.bin" -o "$work/cipher.bin"
    p11 --login --pin "$PIN" --decrypt -m AES-CBC-PAD --iv "$iv" --id "$DEK_ID" \
        -i "$work/cipher.bin" -o "$work/decrypted.bin"
    show ls -l "$work/plain.bin" "$work/cipher.bin" "$work/decrypted.bin"
    show cmp "$work/plain.bin" "$work/decrypted.bin"
    echo "round trip OK: decrypted file is identical"
    if cmp -s "$work/plain.bin" "$work/cipher.bin"; then
        die "ciphertext equals plaintext"
    fi

    say "8. the module's AES-CBC-PAD matches OpenSSL for the known key (id $IMPORTED_ID)"
    p11 --login --pin "$PIN" --encrypt -m AES-CBC-PAD --iv "$iv" --id "$IMPORTED_ID" \
        -i "$work/plain.bin" -o "$work/cipher-known.bin"
    printf '$ openssl enc -aes-256-cbc -K <known key> -iv %s -in plain.bin -out cipher-openssl.bin\n' "$iv"
    openssl enc -aes-256-cbc -K "$(hex "$work/known-key.bin")" -iv "$iv" \
        -in "$work/plain.bin" -out "$work/cipher-openssl.bin"
    show cmp "$work/cipher-known.bin" "$work/cipher-openssl.bin"
    if cmp -s "$work/cipher.bin" "$work/cipher-known.bin"; then
        die "two different DEKs gave the same ciphertext: pkcs11-tool used the wrong key"
    fi
    echo "identical ciphertext: the module's AES-CBC-PAD is standard"

    say "9. the wrapped-DEK store: one row per DEK, its value only as a wrapped record"
    if [[ -z $store || ! -f $store ]]; then
        if [[ -n ${DEMO_MODULE:-} ]]; then
            printf 'no store at %s (DEMO_MODULE does not write one): skipping steps 9-10\n' "${store:-?}"
            say "demo finished (store steps skipped)"
            return 0
        fi
        die "no wrapped-DEK store at ${store:-(store_path missing in $HSM_ENVELOPE_CONF)}"
    fi
    show ls -l "$store"*
    show sqlite3 -readonly "$store" '.schema dek'
    if ! show_records "$store"; then
        echo "(the store does not look as expected; showing it as it is)"
        show_store "$store"
    fi

    say "10. no plaintext key in the store or the log"
    local -a files=("$store")
    local f
    for f in "$store-wal" "$store-journal" "$log_file"; do
        [[ -n $f && -f $f ]] && files+=("$f")
    done
    check_no_plaintext "$work/known-key.bin" "${files[@]}" ||
        die "a plaintext key was found (see above)"
    echo "the known key is stored only wrapped (the KEK never leaves the HSM)"
    if [[ -n $log_file && -f $log_file ]]; then
        printf '\nthe module'"'"'s log (no key material in it):\n'
        show grep -F created "$log_file" || true
    fi

    say "11. bring your own KEK: customer key material imported as KEK v2"
    local tool=$repo_root/target/release/hsm-envelope
    export HSM_ENVELOPE_PIN=$PIN
    show "$tool" kek import-key --out "$work/import.pem"
    head -c 32 /dev/urandom >"$work/customer-kek.bin"
    show bash scripts/byok-wrap.sh --oaep-hash sha1 "$work/import.pem" "$work/customer-kek.bin" \
        "$work/customer-kek.blob"
    show "$tool" kek import --type aes256 --in "$work/customer-kek.blob" --primary
    p11 --login --pin "$PIN" --keygen --key-type AES:32 --label demo-byok --id 12 --sensitive
    show "$tool" dek list

    say "12. an RSA-3072 KEK, and every record re-wrapped under it (data untouched)"
    show "$tool" kek create --type rsa3072 --primary
    show "$tool" rewrap
    show "$tool" kek list
    p11 --login --pin "$PIN" --decrypt -m AES-CBC-PAD --iv "$iv" --id "$DEK_ID" \
        -i "$work/cipher.bin" -o "$work/decrypted-after-rewrap.bin"
    show cmp "$work/plain.bin" "$work/decrypted-after-rewrap.bin"
    echo "the file encrypted in step 7 still decrypts: only the DEK records were re-wrapped"
    unset HSM_ENVELOPE_PIN

    say "demo finished"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
