//! The PostgreSQL engine: one database shared by the processes of many
//! hosts, selected with `store_url` (the `postgres` crate's synchronous
//! client; a connection string in URL form, `postgresql://user@host:port/db`
//! or `postgresql://user@%2Frun%2Fpostgresql/db` for a unix socket, or in
//! `host=… user=… dbname=…` form).
//!
//! The same rows as the SQLite engine, in the same shape, and the same
//! guarantees:
//!
//! - Every read-modify-write is one transaction (`READ COMMITTED`) that
//!   locks what it reads (`FOR UPDATE`), so a concurrent writer waits for
//!   it and then sees its result; generation checks are re-evaluated on the
//!   locked row.
//! - Changes to KEK versions take an advisory transaction lock, and a
//!   re-wrap batch its shared form, so a rotation and a batch never
//!   interleave (SQLite gets the same from `BEGIN IMMEDIATE`).
//! - The schema version is in `meta` (`schema_version`); the migration runs
//!   under an advisory lock, so several processes may open a new database at
//!   once. A database written by a newer build is refused.
//! - A dropped connection (a restarted server) is replaced on the next call;
//!   the call that met the broken connection fails with the store error.
//!
//! Unlike SQLite, PostgreSQL does not overwrite a purged row's bytes: the
//! old tuple stays in the table's pages until `VACUUM` reuses them, and in
//! the server's WAL and backups. Records are wrapped under the KEK, so
//! such copies are useless without the HSM.
//!
//! TLS (see `sslmode` and `tls`): to a TCP host, connections use TLS and
//! verify the server's certificate and name unless `sslmode=disable` says
//! otherwise; over a unix socket, none. `prefer` is refused.
//!
//! Not yet: reading `~/.pgpass` or `PG*` variables (the `postgres` crate
//! does neither).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ::postgres::config::{Host, SslMode};
use ::postgres::error::SqlState;
use ::postgres::{Client, Config, Row, Statement};
use serde::Deserialize;

use self::connect::{ConnectFailed, Connector};
use self::sslmode::Tls;
use self::tls::TlsFiles;
use super::changes::Listener;
use super::{
    gcm, Changes, DekListing, DekQuery, DekRow, DeletedRow, KekState, KekVersionRow, PurgeRefusal,
    RecordUpdate, StoreEngine, StoreError,
};
use crate::clock::unix_secs as now_secs;
use crate::runtime::lock::unpoisoned;

mod connect;
mod copy;
mod sslmode;
pub mod tls;

/// The engine's name.
pub const ENGINE: &str = "postgresql";

/// Schema version written to `meta` under `schema_version`.
pub const SCHEMA_VERSION: i64 = 5;

/// How long a connection attempt waits when the URL does not say
/// (`connect_timeout`): a server that does not answer must not hang
/// `C_Initialize` or the first call for long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Advisory lock keys: ours are (`LOCK_CLASS`, n), unlikely to meet an
/// application's own advisory locks in a shared database.
const LOCK_CLASS: i32 = 0x4853_4d45; // "HSME"
const LOCK_SCHEMA: i32 = 1;
const LOCK_KEK: i32 = 2;
/// Taken (exclusively) by every transaction that changes DEK rows, after
/// `LOCK_KEK` when both are taken: change positions are then handed out in
/// commit order (see `store::changes`).
const LOCK_CHANGES: i32 = 3;

/// The channel change notifications go to.
const CHANNEL: &str = "hsme_dek_change";
/// How often the listener looks at its stop flag while nothing arrives.
const LISTEN_TICK: Duration = Duration::from_millis(100);
/// How long the listener waits before connecting again after a failure.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Version 1: everything the SQLite engine's version 3 has. Positions for
/// re-wrap batches are an identity column (`pos`) where SQLite has rowids.
const SCHEMA_V1: &str = "
CREATE TABLE dek (
    id          bytea PRIMARY KEY CHECK (length(id) = 16),
    label       bytea,
    ckaid       bytea,
    attrs       bytea NOT NULL,
    record      bytea NOT NULL,
    kek_label   text NOT NULL,
    kek_version bigint NOT NULL CHECK (kek_version >= 0),
    created     bigint NOT NULL,
    updated     bigint NOT NULL,
    last_used   bigint,
    generation  bigint NOT NULL,
    deleted_at  bigint,
    purge_after bigint,
    pos         bigint GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX dek_kek ON dek (kek_label, kek_version);
-- Partial: only the deleted rows, so a planner without statistics (fresh
-- rows, before autovacuum's ANALYZE) never walks it for live ones.
CREATE INDEX dek_deleted ON dek (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE TABLE kek_version (
    kek_label     text NOT NULL,
    version       bigint NOT NULL CHECK (version >= 1),
    kind          text NOT NULL,
    state         text NOT NULL CHECK (state IN ('primary', 'decrypt-only', 'destroyed')),
    created       bigint NOT NULL,
    primary_since bigint,
    retired       bigint,
    PRIMARY KEY (kek_label, version)
);
CREATE UNIQUE INDEX one_primary ON kek_version (kek_label) WHERE state = 'primary';
CREATE TABLE lease (
    name    text PRIMARY KEY,
    holder  text NOT NULL,
    expires bigint NOT NULL
);
";

/// Version 2: indexes for `find` by CKA_LABEL and CKA_ID.
const SCHEMA_V2: &str = "
CREATE INDEX dek_label ON dek (label);
CREATE INDEX dek_ckaid ON dek (ckaid);
";

/// Version 3: GCM invocation counts per key material (issue 12).
const SCHEMA_V3: &str = "
CREATE TABLE gcm_usage (
    print    bytea PRIMARY KEY CHECK (length(print) = 16),
    reserved bigint NOT NULL CHECK (reserved >= 0),
    updated  bigint NOT NULL
);
ALTER TABLE dek ADD COLUMN gcm_print bytea;
";

/// Version 4: the change feed (issue 14; see `store::changes`), written by
/// a trigger so every write path does; uses and GCM prints are not
/// changes. Each change also notifies `hsme_dek_change` at commit
/// (identical notifications of one transaction are folded into one).
const SCHEMA_V4: &str = "
CREATE SEQUENCE dek_change_seq;
CREATE TABLE dek_change (
    seq bigint PRIMARY KEY,
    id  bytea NOT NULL
);
CREATE FUNCTION hsme_dek_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO dek_change (seq, id) VALUES (nextval('dek_change_seq'), OLD.id);
    ELSE
        INSERT INTO dek_change (seq, id) VALUES (nextval('dek_change_seq'), NEW.id);
    END IF;
    PERFORM pg_notify('hsme_dek_change', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER dek_change
AFTER INSERT OR DELETE
   OR UPDATE OF label, ckaid, attrs, record, kek_label, kek_version, generation, deleted_at
ON dek FOR EACH ROW EXECUTE FUNCTION hsme_dek_change();
";

/// Version 5: a new DEK is not announced (a new row cannot change a DEK
/// any process holds, and searches read the store): only changes,
/// destroys and purges wake the other processes. Still in the feed.
const SCHEMA_V5: &str = "
CREATE OR REPLACE FUNCTION hsme_dek_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO dek_change (seq, id) VALUES (nextval('dek_change_seq'), OLD.id);
    ELSE
        INSERT INTO dek_change (seq, id) VALUES (nextval('dek_change_seq'), NEW.id);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('hsme_dek_change', '');
    END IF;
    RETURN NULL;
END
$$;
";

/// The migration steps, in order: step `i` takes version `i` to `i + 1`.
/// A later version appends a step; a step never changes once released.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5];

const CREATE_META: &str = "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bigint)";
const PROTECTION_KEY: &str = "purge_protection";

macro_rules! row_columns {
    () => {
        "id, label, ckaid, attrs, record, kek_label, kek_version, created, updated, generation"
    };
}
macro_rules! version_columns {
    () => {
        "kek_label, version, kind, state, created, primary_since, retired"
    };
}

const INSERT: &str = "INSERT INTO dek (id, label, ckaid, attrs, record, kek_label, kek_version, created, updated, last_used, generation)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10)";
const GET: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM dek WHERE id = $1 AND deleted_at IS NULL"
);
const LIST: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM dek WHERE deleted_at IS NULL ORDER BY created, id"
);
const FIND_BY_ID: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM dek WHERE id = $1 AND deleted_at IS NULL"
);
const FIND_BY_LABEL: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM dek WHERE label = $1 AND deleted_at IS NULL ORDER BY id"
);
const FIND_BY_CKAID: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM dek WHERE ckaid = $1 AND deleted_at IS NULL ORDER BY id"
);
const FIND_BY_LABEL_CKAID: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM dek WHERE label = $1 AND ckaid = $2 AND deleted_at IS NULL ORDER BY id"
);
const LIST_IDS: &str = "SELECT id, generation FROM dek WHERE deleted_at IS NULL ORDER BY id";
const GENERATION_FOR_UPDATE: &str = "SELECT generation FROM dek WHERE id = $1 FOR UPDATE";
const UPDATE: &str =
    "UPDATE dek SET label = $2, ckaid = $3, attrs = $4, record = $5, kek_label = $6,
                        kek_version = $7, updated = $8, generation = $9
     WHERE id = $1";
const DELETE: &str = "DELETE FROM dek WHERE id = $1";
const TOUCH: &str =
    "UPDATE dek SET last_used = GREATEST(COALESCE(last_used, $2), $2) WHERE id = $1";
const SOFT_DELETE: &str =
    "UPDATE dek SET deleted_at = $2, purge_after = $3, updated = $2, generation = generation + 1
     WHERE id = $1 AND deleted_at IS NULL";
const RECOVER: &str = "UPDATE dek SET deleted_at = NULL, purge_after = NULL, updated = $2, generation = generation + 1
     WHERE id = $1 AND deleted_at IS NOT NULL";
const LIST_DELETED: &str = "SELECT id, label, kek_version, deleted_at, purge_after FROM dek
     WHERE deleted_at IS NOT NULL ORDER BY deleted_at, id";
const PURGE_AFTER_FOR_UPDATE: &str =
    "SELECT purge_after FROM dek WHERE id = $1 AND deleted_at IS NOT NULL FOR UPDATE";
const PROTECTION_FOR_SHARE: &str = "SELECT value FROM meta WHERE key = $1 FOR SHARE";
const PROTECTION: &str = "SELECT value FROM meta WHERE key = $1";
const ENABLE_PROTECTION: &str = "INSERT INTO meta (key, value) VALUES ($1, 1)
     ON CONFLICT (key) DO UPDATE SET value = 1";
const KEK_VERSIONS: &str = concat!(
    "SELECT ",
    version_columns!(),
    " FROM kek_version WHERE kek_label = $1 ORDER BY version"
);
const PRIMARY_KEK: &str = concat!(
    "SELECT ",
    version_columns!(),
    " FROM kek_version WHERE kek_label = $1 AND state = 'primary'"
);
const LOCK: &str = "SELECT pg_advisory_xact_lock($1, $2)";
const LOCK_SHARED: &str = "SELECT pg_advisory_xact_lock_shared($1, $2)";
const RETIRE_PRIMARY: &str = "UPDATE kek_version SET state = 'decrypt-only', retired = $2
     WHERE kek_label = $1 AND state = 'primary'";
const INSERT_VERSION: &str =
    "INSERT INTO kek_version (kek_label, version, kind, state, created, primary_since, retired)
     VALUES ($1, $2, $3, $4, $5, $6, NULL)";
const VERSION_STATE: &str = "SELECT state FROM kek_version WHERE kek_label = $1 AND version = $2";
const MAKE_PRIMARY: &str =
    "UPDATE kek_version SET state = 'primary', primary_since = $3, retired = NULL
     WHERE kek_label = $1 AND version = $2";
const MARK_DESTROYED: &str =
    "UPDATE kek_version SET state = 'destroyed', retired = coalesce(retired, $3)
     WHERE kek_label = $1 AND version = $2";
const COUNT_UNDER: &str = "SELECT count(*) FROM dek WHERE kek_label = $1 AND kek_version = $2";
const COUNT_NOT_UNDER: &str = "SELECT count(*) FROM dek WHERE kek_label = $1 AND kek_version <> $2";
const ROWS_NOT_UNDER: &str = concat!(
    "SELECT ",
    row_columns!(),
    ", pos FROM dek WHERE kek_label = $1 AND kek_version <> $2 AND pos > $3 ORDER BY pos LIMIT $4"
);
const PRIMARY_VERSION: &str =
    "SELECT version FROM kek_version WHERE kek_label = $1 AND state = 'primary'";
const REPLACE_RECORD: &str =
    "UPDATE dek SET record = $3, kek_version = $4, updated = $5, generation = generation + 1,
                    kek_label = $6
     WHERE id = $1 AND generation = $2";
const TAKE_LEASE: &str = "INSERT INTO lease (name, holder, expires) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
     WHERE lease.holder = excluded.holder OR lease.expires <= $4";
const RELEASE_LEASE: &str = "DELETE FROM lease WHERE name = $1 AND holder = $2";
const LIST_FOR_ADMIN: &str =
    "SELECT d.id, d.label, d.ckaid, d.kek_label, d.kek_version, d.created, d.updated,
            d.last_used, u.reserved
     FROM dek d LEFT JOIN gcm_usage u ON u.print = d.gcm_print
     WHERE d.deleted_at IS NULL ORDER BY d.created, d.id";
const GCM_NEW: &str = "INSERT INTO gcm_usage (print, reserved, updated) VALUES ($1, 0, $2)
     ON CONFLICT (print) DO NOTHING";
const GCM_FOR_UPDATE: &str = "SELECT reserved FROM gcm_usage WHERE print = $1 FOR UPDATE";
const GCM_SET: &str = "UPDATE gcm_usage SET reserved = $2, updated = $3 WHERE print = $1";
const GCM_MARK_DEK: &str =
    "UPDATE dek SET gcm_print = $2 WHERE id = $1 AND gcm_print IS DISTINCT FROM $2";
const GCM_RETURN: &str =
    "UPDATE gcm_usage SET reserved = $2, updated = $4 WHERE print = $1 AND reserved = $3";
const RECORD_COUNTS: &str = "SELECT kek_label, kek_version, count(*) FROM dek
     GROUP BY kek_label, kek_version ORDER BY kek_label, kek_version";
const DELETED_COUNT: &str = "SELECT count(*) FROM dek WHERE deleted_at IS NOT NULL";
const LIST_PAGE: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM dek WHERE id > $1 AND deleted_at IS NULL ORDER BY id LIMIT $2"
);
const PRUNED_KEY: &str = "changes_pruned_through";
const CHANGES_PRUNED: &str = "SELECT coalesce((SELECT value FROM meta WHERE key = $1), 0)";
const CHANGE_POSITION: &str = "SELECT greatest(coalesce((SELECT max(seq) FROM dek_change), 0),
                             coalesce((SELECT value FROM meta WHERE key = $1), 0))";
const CHANGES_SINCE: &str = "SELECT seq, id FROM dek_change WHERE seq > $1 ORDER BY seq LIMIT $2";
const PRUNE_CHANGES: &str = "DELETE FROM dek_change WHERE seq <= $1";
const SET_PRUNED: &str = "INSERT INTO meta (key, value) VALUES ($1, $2)
     ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, excluded.value)";

/// A PostgreSQL connection string, as configured (`store_url`), and the
/// files TLS to it uses (`store_tls_*`). Its `Display` and `Debug` never
/// show the password: they rebuild a URL from the user, hosts, ports and
/// database name.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub struct Url {
    text: String,
    tls_files: TlsFiles,
}

impl From<String> for Url {
    fn from(text: String) -> Url {
        Url {
            text,
            tls_files: TlsFiles::default(),
        }
    }
}

impl Url {
    /// Checks that `text` is a connection string this engine can use.
    /// The error says what is wrong, without repeating the string.
    pub fn parse(text: &str) -> Result<Url, String> {
        let url = Url::from(text.to_string());
        url.check()?;
        Ok(url)
    }

    /// Whether this is a connection string this engine can use (see
    /// [`Url::parse`]).
    pub fn check(&self) -> Result<(), String> {
        self.target().map(|_| ())
    }

    /// The same store, reached with these TLS files (the configuration's
    /// `store_tls_ca`, `store_tls_cert`, `store_tls_key`).
    pub fn with_tls_files(mut self, files: TlsFiles) -> Url {
        self.tls_files = files;
        self
    }

    /// Whether sessions with this store use TLS (see `sslmode`).
    pub fn uses_tls(&self) -> bool {
        matches!(self.target(), Ok((_, Tls::Verified)))
    }

    /// The `postgres` crate's configuration, with our defaults, and
    /// whether to use TLS.
    fn target(&self) -> Result<(Config, Tls), String> {
        let (text, sslmode) = sslmode::take_sslmode(&self.text);
        let mut c: Config = text
            .parse()
            .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
        if c.get_hosts().is_empty() {
            return Err("no host: name one (postgresql://user@host:port/db, \
                        postgresql://user@%2Frun%2Fpostgresql/db for a unix socket, \
                        or host=...)"
                .into());
        }
        if c.get_dbname().is_none() {
            return Err("no database name (postgresql://user@host/DATABASE, or dbname=...)".into());
        }
        let tls = sslmode::decide(sslmode.as_deref(), c.get_hosts())?;
        #[cfg(not(feature = "aws-lc"))]
        if tls == Tls::Verified {
            return Err(tls::UNAVAILABLE.into());
        }
        c.ssl_mode(match tls {
            Tls::Off => SslMode::Disable,
            Tls::Verified => SslMode::Require,
        });
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(CONNECT_TIMEOUT);
        }
        if c.get_application_name().is_none() {
            c.application_name("hsm-envelope");
        }
        Ok((c, tls))
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(c) = sslmode::take_sslmode(&self.text).0.parse::<Config>() else {
            return f.write_str("postgresql://(a store_url that does not parse)");
        };
        f.write_str("postgresql://")?;
        if let Some(user) = c.get_user() {
            write!(f, "{user}@")?;
        }
        let ports = c.get_ports();
        for (i, host) in c.get_hosts().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match host {
                Host::Tcp(h) => f.write_str(h)?,
                Host::Unix(p) => write!(f, "{}", p.display())?,
            }
            // One port for all hosts, or one per host.
            let port = ports.get(i).or(if ports.len() == 1 {
                ports.first()
            } else {
                None
            });
            if let Some(port) = port {
                write!(f, ":{port}")?;
            }
        }
        write!(f, "/{}", c.get_dbname().unwrap_or(""))
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Url({self})")
    }
}

/// One session and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    fn connect(config: &Config, connector: &Connector) -> Result<Conn, ::postgres::Error> {
        Ok(Conn {
            client: connector.connect(config)?,
            statements: HashMap::new(),
        })
    }

    /// `sql` prepared on this session, once.
    fn prepare(&mut self, sql: &'static str) -> Result<Statement, ::postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

/// A session with a PostgreSQL store (see `Store` for sharing and fork).
pub struct PostgresStore {
    config: Config,
    url: Url,
    /// Plain or TLS; shared with the listener.
    connector: Connector,
    /// None after a failed reconnect; the next call tries again.
    conn: Mutex<Option<Conn>>,
}

fn is_unique_violation(e: &::postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn id16(v: Vec<u8>) -> Result<[u8; 16], StoreError> {
    <[u8; 16]>::try_from(v.as_slice())
        .map_err(|_| StoreError::Data(format!("a DEK id of {} bytes, not 16", v.len())))
}

fn version_of(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Data(format!("KEK version {v} out of range")))
}

fn count_of(r: &Row, i: usize) -> Result<u64, StoreError> {
    Ok(r.try_get::<_, i64>(i)?.max(0) as u64)
}

fn dek_from(r: &Row) -> Result<DekRow, StoreError> {
    Ok(DekRow {
        id: id16(r.try_get(0)?)?,
        label: r.try_get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
        ckaid: r.try_get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
        attrs: r.try_get(3)?,
        record: r.try_get(4)?,
        kek_label: r.try_get(5)?,
        kek_version: version_of(r.try_get(6)?)?,
        created: r.try_get(7)?,
        updated: r.try_get(8)?,
        generation: r.try_get(9)?,
    })
}

fn version_from(r: &Row) -> Result<KekVersionRow, StoreError> {
    let state: String = r.try_get(3)?;
    Ok(KekVersionRow {
        kek_label: r.try_get(0)?,
        version: version_of(r.try_get(1)?)?,
        kind: r.try_get(2)?,
        state: KekState::parse(&state)
            .ok_or_else(|| StoreError::Data(format!("unknown KEK state {state:?}")))?,
        created: r.try_get(4)?,
        primary_since: r.try_get(5)?,
        retired: r.try_get(6)?,
    })
}

impl PostgresStore {
    /// Connects to the database `url` names and creates or migrates the
    /// schema. The database must exist and the user must be allowed to
    /// create tables in it (on first use) and to read and write them.
    pub fn open(url: &Url) -> Result<PostgresStore, StoreError> {
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            location: url.to_string(),
            source,
        };
        let (config, tls) = url.target().map_err(|m| open_error(m.into()))?;
        let connector = Connector::new(tls, &url.tls_files).map_err(|m| open_error(m.into()))?;
        if tls == Tls::Off && config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_))) {
            crate::log_warn!("the DEK store {url} is reached without TLS (sslmode=disable)");
        }
        let conn = Conn::connect(&config, &connector)
            .map_err(|e| open_error(Box::new(ConnectFailed::new(&e))))?;
        let store = PostgresStore {
            config,
            url: url.clone(),
            connector,
            conn: Mutex::new(Some(conn)),
        };
        store.migrate().map_err(|e| match e {
            e @ StoreError::Schema { .. } => e,
            other => open_error(Box::new(other)),
        })?;
        Ok(store)
    }

    /// Runs `f` on the session, connecting again first if the last one was
    /// closed (a restarted server, a dropped network).
    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut guard = unpoisoned(self.conn.lock());
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = None;
            let conn = Conn::connect(&self.config, &self.connector).inspect_err(|e| {
                // A refused handshake (say, a server certificate renewed
                // by a CA not trusted here) is no outage that passes: say
                // why, which the error returned does not.
                if let Some(why) = tls::explain(e) {
                    crate::log_warn!("cannot reconnect to the DEK store {}: {why}", self.url);
                }
            })?;
            *guard = Some(conn);
            crate::log_info!("reconnected to the DEK store {}", self.url);
        }
        match guard.as_mut() {
            Some(c) => f(c),
            None => Err(StoreError::Data("no session".into())),
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.with(|c| {
            // Fast path without the lock: an existing, current database.
            // (On a new one, `meta` does not exist yet and this fails.)
            if let Ok(Some(r)) = c
                .client
                .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
            {
                if r.try_get::<_, Option<i64>>(0)? == Some(SCHEMA_VERSION) {
                    return Ok(());
                }
            }
            let mut tx = c.client.transaction()?;
            tx.execute(LOCK, &[&LOCK_CLASS, &LOCK_SCHEMA])?;
            tx.batch_execute(CREATE_META)?;
            let found = tx
                .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])?
                .map(|r| r.try_get::<_, Option<i64>>(0))
                .transpose()?
                .flatten()
                .unwrap_or(0);
            if !(0..=SCHEMA_VERSION).contains(&found) {
                return Err(StoreError::Schema {
                    location: self.url.to_string(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            // Each step runs once, gated by the version, which moves in the
            // same transaction (DDL is transactional in PostgreSQL).
            for step in MIGRATIONS.iter().skip(found as usize) {
                tx.batch_execute(step)?;
            }
            if found == 0 {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('created', $1) ON CONFLICT DO NOTHING",
                    &[&now_secs()],
                )?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&SCHEMA_VERSION],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ::postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.with(|c| {
            let st = c.prepare(sql)?;
            Ok(c.client.query(&st, params)?)
        })
    }

    fn execute(
        &self,
        sql: &'static str,
        params: &[&(dyn ::postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.with(|c| {
            let st = c.prepare(sql)?;
            Ok(c.client.execute(&st, params)?)
        })
    }

    /// [`PostgresStore::execute`] in a transaction that changes DEK rows.
    fn execute_changing(
        &self,
        sql: &'static str,
        params: &[&(dyn ::postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.with(|c| {
            let st = c.prepare(sql)?;
            let mut tx = changing(c)?;
            let n = tx.execute(&st, params)?;
            tx.commit()?;
            Ok(n)
        })
    }

    fn count(
        &self,
        sql: &'static str,
        params: &[&(dyn ::postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        match self.query(sql, params)?.first() {
            Some(r) => count_of(r, 0),
            None => Ok(0),
        }
    }
}

/// A transaction that changes DEK rows: `LOCK_CHANGES` taken first, so
/// the change positions its trigger hands out follow commit order.
fn changing(c: &mut Conn) -> Result<::postgres::Transaction<'_>, StoreError> {
    let lock = c.prepare(LOCK)?;
    let mut tx = c.client.transaction()?;
    tx.execute(&lock, &[&LOCK_CLASS, &LOCK_CHANGES])?;
    Ok(tx)
}

/// `row` as the parameters of [`INSERT`], run on `client` (a session or a
/// transaction).
fn insert_row(
    client: &mut impl ::postgres::GenericClient,
    st: &Statement,
    row: &DekRow,
) -> Result<(), StoreError> {
    let version = i64::from(row.kek_version);
    match client.execute(
        st,
        &[
            &&row.id[..],
            &row.label,
            &row.ckaid,
            &row.attrs,
            &row.record,
            &row.kek_label,
            &version,
            &row.created,
            &row.updated,
            &row.generation,
        ],
    ) {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate),
        Err(e) => Err(e.into()),
    }
}

impl StoreEngine for PostgresStore {
    fn engine_name(&self) -> &'static str {
        ENGINE
    }

    fn insert(&self, row: &DekRow) -> Result<(), StoreError> {
        self.with(|c| {
            let st = c.prepare(INSERT)?;
            let mut tx = changing(c)?;
            insert_row(&mut tx, &st, row)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn insert_many(&self, rows: &[DekRow]) -> Result<(), StoreError> {
        self.with(|c| {
            let st = c.prepare(INSERT)?;
            let mut tx = changing(c)?;
            for row in rows {
                insert_row(&mut tx, &st, row)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn get(&self, id: &[u8; 16]) -> Result<Option<DekRow>, StoreError> {
        self.query(GET, &[&&id[..]])?
            .first()
            .map(dek_from)
            .transpose()
    }

    fn list(&self) -> Result<Vec<DekRow>, StoreError> {
        self.query(LIST, &[])?.iter().map(dek_from).collect()
    }

    fn find(&self, query: &DekQuery) -> Result<Vec<DekRow>, StoreError> {
        // As on SQLite: by the primary key alone, else by one index.
        let rows = match (&query.id, &query.label, &query.ckaid) {
            (Some(id), _, _) => self.query(FIND_BY_ID, &[&&id[..]])?,
            (None, Some(l), Some(c)) => self.query(FIND_BY_LABEL_CKAID, &[l, c])?,
            (None, Some(l), None) => self.query(FIND_BY_LABEL, &[l])?,
            (None, None, Some(c)) => self.query(FIND_BY_CKAID, &[c])?,
            (None, None, None) => return Ok(Vec::new()),
        };
        let rows = rows.iter().map(dek_from).collect::<Result<Vec<_>, _>>()?;
        Ok(rows.into_iter().filter(|r| query.matches(r)).collect())
    }

    fn list_ids_generations(&self) -> Result<Vec<([u8; 16], i64)>, StoreError> {
        self.query(LIST_IDS, &[])?
            .iter()
            .map(|r| Ok((id16(r.try_get(0)?)?, r.try_get(1)?)))
            .collect()
    }

    fn update(
        &self,
        id: &[u8; 16],
        label: &[u8],
        ckaid: &[u8],
        attrs: &[u8],
        record: &[u8],
        kek_label: &str,
        kek_version: u32,
        expect_generation: Option<i64>,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let select = c.prepare(GENERATION_FOR_UPDATE)?;
            let update = c.prepare(UPDATE)?;
            let mut tx = changing(c)?;
            let Some(row) = tx.query_opt(&select, &[&&id[..]])? else {
                return Err(StoreError::NotFound);
            };
            let current: i64 = row.try_get(0)?;
            if expect_generation.is_some_and(|g| g != current) {
                return Ok(false);
            }
            tx.execute(
                &update,
                &[
                    &&id[..],
                    &label,
                    &ckaid,
                    &attrs,
                    &record,
                    &kek_label,
                    &i64::from(kek_version),
                    &now_secs(),
                    &current.wrapping_add(1),
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn delete(&self, id: &[u8; 16]) -> Result<bool, StoreError> {
        Ok(self.execute_changing(DELETE, &[&&id[..]])? > 0)
    }

    fn touch_last_used(&self, id: &[u8; 16], when: i64) -> Result<(), StoreError> {
        if self.execute(TOUCH, &[&&id[..], &when])? == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    fn touch_many(&self, uses: &[([u8; 16], i64)]) -> Result<(), StoreError> {
        self.with(|c| {
            let st = c.prepare(TOUCH)?;
            let mut tx = c.client.transaction()?;
            for (id, when) in uses {
                tx.execute(&st, &[&&id[..], when])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn soft_delete(&self, id: &[u8; 16], purge_after: i64) -> Result<bool, StoreError> {
        Ok(self.execute_changing(SOFT_DELETE, &[&&id[..], &now_secs(), &purge_after])? > 0)
    }

    fn recover(&self, id: &[u8; 16]) -> Result<bool, StoreError> {
        Ok(self.execute_changing(RECOVER, &[&&id[..], &now_secs()])? > 0)
    }

    fn list_deleted(&self) -> Result<Vec<DeletedRow>, StoreError> {
        self.query(LIST_DELETED, &[])?
            .iter()
            .map(|r| {
                Ok(DeletedRow {
                    id: id16(r.try_get(0)?)?,
                    label: r.try_get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    kek_version: version_of(r.try_get(2)?)?,
                    deleted_at: r.try_get(3)?,
                    purge_after: r.try_get(4)?,
                })
            })
            .collect()
    }

    fn purge(&self, id: &[u8; 16], now: i64) -> Result<Result<(), PurgeRefusal>, StoreError> {
        self.with(|c| {
            let select = c.prepare(PURGE_AFTER_FOR_UPDATE)?;
            let protection = c.prepare(PROTECTION_FOR_SHARE)?;
            let delete = c.prepare(DELETE)?;
            let mut tx = changing(c)?;
            let purge_after: Option<i64> = match tx.query_opt(&select, &[&&id[..]])? {
                Some(r) => r.try_get(0)?,
                None => None,
            };
            let Some(purge_after) = purge_after else {
                return Ok(Err(PurgeRefusal::NotDeleted));
            };
            // FOR SHARE: protection switched on meanwhile waits for this
            // purge, or this purge sees it.
            let protected = match tx.query_opt(&protection, &[&PROTECTION_KEY])? {
                Some(r) => r.try_get::<_, Option<i64>>(0)?.is_some_and(|v| v != 0),
                None => false,
            };
            if protected && now < purge_after {
                return Ok(Err(PurgeRefusal::Retained { purge_after }));
            }
            tx.execute(&delete, &[&&id[..]])?;
            tx.commit()?;
            Ok(Ok(()))
        })
    }

    fn purge_protection(&self) -> Result<bool, StoreError> {
        Ok(match self.query(PROTECTION, &[&PROTECTION_KEY])?.first() {
            Some(r) => r.try_get::<_, Option<i64>>(0)?.is_some_and(|v| v != 0),
            None => false,
        })
    }

    fn enable_purge_protection(&self) -> Result<(), StoreError> {
        self.execute(ENABLE_PROTECTION, &[&PROTECTION_KEY])?;
        Ok(())
    }

    fn kek_versions(&self, label: &str) -> Result<Vec<KekVersionRow>, StoreError> {
        self.query(KEK_VERSIONS, &[&label])?
            .iter()
            .map(version_from)
            .collect()
    }

    fn primary_kek(&self, label: &str) -> Result<Option<KekVersionRow>, StoreError> {
        self.query(PRIMARY_KEK, &[&label])?
            .first()
            .map(version_from)
            .transpose()
    }

    fn add_kek_version(
        &self,
        label: &str,
        version: u32,
        kind: &str,
        make_primary: bool,
    ) -> Result<(), StoreError> {
        let now = now_secs();
        self.with(|c| {
            let lock = c.prepare(LOCK)?;
            let retire = c.prepare(RETIRE_PRIMARY)?;
            let insert = c.prepare(INSERT_VERSION)?;
            let mut tx = c.client.transaction()?;
            tx.execute(&lock, &[&LOCK_CLASS, &LOCK_KEK])?;
            if make_primary {
                tx.execute(&retire, &[&label, &now])?;
            }
            let state = if make_primary {
                KekState::Primary
            } else {
                KekState::DecryptOnly
            };
            let primary_since = make_primary.then_some(now);
            match tx.execute(
                &insert,
                &[
                    &label,
                    &i64::from(version),
                    &kind,
                    &state.as_str(),
                    &now,
                    &primary_since,
                ],
            ) {
                Err(e) if is_unique_violation(&e) => return Err(StoreError::Duplicate),
                r => r?,
            };
            tx.commit()?;
            Ok(())
        })
    }

    fn set_primary_kek(&self, label: &str, version: u32) -> Result<(), StoreError> {
        let now = now_secs();
        self.with(|c| {
            let lock = c.prepare(LOCK)?;
            let state = c.prepare(VERSION_STATE)?;
            let retire = c.prepare(RETIRE_PRIMARY)?;
            let make = c.prepare(MAKE_PRIMARY)?;
            let version = i64::from(version);
            let mut tx = c.client.transaction()?;
            tx.execute(&lock, &[&LOCK_CLASS, &LOCK_KEK])?;
            let current: Option<String> = match tx.query_opt(&state, &[&label, &version])? {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            };
            match current.as_deref() {
                None | Some("destroyed") => return Err(StoreError::NotFound),
                Some("primary") => return Ok(()),
                _ => {}
            }
            tx.execute(&retire, &[&label, &now])?;
            tx.execute(&make, &[&label, &version, &now])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn mark_kek_destroyed(&self, label: &str, version: u32) -> Result<(), StoreError> {
        let n = self.execute(MARK_DESTROYED, &[&label, &i64::from(version), &now_secs()])?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    fn count_under(&self, label: &str, version: u32) -> Result<u64, StoreError> {
        self.count(COUNT_UNDER, &[&label, &i64::from(version)])
    }

    fn count_not_under(&self, label: &str, version: u32) -> Result<u64, StoreError> {
        self.count(COUNT_NOT_UNDER, &[&label, &i64::from(version)])
    }

    fn rows_not_under(
        &self,
        label: &str,
        version: u32,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, DekRow)>, StoreError> {
        self.query(
            ROWS_NOT_UNDER,
            &[&label, &i64::from(version), &after, &i64::from(limit)],
        )?
        .iter()
        .map(|r| Ok((r.try_get(10)?, dek_from(r)?)))
        .collect()
    }

    fn replace_records(&self, label: &str, updates: &[RecordUpdate]) -> Result<usize, StoreError> {
        let now = now_secs();
        self.with(|c| {
            let lock = c.prepare(LOCK_SHARED)?;
            let lock_changes = c.prepare(LOCK)?;
            let primary = c.prepare(PRIMARY_VERSION)?;
            let replace = c.prepare(REPLACE_RECORD)?;
            let mut tx = c.client.transaction()?;
            // Shared: batches run side by side; a rotation waits for them.
            tx.execute(&lock, &[&LOCK_CLASS, &LOCK_KEK])?;
            tx.execute(&lock_changes, &[&LOCK_CLASS, &LOCK_CHANGES])?;
            let primary: Option<i64> = match tx.query_opt(&primary, &[&label])? {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            };
            let mut written = 0;
            for (id, generation, record, version) in updates {
                let version = i64::from(*version);
                if primary != Some(version) {
                    continue;
                }
                written += tx.execute(
                    &replace,
                    &[&&id[..], generation, record, &version, &now, &label],
                )?;
            }
            tx.commit()?;
            Ok(written as usize)
        })
    }

    fn take_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool, StoreError> {
        let now = now_secs();
        let expires = now.saturating_add(ttl_secs);
        // One statement: inserted, or taken over (ours already, or
        // expired), or left alone (someone else's, still running).
        Ok(self.execute(TAKE_LEASE, &[&name, &holder, &expires, &now])? > 0)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.execute(RELEASE_LEASE, &[&name, &holder])?;
        Ok(())
    }

    fn list_for_admin(&self) -> Result<Vec<DekListing>, StoreError> {
        self.query(LIST_FOR_ADMIN, &[])?
            .iter()
            .map(|r| {
                Ok(DekListing {
                    id: id16(r.try_get(0)?)?,
                    label: r.try_get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    ckaid: r.try_get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                    kek_label: r.try_get(3)?,
                    kek_version: version_of(r.try_get(4)?)?,
                    created: r.try_get(5)?,
                    updated: r.try_get(6)?,
                    last_used: r.try_get(7)?,
                    gcm_invocations: r
                        .try_get::<_, Option<i64>>(8)?
                        .map(gcm::from_sql)
                        .transpose()?,
                })
            })
            .collect()
    }

    fn reserve_gcm(
        &self,
        print: &gcm::Print,
        dek: Option<&[u8; 16]>,
        n: u64,
        limit: u64,
        now: i64,
    ) -> Result<gcm::Reservation, StoreError> {
        self.with(|c| {
            let new = c.prepare(GCM_NEW)?;
            let lock = c.prepare(GCM_FOR_UPDATE)?;
            let set = c.prepare(GCM_SET)?;
            let mark = c.prepare(GCM_MARK_DEK)?;
            let mut tx = c.client.transaction()?;
            tx.execute(&new, &[&&print[..], &now])?;
            // The row is locked: another reservation of this key waits for
            // this transaction and then sees its count.
            let reserved = match tx.query_opt(&lock, &[&&print[..]])? {
                Some(r) => gcm::from_sql(r.try_get(0)?)?,
                None => return Err(StoreError::NotFound),
            };
            let grant = gcm::Reservation::grant(reserved, n, limit);
            let total = gcm::to_sql(grant.start + grant.granted)?;
            tx.execute(&set, &[&&print[..], &total, &now])?;
            if let Some(id) = dek {
                tx.execute(&mark, &[&&id[..], &&print[..]])?;
            }
            tx.commit()?;
            Ok(grant)
        })
    }

    fn return_gcm(
        &self,
        print: &gcm::Print,
        from: u64,
        to: u64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (from, to) = (gcm::to_sql(from)?, gcm::to_sql(to)?);
        Ok(self.execute(GCM_RETURN, &[&&print[..], &from, &to, &now])? > 0)
    }

    fn record_counts(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        self.query(RECORD_COUNTS, &[])?
            .iter()
            .map(|r| Ok((r.try_get(0)?, version_of(r.try_get(1)?)?, count_of(r, 2)?)))
            .collect()
    }

    fn deleted_count(&self) -> Result<u64, StoreError> {
        self.count(DELETED_COUNT, &[])
    }

    fn list_page(&self, after: Option<&[u8; 16]>, limit: u32) -> Result<Vec<DekRow>, StoreError> {
        // '' sorts before every 16-byte id.
        let after: &[u8] = after.map_or(&[], |a| &a[..]);
        self.query(LIST_PAGE, &[&after, &i64::from(limit)])?
            .iter()
            .map(dek_from)
            .collect()
    }

    fn change_position(&self) -> Result<i64, StoreError> {
        match self.query(CHANGE_POSITION, &[&PRUNED_KEY])?.first() {
            Some(r) => Ok(r.try_get(0)?),
            None => Ok(0),
        }
    }

    fn changes_since(&self, after: i64, limit: u32) -> Result<Changes, StoreError> {
        // Each statement sees its own snapshot: the rows first, then the
        // prune point. A prune through past `after` that committed before
        // the rows were read is then seen (a gap); one after it cut nothing
        // those rows needed.
        let rows = self.query(CHANGES_SINCE, &[&after, &i64::from(limit)])?;
        let pruned: i64 = match self.query(CHANGES_PRUNED, &[&PRUNED_KEY])?.first() {
            Some(r) => r.try_get(0)?,
            None => 0,
        };
        // Positions only grow, so one read after another is enough.
        let position = self.change_position()?;
        if after < pruned || after > position {
            return Ok(Changes::Gap { upto: position });
        }
        let mut ids = Vec::new();
        let mut upto = after;
        for r in rows {
            upto = r.try_get(0)?;
            // A malformed id names no row we could hold.
            if let Ok(id) = id16(r.try_get(1)?) {
                ids.push(id);
            }
        }
        Ok(Changes::Since { ids, upto })
    }

    fn prune_changes(&self, through: i64) -> Result<(), StoreError> {
        self.with(|c| {
            let prune = c.prepare(PRUNE_CHANGES)?;
            let set = c.prepare(SET_PRUNED)?;
            let mut tx = c.client.transaction()?;
            tx.execute(&prune, &[&through])?;
            tx.execute(&set, &[&PRUNED_KEY, &through])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn listen(&self, wake: Box<dyn Fn() + Send>) -> Option<Listener> {
        let mut config = self.config.clone();
        // A server that does not answer must not hold up the listener's
        // stop (at C_Finalize) for long: the connect timeout covers the
        // TCP connect only, so unacknowledged data (a stalled handshake)
        // and a silent peer are bounded too; a stuck thread is left to end
        // on its own (`Listener`'s drop).
        config
            .connect_timeout(LISTEN_TICK * 10)
            .tcp_user_timeout(LISTEN_TICK * 50)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let url = self.url.clone();
        let connector = self.connector.clone();
        Listener::spawn("hsme-listen", move |stop| {
            listen_loop(&config, &connector, &url, &stop, &*wake)
        })
    }
}

/// Until `stop`: listens on [`CHANNEL`] and calls `wake` for each batch of
/// notifications, and once after every (re)connect, since changes made
/// while not listening were not announced.
fn listen_loop(
    config: &Config,
    connector: &Connector,
    url: &Url,
    stop: &AtomicBool,
    wake: &dyn Fn(),
) {
    use ::postgres::fallible_iterator::FallibleIterator;
    let stopped = || stop.load(Ordering::Acquire);
    let mut announced_failure = false;
    while !stopped() {
        let client = connector
            .connect(config)
            .and_then(|mut c| c.batch_execute(&format!("LISTEN {CHANNEL}")).map(|_| c));
        let mut client = match client {
            Ok(c) => c,
            Err(e) => {
                if !announced_failure {
                    let why = ConnectFailed::new(&e);
                    crate::log_warn!("change notifications from {url} paused: {why}");
                    announced_failure = true;
                }
                // Look at the stop flag while waiting to try again.
                let mut waited = Duration::ZERO;
                while waited < LISTEN_RETRY && !stopped() {
                    std::thread::sleep(LISTEN_TICK);
                    waited += LISTEN_TICK;
                }
                continue;
            }
        };
        if announced_failure {
            crate::log_info!("change notifications from {url} resumed");
            announced_failure = false;
        }
        wake();
        while !stopped() {
            let mut n = client.notifications();
            let got = n.timeout_iter(LISTEN_TICK).next();
            match got {
                Ok(Some(_)) => {
                    // Fold whatever else has arrived into one wake.
                    while let Ok(Some(_)) = n.iter().next() {}
                    wake();
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! What needs no server; the store suite (`src/store/tests.rs`) runs
    //! everything else on a real PostgreSQL.
    use super::*;

    /// The first schema, for the suite's migration test.
    pub(crate) const SCHEMA_V1_FOR_TESTS: &str = SCHEMA_V1;

    #[test]
    fn urls_are_shown_without_their_password() {
        for (given, shown) in [
            (
                "postgresql://app:s3cret@db.example:5433/deks",
                "postgresql://app@db.example:5433/deks",
            ),
            (
                "postgresql://app:s3cret@%2Frun%2Fpostgresql/deks",
                "postgresql://app@/run/postgresql:5432/deks",
            ),
            (
                "host=/tmp/x,db2 port=1,2 user=app password=s3cret dbname=deks",
                "postgresql://app@/tmp/x:1,db2:2/deks",
            ),
            (
                "postgresql://app:s3cret@db.example/deks?sslmode=verify-full",
                "postgresql://app@db.example:5432/deks",
            ),
        ] {
            // Shown whether or not this build could connect to it.
            let url = Url::from(given.to_string());
            assert_eq!(url.to_string(), shown);
            assert!(!format!("{url:?}").contains("s3cret"));
            let location = super::super::Location::Postgres(url);
            assert!(!format!("{location} {location:?}").contains("s3cret"));
        }
    }

    #[test]
    fn unusable_urls_are_refused_with_the_reason() {
        for (given, why) in [
            ("mysql://x@h/db", "not a PostgreSQL connection string"),
            ("postgresql:///deks", "no host"),
            ("postgresql://app@host", "no database name"),
            (
                "postgresql://app@host/db?sslmode=prefer",
                "without encryption",
            ),
            (
                "postgresql://app@host/db?sslmode=allow",
                "without encryption",
            ),
            ("postgresql://app@%2Frun/db?sslmode=require", "unix socket"),
            (
                "postgresql://app:s3cret@host/db?nonsense=1",
                "not a PostgreSQL connection string",
            ),
        ] {
            let e = Url::parse(given).unwrap_err();
            assert!(e.contains(why), "{given}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    /// TLS to TCP hosts unless `sslmode=disable`; none on unix sockets.
    #[test]
    #[cfg(feature = "aws-lc")]
    fn tcp_hosts_are_reached_over_tls_unless_it_is_disabled() {
        for (given, tls) in [
            ("postgresql://app@db.example/deks", true),
            ("postgresql://app@db.example/deks?sslmode=require", true),
            ("postgresql://app@db.example/deks?sslmode=verify-ca", true),
            ("postgresql://app@127.0.0.1/deks?sslmode=verify-full", true),
            ("host=db.example dbname=deks sslmode=verify-full", true),
            ("postgresql://app@db.example/deks?sslmode=disable", false),
            ("postgresql://app@%2Frun%2Fpostgresql/deks", false),
            ("host=/run/postgresql dbname=deks sslmode=disable", false),
        ] {
            let url = Url::parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(url.uses_tls(), tls, "{given}");
            let (config, _) = url.target().unwrap();
            let want = if tls {
                SslMode::Require
            } else {
                SslMode::Disable
            };
            assert_eq!(config.get_ssl_mode(), want, "{given}");
        }
    }

    /// A build without TLS refuses a store that needs it, saying why.
    #[test]
    #[cfg(not(feature = "aws-lc"))]
    fn a_build_without_tls_refuses_a_tcp_host_unless_tls_is_disabled() {
        let e = Url::parse("postgresql://app@db.example/deks").unwrap_err();
        assert!(e.contains("no TLS"), "{e}");
        let url = Url::parse("postgresql://app@db.example/deks?sslmode=disable").unwrap();
        assert!(!url.uses_tls());
    }

    #[test]
    fn a_store_that_cannot_be_reached_is_an_open_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::parse(&format!(
            "postgresql://app:s3cret@{}/deks",
            dir.path().display().to_string().replace('/', "%2F")
        ))
        .unwrap();
        let e = PostgresStore::open(&url).err().unwrap();
        assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }
}
