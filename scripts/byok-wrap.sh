#!/usr/bin/env bash
# Wrap customer key material for `hsm-envelope kek import` with openssl only
# (run it where the key material lives, not necessarily near the HSM):
#
#   RSA-OAEP(PUBLIC.pem, fresh AES-256 key) || AES-KWP(that key, material)
#
# the transfer format of CKM_RSA_AES_KEY_WRAP, Azure, AWS KMS and Vault.
#
# Usage: byok-wrap.sh [--oaep-hash sha1|sha256] [--rsa] PUBLIC.pem MATERIAL OUT
#   PUBLIC.pem   the import key's public half (`hsm-envelope kek import-key`)
#   MATERIAL     a 32-byte raw AES-256 key; with --rsa, an RSA private key
#                in any format `openssl pkey` reads (sent as PKCS#8)
#   OUT          the transfer blob to give to `kek import --in`
#   --oaep-hash  what `kek import-key` said the HSM takes (default sha1)
#
# Run it on a host only you use: `openssl enc` takes the ephemeral AES key
# on its command line, where other local users can read it while it runs
# (with the blob, that would give them the material). Work files go to
# /dev/shm (memory) where there is one, and are shredded.
set -euo pipefail

hash=sha1
rsa=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --oaep-hash) hash="${2:-}"; shift 2 ;;
        --rsa) rsa=1; shift ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        -*) echo "byok-wrap.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [[ $# -ne 3 ]]; then
    echo "usage: byok-wrap.sh [--oaep-hash sha1|sha256] [--rsa] PUBLIC.pem MATERIAL OUT" >&2
    exit 2
fi
case "$hash" in sha1|sha256) ;; *) echo "byok-wrap.sh: --oaep-hash is sha1 or sha256" >&2; exit 2 ;; esac
command -v openssl >/dev/null || { echo "byok-wrap.sh: openssl is missing (apt-get install openssl)" >&2; exit 2; }
pub="$1" material="$2" out="$3"

umask 077
if [[ -d /dev/shm && -w /dev/shm ]]; then
    work="$(mktemp -d -p /dev/shm)"
else
    work="$(mktemp -d)"
fi
trap 'for f in "$work"/*; do [[ -f "$f" ]] && shred -u "$f" 2>/dev/null || rm -f "$f"; done; rmdir "$work"' EXIT

if [[ $rsa -eq 1 ]]; then
    openssl pkcs8 -topk8 -nocrypt -outform DER -in "$material" -out "$work/material"
else
    size="$(stat -c %s "$material")"
    if [[ "$size" -ne 32 ]]; then
        echo "byok-wrap.sh: $material is $size bytes; an AES-256 key is 32 (use --rsa for an RSA key)" >&2
        exit 2
    fi
    cp "$material" "$work/material"
fi

openssl rand -out "$work/ephemeral" 32
openssl pkeyutl -encrypt -pubin -inkey "$pub" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt "rsa_oaep_md:$hash" -pkeyopt "rsa_mgf1_md:$hash" \
    -in "$work/ephemeral" -out "$work/part1"
openssl enc -id-aes256-wrap-pad -K "$(od -An -vtx1 "$work/ephemeral" | tr -d ' \n')" -iv A65959A6 \
    -in "$work/material" -out "$work/part2"
cat "$work/part1" "$work/part2" > "$out"
echo "byok-wrap.sh: wrote $out ($(stat -c %s "$out") bytes)" >&2
