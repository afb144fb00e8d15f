#!/usr/bin/env bash
# scripts/bench-migrate.sh [--rows N] [--kill-after SECS] [--keep]
#
# `hsm-envelope store migrate` on a big SQLite store (issue 14, item 6): how
# long the copy and the check take, and the tool's peak memory, which must
# not grow with the store.
#
#   1. a fresh SoftHSM2 token (softhsm-config/new-token.sh) in a temporary
#      directory, and 3 DEKs made through the module (pkcs11-tool), which
#      the sample opens through the HSM;
#   2. N more rows (default 1 000 000) written straight into the SQLite file
#      by python3: random 457-byte attributes and 80-byte records, as big as
#      the module's, under KEK label "bench" (never opened: the sample only
#      opens records of the configured KEK), every 10th soft-deleted, every
#      other one with a last use, 1 in 10 with a GCM count;
#   3. a throwaway PostgreSQL cluster (initdb + pg_ctl from the Debian
#      `postgresql` package, unix socket, in /dev/shm; as the `postgres`
#      user when run as root);
#   4. `hsm-envelope store migrate --to postgresql://...` (release build),
#      timed, with its peak resident memory. With --kill-after SECS the
#      first run is killed (-9) after SECS seconds and a second one carries
#      on with --resume.
#
# Needs softhsm2, opensc, python3, postgresql (scripts/deps.sh) and cargo.
set -euo pipefail

prog=bench-migrate.sh
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}
rows=1000000 kill_after='' keep=false
while (($#)); do
    case $1 in
    --rows) rows=${2:?}; shift 2 ;;
    --kill-after) kill_after=${2:?}; shift 2 ;;
    --keep) keep=true; shift ;;
    *) die "unknown argument $1 (see the head of this script)" ;;
    esac
done

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo_root"
pg_bin=${HSME_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[[ -x $pg_bin/initdb ]] || die "initdb not found: install the Debian package postgresql (scripts/deps.sh)"
as_pg=()
[[ $(id -u) == 0 ]] && as_pg=(runuser -u postgres --)

echo "$prog: cargo build --release --lib --bin hsm-envelope" >&2
cargo build --release --lib --bin hsm-envelope >&2
tool=$repo_root/target/release/hsm-envelope
module=$repo_root/target/release/libhsm_envelope.so

dir=$(mktemp -d /dev/shm/hsme-bench-migrate-XXXXXX 2>/dev/null || mktemp -d)
pg=$dir/pg
cleanup() {
    [[ -d $pg/data ]] && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg/data" -m immediate -w -s stop || true
    if $keep; then echo "$prog: kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

eval "$(PIN=1234 SO_PIN=5678 bash softhsm-config/new-token.sh "$dir/token" 2>/dev/null)"
export HSM_ENVELOPE_PIN=1234
for i in 1 2 3; do
    pkcs11-tool --module "$module" --login --pin 1234 --keygen --key-type AES:32 \
        --label "real-$i" >/dev/null 2>&1 || die "pkcs11-tool --keygen through the module failed"
done

echo "$prog: writing $rows rows into $dir/token/deks.sqlite" >&2
python3 - "$dir/token/deks.sqlite" "$rows" <<'EOF'
import os, sqlite3, sys
path, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(path)
c.execute("PRAGMA synchronous=OFF")
def rows():
    for i in range(n):
        deleted = i % 10 == 0
        yield (os.urandom(16), b"bench-%d" % i, os.urandom(8), os.urandom(457), os.urandom(80),
               "bench", 1 + i % 2, 1700000000 + i, 1700000000 + i,
               1750000000 + i if i % 2 else None, i % 3,
               1760000000 if deleted else None, 1770000000 if deleted else None,
               os.urandom(16) if i % 10 == 1 else None)
c.execute("BEGIN")
c.executemany("INSERT INTO dek (id, label, ckaid, attrs, record, kek_label, kek_version, created,"
              " updated, last_used, generation, deleted_at, purge_after, gcm_print)"
              " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
c.executemany("INSERT INTO gcm_usage (print, reserved, updated) VALUES (?, ?, 1750000000)",
              ((os.urandom(16), int.from_bytes(os.urandom(4), "big") + 1) for _ in range(n // 10)))
c.execute("INSERT INTO kek_version VALUES ('bench', 1, 'aes256', 'decrypt-only', 1600000000, 1600000000, 1650000000)")
c.execute("INSERT INTO kek_version VALUES ('bench', 2, 'aes256', 'primary', 1650000000, 1650000000, NULL)")
c.execute("INSERT INTO meta (key, value) VALUES ('purge_protection', 1)")
c.commit()
EOF
ls -l "$dir/token/deks.sqlite" >&2

mkdir -p "$pg"
if [[ $(id -u) == 0 ]]; then
    # The postgres user must reach its directory through ours.
    chmod 711 "$dir"
    chown postgres: "$pg"
fi
"${as_pg[@]}" "$pg_bin/initdb" -D "$pg/data" -U postgres --auth=trust --no-sync \
    --encoding=UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg/data" -l "$pg/server.log" -w -s \
    -o "-k $pg -c listen_addresses='' -c shared_buffers=128MB" start
url="postgresql://postgres@$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$pg")/postgres"

# Runs the tool; prints its peak resident memory (KiB) on stderr.
measured() {
    python3 -c '
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print("peak RSS %d KiB" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(rc)' "$@"
}

if [[ -n $kill_after ]]; then
    "$tool" store migrate --to "$url" &
    pid=$!
    sleep "$kill_after"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$prog: killed the copy after ${kill_after} s; carrying on with --resume" >&2
    measured "$tool" store migrate --to "$url" --resume
else
    measured "$tool" store migrate --to "$url"
fi
