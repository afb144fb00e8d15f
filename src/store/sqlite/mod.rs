//! The SQLite engine: the embedded default, no server.
//!
//! One SQLite file holds every token DEK as a wrapped record (see
//! `envelope::record`), its serialized attributes and bookkeeping. The file
//! is shared safely by several processes on one host:
//!
//! - WAL journal: readers never block the writer and vice versa, which
//!   matters when a database and the admin tool use the store at once.
//! - `busy_timeout` ([`BUSY_TIMEOUT`]): a writer that finds the file locked
//!   waits instead of failing with `SQLITE_BUSY`.
//! - Every read-modify-write runs in a `BEGIN IMMEDIATE` transaction, which
//!   takes the write lock up front. (A deferred transaction that reads and
//!   then writes can fail with `SQLITE_BUSY` *without* waiting, because its
//!   read snapshot may be stale.)
//! - `synchronous=FULL`: see [`SqliteStore::open`].
//! - `secure_delete=ON`: deleted and overwritten rows are zeroed on disk,
//!   so a purged or re-wrapped record does not linger in free space.
//!
//! The schema version lives in `PRAGMA user_version` ([`SCHEMA_VERSION`]).
//!
//! Nothing here logs row contents.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::clock::unix_secs as now_secs;

use rusqlite::{
    ffi, params, Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
};

use super::{
    gcm, Changes, DekListing, DekQuery, DekRow, DeletedRow, KekState, KekVersionRow, PurgeRefusal,
    RecordUpdate, StoreEngine, StoreError,
};

mod copy;

/// The engine's name.
pub const ENGINE: &str = "sqlite";

/// Schema version written to `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 6;
/// How long a connection waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a SQLite store file (see `Store` for sharing and fork).
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB
);
CREATE TABLE IF NOT EXISTS dek (
    id          BLOB PRIMARY KEY NOT NULL CHECK (typeof(id) = 'blob' AND length(id) = 16),
    label       BLOB,
    ckaid       BLOB,
    attrs       BLOB NOT NULL,
    record      BLOB NOT NULL,
    kek_label   TEXT NOT NULL,
    kek_version INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL,
    last_used   INTEGER,
    generation  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dek_kek ON dek (kek_label, kek_version);
";

/// Version 2: KEK versions and leases (issue 3).
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS kek_version (
    kek_label     TEXT NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 1),
    kind          TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('primary', 'decrypt-only', 'destroyed')),
    created       INTEGER NOT NULL,
    primary_since INTEGER,
    retired       INTEGER,
    PRIMARY KEY (kek_label, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_primary ON kek_version (kek_label) WHERE state = 'primary';
CREATE TABLE IF NOT EXISTS lease (
    name    TEXT PRIMARY KEY NOT NULL,
    holder  TEXT NOT NULL,
    expires INTEGER NOT NULL
);
";

/// Version 3: recoverable deletion (issue 5). A deleted row keeps its
/// record until it is purged.
const SCHEMA_V3: &str = "
ALTER TABLE dek ADD COLUMN deleted_at INTEGER;
ALTER TABLE dek ADD COLUMN purge_after INTEGER;
CREATE INDEX IF NOT EXISTS dek_deleted ON dek (deleted_at);
";

/// Version 4: indexes for `find` by CKA_LABEL and CKA_ID (issue 14).
const SCHEMA_V4: &str = "
CREATE INDEX IF NOT EXISTS dek_label ON dek (label);
CREATE INDEX IF NOT EXISTS dek_ckaid ON dek (ckaid);
";

/// Version 5: GCM invocation counts per key material (issue 12).
const SCHEMA_V5: &str = "
CREATE TABLE IF NOT EXISTS gcm_usage (
    print    BLOB PRIMARY KEY NOT NULL CHECK (typeof(print) = 'blob' AND length(print) = 16),
    reserved INTEGER NOT NULL CHECK (reserved >= 0),
    updated  INTEGER NOT NULL
);
ALTER TABLE dek ADD COLUMN gcm_print BLOB;
";

/// Version 6: the change feed (issue 14; see `store::changes`). Triggers
/// write it, so every write path does; uses and GCM prints are not changes.
/// AUTOINCREMENT: a position is never handed out twice, even after a prune.
const SCHEMA_V6: &str = "
CREATE TABLE IF NOT EXISTS dek_change (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id  BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS dek_made AFTER INSERT ON dek
BEGIN
    INSERT INTO dek_change (id) VALUES (NEW.id);
END;
CREATE TRIGGER IF NOT EXISTS dek_changed
AFTER UPDATE OF label, ckaid, attrs, record, kek_label, kek_version, generation, deleted_at ON dek
BEGIN
    INSERT INTO dek_change (id) VALUES (NEW.id);
END;
CREATE TRIGGER IF NOT EXISTS dek_gone AFTER DELETE ON dek
BEGIN
    INSERT INTO dek_change (id) VALUES (OLD.id);
END;
";

/// Where the change feed was pruned through (`meta`).
const PRUNED_KEY: &str = "changes_pruned_through";

pub(crate) const ROW_COLUMNS: &str =
    "id, label, ckaid, attrs, record, kek_label, kek_version, created, updated, generation";

/// One INSERT of a DEK row on `conn` (a connection or a transaction).
pub(crate) fn insert_row(conn: &Connection, row: &DekRow) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO dek (id, label, ckaid, attrs, record, kek_label, kek_version, created, updated, last_used, generation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10)",
    )?;
    match stmt.execute(params![
        row.id,
        row.label,
        row.ckaid,
        row.attrs,
        row.record,
        row.kek_label,
        row.kek_version,
        row.created,
        row.updated,
        row.generation
    ]) {
        Ok(_) => Ok(()),
        Err(e) if is_pk_violation(&e) => Err(StoreError::Duplicate),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn row_to_dek(r: &Row<'_>) -> rusqlite::Result<DekRow> {
    Ok(DekRow {
        id: r.get(0)?,
        label: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
        ckaid: r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
        attrs: r.get(3)?,
        record: r.get(4)?,
        kek_label: r.get(5)?,
        kek_version: r.get(6)?,
        created: r.get(7)?,
        updated: r.get(8)?,
        generation: r.get(9)?,
    })
}

pub(crate) fn is_pk_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_extended_error_code(),
        Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY) | Some(ffi::SQLITE_CONSTRAINT_UNIQUE)
    )
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ffi::ErrorCode::DatabaseBusy) | Some(ffi::ErrorCode::DatabaseLocked)
    )
}

/// An `Open` error carrying our own explanation (missing directory, ...).
fn open_error(path: &Path, msg: String) -> StoreError {
    StoreError::Open {
        location: path.display().to_string(),
        source: Box::new(rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_CANTOPEN),
            Some(msg),
        )),
    }
}

/// An `Open` error from SQLite itself.
fn open_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + Copy + '_ {
    move |source| StoreError::Open {
        location: path.display().to_string(),
        source: Box::new(source),
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file and schema on first use.
    ///
    /// The parent directory must exist (we do not guess where an operator
    /// wants key material); if it does not, the error names it. A new file
    /// is created with mode 0600; SQLite gives the `-wal`/`-shm` files the
    /// same mode. To share the store between users, pre-create the file with
    /// the desired owner and mode.
    ///
    /// `synchronous=FULL` rather than NORMAL: with WAL, NORMAL never
    /// corrupts the file but may lose the last commits on power failure. A
    /// lost commit here is a lost DEK whose data the application has
    /// already encrypted, i.e. data loss; the extra fsync per commit is
    /// cheap next to an HSM round trip.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(open_error(
                path,
                format!(
                    "directory {} does not exist or is not a directory",
                    parent.display()
                ),
            ));
        }
        // Pre-create so the mode is 0600 regardless of umask defaults.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(open_error(path, format!("cannot create file: {e}"))),
        }

        let open_err = open_err(path);
        // No SQLITE_OPEN_URI: a configured path is a path, never a URI.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // The bundled SQLite is built with SQLITE_USE_URI=1, so a relative
        // path such as `file:x?mode=ro` would be read as a URI whatever the
        // flags; anchoring relative paths at `./` keeps them plain paths.
        let sqlite_path = if path.is_relative() {
            Path::new(".").join(path)
        } else {
            path.to_path_buf()
        };
        let conn = Connection::open_with_flags(&sqlite_path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        Self::configure(&conn).map_err(open_err)?;
        let store = SqliteStore {
            conn,
            path: path.to_path_buf(),
        };
        store.init_schema()?;
        Ok(store)
    }

    fn configure(conn: &Connection) -> rusqlite::Result<()> {
        // Per-connection settings (not stored in the file).
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // A store file is data, not code: ignore any SQL functions/views a
        // tampered file might try to make us run.
        conn.pragma_update(None, "trusted_schema", "OFF")?;
        // WAL is persistent in the file; only switch when needed. The switch
        // wants an exclusive lock and SQLite does not run the busy handler
        // for it in every case (seen when several processes open a new file
        // at once), so retry SQLITE_BUSY here ourselves, for up to
        // BUSY_TIMEOUT.
        let deadline = Instant::now() + BUSY_TIMEOUT;
        loop {
            let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
            if mode.eq_ignore_ascii_case("wal") {
                break;
            }
            // If WAL is refused (e.g. a filesystem without shared memory),
            // SQLite keeps a rollback journal, which is still correct for
            // several processes, only less concurrent; so carry on.
            match conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
            {
                Ok(_) => break,
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let open_err = open_err(&self.path);
        let read_version =
            |c: &Connection| c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0));
        // Fast path without the write lock: an existing store.
        let v = read_version(&self.conn).map_err(open_err)?;
        if v != SCHEMA_VERSION {
            self.check_newer(v)?;
            // Several processes may create the schema at once: take the write
            // lock, then look again.
            let tx = self.immediate().map_err(open_err)?;
            let v = read_version(&tx).map_err(open_err)?;
            if v < SCHEMA_VERSION {
                if v == 0 {
                    tx.execute_batch(SCHEMA_V1).map_err(open_err)?;
                    tx.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?1)",
                        params![now_secs()],
                    )
                    .map_err(open_err)?;
                }
                // Each step runs once, gated by the version, which moves in
                // the same transaction.
                if v < 2 {
                    tx.execute_batch(SCHEMA_V2).map_err(open_err)?;
                }
                if v < 3 {
                    tx.execute_batch(SCHEMA_V3).map_err(open_err)?;
                }
                if v < 4 {
                    tx.execute_batch(SCHEMA_V4).map_err(open_err)?;
                }
                if v < 5 {
                    tx.execute_batch(SCHEMA_V5).map_err(open_err)?;
                }
                if v < 6 {
                    tx.execute_batch(SCHEMA_V6).map_err(open_err)?;
                }
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(open_err)?;
            } else {
                self.check_newer(v)?;
            }
            tx.commit().map_err(open_err)?;
        }
        Ok(())
    }

    /// Versions other than 0 (new file) and ours are refused; a future
    /// version means a newer build migrated the file.
    fn check_newer(&self, found: i64) -> Result<(), StoreError> {
        if (0..=SCHEMA_VERSION).contains(&found) {
            return Ok(());
        }
        Err(StoreError::Schema {
            location: self.path.display().to_string(),
            found,
            supported: SCHEMA_VERSION,
        })
    }

    pub(crate) fn immediate(&self) -> rusqlite::Result<Transaction<'_>> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
    }

    /// The file this store was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies the WAL into the database and truncates it to zero bytes, so
    /// deleted or re-wrapped records no longer exist in any old WAL frame
    /// (call after a purge). Returns `false` if other connections' readers
    /// kept it from completing; try again later.
    pub fn checkpoint(&self) -> Result<bool, StoreError> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }
}

const PROTECTION_KEY: &str = "purge_protection";

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<KekVersionRow> {
    let state: String = r.get(3)?;
    Ok(KekVersionRow {
        kek_label: r.get(0)?,
        version: r.get(1)?,
        kind: r.get(2)?,
        state: KekState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                "unknown KEK state".into(),
            )
        })?,
        created: r.get(4)?,
        primary_since: r.get(5)?,
        retired: r.get(6)?,
    })
}

const VERSION_COLUMNS: &str = "kek_label, version, kind, state, created, primary_since, retired";

impl StoreEngine for SqliteStore {
    fn engine_name(&self) -> &'static str {
        ENGINE
    }

    fn insert(&self, row: &DekRow) -> Result<(), StoreError> {
        insert_row(&self.conn, row)
    }

    fn get(&self, id: &[u8; 16]) -> Result<Option<DekRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM dek WHERE id = ?1 AND deleted_at IS NULL"
        ))?;
        Ok(stmt.query_row(params![id], row_to_dek).optional()?)
    }

    fn list(&self) -> Result<Vec<DekRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM dek WHERE deleted_at IS NULL ORDER BY created, id"
        ))?;
        let rows = stmt.query_map([], row_to_dek)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn find(&self, query: &DekQuery) -> Result<Vec<DekRow>, StoreError> {
        // The id is the primary key: by it alone, the rest checked here.
        // Otherwise one index (label, or CKA_ID) and the other column.
        let (sql, params): (&str, Vec<&dyn rusqlite::ToSql>) =
            match (&query.id, &query.label, &query.ckaid) {
                (Some(id), _, _) => ("id = ?1", vec![id]),
                (None, Some(l), Some(c)) => ("label = ?1 AND ckaid = ?2", vec![l, c]),
                (None, Some(l), None) => ("label = ?1", vec![l]),
                (None, None, Some(c)) => ("ckaid = ?1", vec![c]),
                (None, None, None) => return Ok(Vec::new()),
            };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM dek WHERE {sql} AND deleted_at IS NULL ORDER BY id"
        ))?;
        let rows = stmt.query_map(params.as_slice(), row_to_dek)?;
        let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows.into_iter().filter(|r| query.matches(r)).collect())
    }

    fn list_ids_generations(&self) -> Result<Vec<([u8; 16], i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, generation FROM dek WHERE deleted_at IS NULL ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    #[allow(clippy::too_many_arguments)]
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
        let tx = self.immediate()?;
        let current: Option<i64> = tx
            .prepare_cached("SELECT generation FROM dek WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        let Some(current) = current else {
            return Err(StoreError::NotFound);
        };
        if expect_generation.is_some_and(|g| g != current) {
            return Ok(false);
        }
        tx.prepare_cached(
            "UPDATE dek SET label = ?2, ckaid = ?3, attrs = ?4, record = ?5, kek_label = ?6,
                            kek_version = ?7, updated = ?8, generation = ?9
             WHERE id = ?1",
        )?
        .execute(params![
            id,
            label,
            ckaid,
            attrs,
            record,
            kek_label,
            kek_version,
            now_secs(),
            current.wrapping_add(1)
        ])?;
        tx.commit()?;
        Ok(true)
    }

    fn delete(&self, id: &[u8; 16]) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM dek WHERE id = ?1")?
            .execute(params![id])?;
        Ok(n > 0)
    }

    fn touch_last_used(&self, id: &[u8; 16], when: i64) -> Result<(), StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE dek SET last_used = MAX(COALESCE(last_used, ?2), ?2) WHERE id = ?1",
            )?
            .execute(params![id, when])?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    fn touch_many(&self, uses: &[([u8; 16], i64)]) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE dek SET last_used = MAX(COALESCE(last_used, ?2), ?2) WHERE id = ?1",
            )?;
            for (id, when) in uses {
                stmt.execute(params![id, when])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn list_for_admin(&self) -> Result<Vec<DekListing>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.id, d.label, d.ckaid, d.kek_label, d.kek_version, d.created, d.updated,
                    d.last_used, u.reserved
             FROM dek d LEFT JOIN gcm_usage u ON u.print = d.gcm_print
             WHERE d.deleted_at IS NULL ORDER BY d.created, d.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                DekListing {
                    id: r.get(0)?,
                    label: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    ckaid: r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                    kek_label: r.get(3)?,
                    kek_version: r.get(4)?,
                    created: r.get(5)?,
                    updated: r.get(6)?,
                    last_used: r.get(7)?,
                    gcm_invocations: None,
                },
                r.get::<_, Option<i64>>(8)?,
            ))
        })?;
        rows.map(|r| {
            let (mut listing, reserved) = r?;
            listing.gcm_invocations = reserved.map(gcm::from_sql).transpose()?;
            Ok(listing)
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
        let tx = self.immediate()?;
        let reserved: Option<i64> = tx
            .prepare_cached("SELECT reserved FROM gcm_usage WHERE print = ?1")?
            .query_row(params![print], |r| r.get(0))
            .optional()?;
        let reserved = reserved.map(gcm::from_sql).transpose()?.unwrap_or(0);
        let grant = gcm::Reservation::grant(reserved, n, limit);
        let total = gcm::to_sql(grant.start + grant.granted)?;
        tx.prepare_cached(
            "INSERT INTO gcm_usage (print, reserved, updated) VALUES (?1, ?2, ?3)
             ON CONFLICT (print) DO UPDATE SET reserved = excluded.reserved, updated = excluded.updated",
        )?
        .execute(params![print, total, now])?;
        if let Some(id) = dek {
            tx.prepare_cached(
                "UPDATE dek SET gcm_print = ?2 WHERE id = ?1 AND gcm_print IS NOT ?2",
            )?
            .execute(params![id, print])?;
        }
        tx.commit()?;
        Ok(grant)
    }

    fn return_gcm(
        &self,
        print: &gcm::Print,
        from: u64,
        to: u64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE gcm_usage SET reserved = ?2, updated = ?4 WHERE print = ?1 AND reserved = ?3",
            )?
            .execute(params![print, gcm::to_sql(from)?, gcm::to_sql(to)?, now])?;
        Ok(n > 0)
    }

    fn record_counts(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kek_label, kek_version, count(*) FROM dek
             GROUP BY kek_label, kek_version ORDER BY kek_label, kek_version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn deleted_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM dek WHERE deleted_at IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    fn list_page(&self, after: Option<&[u8; 16]>, limit: u32) -> Result<Vec<DekRow>, StoreError> {
        // X'' sorts before every 16-byte id.
        let after: &[u8] = after.map_or(&[], |a| &a[..]);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM dek WHERE id > ?1 AND deleted_at IS NULL ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after, limit], row_to_dek)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn change_position(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT max(coalesce((SELECT max(seq) FROM dek_change), 0),
                        coalesce((SELECT value FROM meta WHERE key = ?1), 0))",
            params![PRUNED_KEY],
            |r| r.get(0),
        )?)
    }

    fn changes_since(&self, after: i64, limit: u32) -> Result<Changes, StoreError> {
        // One read transaction: the prune point, the position and the rows
        // from one snapshot.
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Deferred)?;
        let pruned: i64 = tx
            .prepare_cached("SELECT coalesce((SELECT value FROM meta WHERE key = ?1), 0)")?
            .query_row(params![PRUNED_KEY], |r| r.get(0))?;
        let position = self.change_position()?;
        if after < pruned || after > position {
            return Ok(Changes::Gap { upto: position });
        }
        let mut stmt = tx.prepare_cached(
            "SELECT seq, id FROM dek_change WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut ids = Vec::new();
        let mut upto = after;
        for row in rows {
            let (seq, id) = row?;
            upto = seq;
            // A malformed id names no row we could hold.
            if let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) {
                ids.push(id);
            }
        }
        Ok(Changes::Since { ids, upto })
    }

    fn prune_changes(&self, through: i64) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        tx.prepare_cached("DELETE FROM dek_change WHERE seq <= ?1")?
            .execute(params![through])?;
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        )?
        .execute(params![PRUNED_KEY, through])?;
        tx.commit()?;
        Ok(())
    }

    fn insert_many(&self, rows: &[DekRow]) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        for row in rows {
            insert_row(&tx, row)?;
        }
        tx.commit()?;
        Ok(())
    }
    fn soft_delete(&self, id: &[u8; 16], purge_after: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE dek SET deleted_at = ?2, purge_after = ?3, updated = ?2, generation = generation + 1
             WHERE id = ?1 AND deleted_at IS NULL",
            params![id, now_secs(), purge_after],
        )?;
        Ok(n > 0)
    }

    fn recover(&self, id: &[u8; 16]) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE dek SET deleted_at = NULL, purge_after = NULL, updated = ?2, generation = generation + 1
             WHERE id = ?1 AND deleted_at IS NOT NULL",
            params![id, now_secs()],
        )?;
        Ok(n > 0)
    }

    fn list_deleted(&self) -> Result<Vec<DeletedRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, label, kek_version, deleted_at, purge_after FROM dek
             WHERE deleted_at IS NOT NULL ORDER BY deleted_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeletedRow {
                id: r.get(0)?,
                label: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                kek_version: r.get(2)?,
                deleted_at: r.get(3)?,
                purge_after: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn purge(&self, id: &[u8; 16], now: i64) -> Result<Result<(), PurgeRefusal>, StoreError> {
        let tx = self.immediate()?;
        let purge_after: Option<Option<i64>> = tx
            .query_row(
                "SELECT purge_after FROM dek WHERE id = ?1 AND deleted_at IS NOT NULL",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(purge_after) = purge_after.flatten() else {
            return Ok(Err(PurgeRefusal::NotDeleted));
        };
        let protected: bool = tx
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![PROTECTION_KEY],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|v| v != 0);
        if protected && now < purge_after {
            return Ok(Err(PurgeRefusal::Retained { purge_after }));
        }
        // secure_delete overwrites the row's bytes in the file; the
        // checkpoint removes the copies in the WAL.
        tx.execute("DELETE FROM dek WHERE id = ?1", params![id])?;
        tx.commit()?;
        self.checkpoint()?;
        Ok(Ok(()))
    }

    fn purge_protection(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![PROTECTION_KEY],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|v| v != 0))
    }

    fn enable_purge_protection(&self) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, 1) ON CONFLICT (key) DO UPDATE SET value = 1",
            params![PROTECTION_KEY],
        )?;
        Ok(())
    }
    fn kek_versions(&self, label: &str) -> Result<Vec<KekVersionRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM kek_version WHERE kek_label = ?1 ORDER BY version"
        ))?;
        let rows = stmt.query_map(params![label], row_to_version)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn primary_kek(&self, label: &str) -> Result<Option<KekVersionRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM kek_version WHERE kek_label = ?1 AND state = 'primary'"
            ))?
            .query_row(params![label], row_to_version)
            .optional()?)
    }

    fn add_kek_version(
        &self,
        label: &str,
        version: u32,
        kind: &str,
        make_primary: bool,
    ) -> Result<(), StoreError> {
        let now = now_secs();
        let tx = self.immediate()?;
        if make_primary {
            tx.execute(
                "UPDATE kek_version SET state = 'decrypt-only', retired = ?2 WHERE kek_label = ?1 AND state = 'primary'",
                params![label, now],
            )?;
        }
        let state = if make_primary {
            KekState::Primary
        } else {
            KekState::DecryptOnly
        };
        let r = tx.execute(
            "INSERT INTO kek_version (kek_label, version, kind, state, created, primary_since, retired)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
            params![label, version, kind, state.as_str(), now, make_primary.then_some(now)],
        );
        match r {
            Err(e) if is_pk_violation(&e) => return Err(StoreError::Duplicate),
            r => r?,
        };
        tx.commit()?;
        Ok(())
    }

    fn set_primary_kek(&self, label: &str, version: u32) -> Result<(), StoreError> {
        let now = now_secs();
        let tx = self.immediate()?;
        let state: Option<String> = tx
            .query_row(
                "SELECT state FROM kek_version WHERE kek_label = ?1 AND version = ?2",
                params![label, version],
                |r| r.get(0),
            )
            .optional()?;
        match state.as_deref() {
            None | Some("destroyed") => return Err(StoreError::NotFound),
            Some("primary") => return Ok(()),
            _ => {}
        }
        tx.execute(
            "UPDATE kek_version SET state = 'decrypt-only', retired = ?2 WHERE kek_label = ?1 AND state = 'primary'",
            params![label, now],
        )?;
        tx.execute(
            "UPDATE kek_version SET state = 'primary', primary_since = ?3, retired = NULL WHERE kek_label = ?1 AND version = ?2",
            params![label, version, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn mark_kek_destroyed(&self, label: &str, version: u32) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE kek_version SET state = 'destroyed', retired = coalesce(retired, ?3) WHERE kek_label = ?1 AND version = ?2",
            params![label, version, now_secs()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    fn count_under(&self, label: &str, version: u32) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM dek WHERE kek_label = ?1 AND kek_version = ?2",
            params![label, version],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    fn count_not_under(&self, label: &str, version: u32) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM dek WHERE kek_label = ?1 AND kek_version != ?2",
            params![label, version],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    fn rows_not_under(
        &self,
        label: &str,
        version: u32,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, DekRow)>, StoreError> {
        // Positions are rowids, so a batch walks the table in its order, not
        // in id order: ids are random, so a batch in id order would touch a
        // page per row, where in table order it reads and rewrites a few
        // neighbouring pages. (Rowids only change under VACUUM; a row missed
        // that way is left for the next run, which `rewrap` says.)
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS}, rowid FROM dek WHERE +kek_label = ?1 AND kek_version != ?2 AND rowid > ?3 ORDER BY rowid LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![label, version, after, limit], |r| {
            Ok((r.get(10)?, row_to_dek(r)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn replace_records(&self, label: &str, updates: &[RecordUpdate]) -> Result<usize, StoreError> {
        let now = now_secs();
        let tx = self.immediate()?;
        let primary: Option<u32> = tx
            .query_row(
                "SELECT version FROM kek_version WHERE kek_label = ?1 AND state = 'primary'",
                params![label],
                |r| r.get(0),
            )
            .optional()?;
        let mut written = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE dek SET record = ?3, kek_version = ?4, updated = ?5, generation = generation + 1,
                                kek_label = ?6
                 WHERE id = ?1 AND generation = ?2",
            )?;
            for (id, generation, record, version) in updates {
                if primary != Some(*version) {
                    continue;
                }
                written += stmt.execute(params![id, generation, record, version, now, label])?;
            }
        }
        tx.commit()?;
        Ok(written)
    }

    fn take_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool, StoreError> {
        let now = now_secs();
        let tx = self.immediate()?;
        let current: Option<(String, i64)> = tx
            .query_row(
                "SELECT holder, expires FROM lease WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((h, expires)) = current {
            if h != holder && expires > now {
                return Ok(false);
            }
        }
        tx.execute(
            "INSERT INTO lease (name, holder, expires) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires",
            params![name, holder, now.saturating_add(ttl_secs)],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM lease WHERE name = ?1 AND holder = ?2",
            params![name, holder],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
