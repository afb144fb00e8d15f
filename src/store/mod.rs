//! Wrapped-DEK persistence: one small interface ([`StoreEngine`]) shaped by
//! what the module asks of its store, and two engines behind it.
//!
//! - [`sqlite`]: an embedded SQLite file (`store_path`), the default. No
//!   server; shared by the processes of one host.
//! - [`postgresql`]: a PostgreSQL database (`store_url`), shared by the
//!   processes of many hosts.
//!
//! The module holds a [`Store`], a handle over one engine chosen by
//! [`Location`] when it is opened; call sites use the engine's methods
//! through it (`store.get(id)`) and never know which engine answers. Both
//! engines run the same test suite (`tests.rs`), so they agree on every
//! behaviour the rest of the module relies on: generation checks,
//! soft-deletion, purge protection, KEK version rows, leases and re-wrap
//! batches.
//!
//! Each engine owns its schema and migrates it forward on open, one
//! versioned path per engine; a store written by a newer build is refused
//! with [`StoreError::Schema`].
//!
//! Nothing here logs row contents, and a PostgreSQL password never appears
//! in a message ([`Location`] shows URLs without it).

#![forbid(unsafe_code)]

pub mod admin;
pub mod changes;
pub mod copy;
pub mod deletion;
pub mod gcm;
pub mod kek;
pub mod postgresql;
pub mod sqlite;

pub use admin::DekListing;
pub use changes::Changes;
pub use deletion::{DeletedRow, PurgeRefusal};
pub use kek::{KekState, KekVersionRow};

use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DekRow {
    /// 16 random bytes chosen by the caller; primary key.
    pub id: [u8; 16],
    /// CKA_LABEL (empty if none).
    pub label: Vec<u8>,
    /// CKA_ID (empty if none).
    pub ckaid: Vec<u8>,
    /// The caller's serialized attribute set.
    pub attrs: Vec<u8>,
    /// `WrappedRecord::encode()`.
    pub record: Vec<u8>,
    pub kek_label: String,
    pub kek_version: u32,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub updated: i64,
    /// Bumped by every [`StoreEngine::update`]; for change detection and
    /// optimistic concurrency.
    pub generation: i64,
}

/// An indexed search of live DEK rows: every field given must be equal
/// (`None`: any value). Both engines answer it from an index (the primary
/// key for `id`, `dek_label` and `dek_ckaid` otherwise).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DekQuery {
    /// The row id (CKA_UNIQUE_ID is its hex).
    pub id: Option<[u8; 16]>,
    /// CKA_LABEL (empty: the rows without one).
    pub label: Option<Vec<u8>>,
    /// CKA_ID (empty: the rows without one).
    pub ckaid: Option<Vec<u8>>,
}

impl DekQuery {
    /// Whether it asks for anything (an empty query would be every row:
    /// use [`StoreEngine::list`] for that).
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.label.is_none() && self.ckaid.is_none()
    }

    /// Whether `row` answers it.
    pub fn matches(&self, row: &DekRow) -> bool {
        self.id.is_none_or(|id| id == row.id)
            && self.label.as_ref().is_none_or(|l| *l == row.label)
            && self.ckaid.as_ref().is_none_or(|c| *c == row.ckaid)
    }
}

/// One record update of a re-wrap batch: id, the generation it was read
/// at, the new record and the KEK version it is now under.
pub type RecordUpdate = ([u8; 16], i64, Vec<u8>, u32);

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open DEK store {location}: {source}")]
    Open {
        /// Where the store is ([`Location`]'s text: never a password).
        location: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("DEK store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("DEK store (PostgreSQL): {0}")]
    Postgres(#[from] ::postgres::Error),
    /// A stored value this build cannot read (a wrong length or range).
    #[error("DEK store: {0}")]
    Data(String),
    #[error("DEK store {location} has schema version {found}, this build supports {supported}")]
    Schema {
        location: String,
        found: i64,
        supported: i64,
    },
    #[error("DEK record already exists")]
    Duplicate,
    #[error("DEK record not found")]
    NotFound,
}

/// What the module asks of its store. Every method is one atomic step: a
/// method that reads and then writes does both in one transaction, so
/// several processes (and, on PostgreSQL, several hosts) may call them at
/// once. Times are the caller's clock (Unix seconds), never the server's,
/// so that every engine and the tests agree on them.
///
/// Rows soft-deleted by [`StoreEngine::soft_delete`] are not *live*: `get`,
/// `list`, `list_ids_generations` and the admin listing skip them, but they
/// are still records (they count in `count_under` and `record_counts`, and
/// their KEK version must be kept) until [`StoreEngine::purge`].
///
/// Whole-row export and import, for copying a store into another, are in
/// the supertrait [`copy::StoreCopy`].
pub trait StoreEngine: Send + copy::StoreCopy {
    /// The engine's name as `status` shows it: `sqlite` or `postgresql`.
    fn engine_name(&self) -> &'static str;

    // --- DEK rows -------------------------------------------------------

    /// Inserts a new row as given (the caller sets `created`, `updated` and
    /// the initial `generation`). `Duplicate` if the id exists.
    fn insert(&self, row: &DekRow) -> Result<(), StoreError>;

    /// Inserts several new rows in one transaction (all or none), as
    /// [`StoreEngine::insert`] does one. `Duplicate` if any id exists.
    fn insert_many(&self, rows: &[DekRow]) -> Result<(), StoreError>;

    /// A live (not deleted) row.
    fn get(&self, id: &[u8; 16]) -> Result<Option<DekRow>, StoreError>;

    /// All live rows, ordered by `created`, then `id`.
    fn list(&self) -> Result<Vec<DekRow>, StoreError>;

    /// The live rows that answer `query`, ordered by id, from an index: the
    /// time it takes grows with the rows found, not the rows stored. An
    /// empty query finds nothing.
    fn find(&self, query: &DekQuery) -> Result<Vec<DekRow>, StoreError>;

    /// `(id, generation)` of every live row, ordered by id: a cheap scan
    /// that tells another process's inserts, updates and deletes apart from
    /// "no change" without reading records.
    fn list_ids_generations(&self) -> Result<Vec<([u8; 16], i64)>, StoreError>;

    /// Atomically replaces label, CKA_ID, attrs, record and KEK reference of
    /// an existing row (live or deleted), sets `updated` to now and bumps
    /// `generation`.
    ///
    /// `NotFound` if the row is absent. If `expect_generation` is `Some` and
    /// differs from the stored generation, nothing is written and the result
    /// is `Ok(false)` (optimistic concurrency: someone else changed the row
    /// first; re-read and retry). `Ok(true)` when written.
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
    ) -> Result<bool, StoreError>;

    /// Deletes a row for good, live or not. `Ok(false)` if it did not exist.
    fn delete(&self, id: &[u8; 16]) -> Result<bool, StoreError>;

    /// Records a use. Never moves `last_used` backwards (processes' clocks
    /// and call order may disagree), and does not bump `generation` (a use is
    /// not a change other processes need to reload for). Each call is a
    /// durable write, so callers should rate-limit it. `NotFound` if absent.
    fn touch_last_used(&self, id: &[u8; 16], when: i64) -> Result<(), StoreError>;

    /// [`StoreEngine::touch_last_used`] for several rows in one transaction
    /// (one durable write); rows that no longer exist are skipped.
    fn touch_many(&self, uses: &[([u8; 16], i64)]) -> Result<(), StoreError>;

    // --- Recoverable deletion (see `deletion`) ---------------------------

    /// Marks a live row deleted, purgeable from `purge_after` on. `Ok(false)`
    /// if there is no such live row.
    fn soft_delete(&self, id: &[u8; 16], purge_after: i64) -> Result<bool, StoreError>;

    /// Brings a deleted row back, attributes and record unchanged.
    fn recover(&self, id: &[u8; 16]) -> Result<bool, StoreError>;

    /// The deleted rows, ordered by `deleted_at`, then `id`.
    fn list_deleted(&self) -> Result<Vec<DeletedRow>, StoreError>;

    /// Removes a deleted row for good, if its retention has passed at `now`
    /// or purge protection is off; each engine makes the record as
    /// unrecoverable as it can (SQLite: overwritten in the file and the WAL).
    fn purge(&self, id: &[u8; 16], now: i64) -> Result<Result<(), PurgeRefusal>, StoreError>;

    /// Whether purge protection is on for this store.
    fn purge_protection(&self) -> Result<bool, StoreError>;

    /// Switches purge protection on, for good.
    fn enable_purge_protection(&self) -> Result<(), StoreError>;

    // --- KEK versions and leases (see `kek`) ----------------------------

    /// Every version of the KEK `label`, oldest first.
    fn kek_versions(&self, label: &str) -> Result<Vec<KekVersionRow>, StoreError>;

    /// The primary version of `label`, if any.
    fn primary_kek(&self, label: &str) -> Result<Option<KekVersionRow>, StoreError>;

    /// Records a new version. With `make_primary`, it becomes the primary
    /// and the old primary turns decrypt-only, in one transaction.
    /// `Duplicate` if the version exists.
    fn add_kek_version(
        &self,
        label: &str,
        version: u32,
        kind: &str,
        make_primary: bool,
    ) -> Result<(), StoreError>;

    /// Makes an existing, not destroyed version the primary (`NotFound`
    /// otherwise).
    fn set_primary_kek(&self, label: &str, version: u32) -> Result<(), StoreError>;

    /// Marks a version destroyed (`NotFound` if there is no such version).
    fn mark_kek_destroyed(&self, label: &str, version: u32) -> Result<(), StoreError>;

    /// How many records (soft-deleted ones included) are wrapped under this
    /// version.
    fn count_under(&self, label: &str, version: u32) -> Result<u64, StoreError>;

    /// How many records of `label` are not under `version`.
    fn count_not_under(&self, label: &str, version: u32) -> Result<u64, StoreError>;

    /// Up to `limit` rows of `label` not under `version`, after position
    /// `after` (0 to start), in position order, each with its position: the
    /// batches of a resumable re-wrap. A position is the engine's own
    /// (SQLite: the rowid; PostgreSQL: an insertion sequence) and only
    /// grows.
    fn rows_not_under(
        &self,
        label: &str,
        version: u32,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, DekRow)>, StoreError>;

    /// Replaces the records of several rows in one transaction, putting
    /// them under KEK `label` (a record of one KEK may become a record of
    /// several HSMs, under their set's label: see `envelope::set_versions`); each only if its generation is still the one read (else
    /// someone changed it meanwhile) and if the version it now names is
    /// still the primary one (else a rotation happened meanwhile, and the
    /// version may be on its way to being destroyed). Returns how many were
    /// written.
    fn replace_records(&self, label: &str, updates: &[RecordUpdate]) -> Result<usize, StoreError>;

    /// Takes the lease `name` for `ttl_secs`, if it is free or expired (or
    /// already ours). Returns whether we hold it.
    fn take_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool, StoreError>;

    /// Gives the lease back, if `holder` holds it.
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    // --- GCM invocations (see `gcm`) -------------------------------------

    /// Reserves up to `n` GCM invocation numbers of the key material
    /// `print`, never past `limit`, in one transaction (its row made on
    /// first use): the numbers granted follow every number reserved before,
    /// by any process. Also records `print` on the DEK row `dek`, if there
    /// is one, for listings. `granted` 0: the limit is reached.
    fn reserve_gcm(
        &self,
        print: &gcm::Print,
        dek: Option<&[u8; 16]>,
        n: u64,
        limit: u64,
        now: i64,
    ) -> Result<gcm::Reservation, StoreError>;

    /// Gives back `from..to`, the unused end of a reservation, if nothing
    /// was reserved after it (the count is still `to`): the count goes back
    /// to `from`. Returns whether it did.
    fn return_gcm(
        &self,
        print: &gcm::Print,
        from: u64,
        to: u64,
        now: i64,
    ) -> Result<bool, StoreError>;

    // --- Listings for the admin tool (see `admin`) ----------------------

    /// Every live DEK for a listing, ordered by `created`, then `id`
    /// (no records, no attributes).
    fn list_for_admin(&self) -> Result<Vec<DekListing>, StoreError>;

    /// How many records each (KEK label, KEK version) holds, soft-deleted
    /// ones included, ordered by label and version.
    fn record_counts(&self) -> Result<Vec<(String, u32, u64)>, StoreError>;

    /// How many rows are soft-deleted (still recoverable, still records).
    fn deleted_count(&self) -> Result<u64, StoreError>;

    /// Up to `limit` live rows with ids after `after` (from the first when
    /// `None`), ordered by id: a search that names no indexed attribute
    /// walks the store a page at a time instead of holding every row.
    fn list_page(&self, after: Option<&[u8; 16]>, limit: u32) -> Result<Vec<DekRow>, StoreError>;

    // --- The change feed (see `changes`) ---------------------------------

    /// The position of the last change committed (0 before any).
    fn change_position(&self) -> Result<i64, StoreError>;

    /// Up to `limit` changes after position `after`, or a gap when the feed
    /// does not reach back that far or is behind `after`.
    fn changes_since(&self, after: i64, limit: u32) -> Result<Changes, StoreError>;

    /// Forgets the changes up to position `through` (a reader still behind
    /// it is told [`Changes::Gap`]).
    fn prune_changes(&self, through: i64) -> Result<(), StoreError>;

    /// Calls `wake` soon after any process commits a change, from a thread
    /// of its own with its own connection, until the listener is dropped:
    /// PostgreSQL's `LISTEN`/`NOTIFY`. `None` for an engine without such a
    /// thing (SQLite: readers ask every so often).
    fn listen(&self, wake: Box<dyn Fn() + Send>) -> Option<changes::Listener> {
        let _ = wake;
        None
    }
}

/// Where the store is: a SQLite file or a PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(postgresql::Url),
}

impl Location {
    /// The configured store: `store_url` when set (a PostgreSQL connection
    /// string), else the SQLite file `store_path`.
    pub fn from_config(store_path: &Path, store_url: Option<&postgresql::Url>) -> Location {
        match store_url {
            Some(url) => Location::Postgres(url.clone()),
            None => Location::Sqlite(store_path.to_path_buf()),
        }
    }

    /// `sqlite` or `postgresql`.
    pub fn engine_name(&self) -> &'static str {
        match self {
            Location::Sqlite(_) => sqlite::ENGINE,
            Location::Postgres(_) => postgresql::ENGINE,
        }
    }
}

/// The file path, or the URL without its password.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(u) => write!(f, "{u}"),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({self})", self.engine_name())
    }
}

/// An open store: a handle over the engine that [`Location`] chose. Its
/// methods are [`StoreEngine`]'s (through `Deref`).
///
/// `Send` but not `Sync`: share it behind a `Mutex`, or open one per thread
/// (several `Store`s on one store, in one or many processes, are fine).
///
/// Do not carry a `Store` across `fork()`: neither a SQLite connection nor a
/// PostgreSQL session may be used by two processes. A child must open its
/// own `Store`, and should `std::mem::forget` (not drop) any it inherited,
/// so that closing it does not disturb the parent's locks, WAL or session.
pub struct Store {
    engine: Box<dyn StoreEngine>,
    location: Location,
}

impl Store {
    /// Opens the SQLite store at `path` (see [`sqlite::SqliteStore::open`]).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_at(&Location::Sqlite(path.to_path_buf()))
    }

    /// Opens the store at `location` with its engine, creating or migrating
    /// the schema on first use.
    pub fn open_at(location: &Location) -> Result<Store, StoreError> {
        let engine: Box<dyn StoreEngine> = match location {
            Location::Sqlite(path) => Box::new(sqlite::SqliteStore::open(path)?),
            Location::Postgres(url) => Box::new(postgresql::PostgresStore::open(url)?),
        };
        Ok(Store {
            engine,
            location: location.clone(),
        })
    }

    /// Where this store is (its `Display` never shows a password).
    pub fn location(&self) -> &Location {
        &self.location
    }
}

impl Deref for Store {
    type Target = dyn StoreEngine;
    fn deref(&self) -> &Self::Target {
        self.engine.as_ref()
    }
}

#[cfg(test)]
mod tests;
