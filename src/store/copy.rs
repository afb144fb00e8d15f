//! Copying one store into another, row for row (`hsm-envelope store
//! migrate`): SQLite into PostgreSQL, or any engine into any other.
//!
//! Records stay wrapped: a row is copied as bytes, never opened. What the
//! module relies on comes across whole: every DEK row, live and
//! soft-deleted, with `last_used`, `generation`, `gcm_print`, `deleted_at`
//! and `purge_after` ([`FullRow`]); every KEK version row with its state
//! and times; the GCM invocation counts ([`GcmUsage`]), which are raised in
//! the target and never lowered, so the invocation limit and counter IVs
//! carry on where they were; and purge protection. Leases are not copied
//! (they expire within minutes and are taken again), nor the store's
//! creation time or schema version (the target keeps its own). The re-wrap
//! position is not in the store: a re-wrap selects the records not under
//! the primary version, wherever it stopped.
//!
//! [`Copier`] moves rows in id order, a batch per transaction, so memory
//! stays bounded whatever the store holds, and a target left by a stopped
//! copy holds exactly the source's first rows: [`Copier::resume_point`]
//! checks that before carrying on. [`Copier::verify`] compares both stores
//! row by row at the end.

use std::collections::VecDeque;

use super::{gcm, DekRow, KekVersionRow, StoreEngine, StoreError};
use crate::hex::encode as hex;

/// A DEK row with everything the store keeps about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullRow {
    pub row: DekRow,
    /// Unix seconds; None if no use was recorded.
    pub last_used: Option<i64>,
    /// Set on a soft-deleted row (Unix seconds), with `purge_after`.
    pub deleted_at: Option<i64>,
    pub purge_after: Option<i64>,
    /// The key material's print, once it reserved GCM invocations.
    pub gcm_print: Option<gcm::Print>,
}

/// One key material's GCM invocation count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcmUsage {
    pub print: gcm::Print,
    pub reserved: u64,
    /// Unix seconds.
    pub updated: i64,
}

/// Whole rows out of a store and into another. Every engine implements it
/// (a supertrait of [`StoreEngine`]); each import is one transaction.
pub trait StoreCopy {
    /// Up to `limit` DEK rows, live and soft-deleted, with ids after
    /// `after` (None: from the first), in id order (bytewise, the same on
    /// every engine).
    fn export_rows(&self, after: Option<&[u8; 16]>, limit: u32)
        -> Result<Vec<FullRow>, StoreError>;

    /// Inserts whole rows as given (all or none). `Duplicate` if an id
    /// exists.
    fn import_rows(&self, rows: &[FullRow]) -> Result<(), StoreError>;

    /// Every KEK version row, of every KEK label, by label and version.
    fn export_kek_versions(&self) -> Result<Vec<KekVersionRow>, StoreError>;

    /// Inserts KEK version rows as given, states and times included (all
    /// or none). `Duplicate` if a version exists.
    fn import_kek_versions(&self, rows: &[KekVersionRow]) -> Result<(), StoreError>;

    /// Up to `limit` GCM counts with prints after `after`, in print order.
    fn export_gcm_usage(
        &self,
        after: Option<&gcm::Print>,
        limit: u32,
    ) -> Result<Vec<GcmUsage>, StoreError>;

    /// Raises each count to the one given, making it if missing; a count
    /// already higher stays (a count going down would let the invocation
    /// limit be passed and counter IVs repeat). All or none.
    fn import_gcm_usage(&self, rows: &[GcmUsage]) -> Result<(), StoreError>;
}

/// Every KEK version row, by label (bytewise) and version.
fn versions(store: &dyn StoreEngine) -> Result<Vec<KekVersionRow>, StoreError> {
    let mut v = store.export_kek_versions()?;
    v.sort_by(|a, b| (a.kek_label.as_bytes(), a.version).cmp(&(b.kek_label.as_bytes(), b.version)));
    Ok(v)
}

/// Why a copy did not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target holds something the source does not, or holds it
    /// differently: it is not a copy to carry on.
    #[error("{0}")]
    Mismatch(String),
}

/// What one side of a comparison holds, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Rows per (KEK label, KEK version), soft-deleted ones included.
    pub per_version: Vec<(String, u32, u64)>,
    pub deleted: u64,
    pub kek_versions: usize,
    pub purge_protection: bool,
}

impl Tally {
    pub fn of(store: &dyn StoreEngine) -> Result<Tally, StoreError> {
        let mut per_version = store.record_counts()?;
        // In byte order on every engine (PostgreSQL sorts text by its
        // collation).
        per_version.sort_by(|a, b| (a.0.as_bytes(), a.1).cmp(&(b.0.as_bytes(), b.1)));
        Ok(Tally {
            per_version,
            deleted: store.deleted_count()?,
            kek_versions: store.export_kek_versions()?.len(),
            purge_protection: store.purge_protection()?,
        })
    }

    pub fn rows(&self) -> u64 {
        self.per_version.iter().map(|(_, _, n)| n).sum()
    }
}

/// What [`Copier::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    pub source: Tally,
    pub target: Tally,
    /// Row pairs compared (present on both sides), and how many of them
    /// are equal in every column.
    pub rows_compared: u64,
    pub rows_equal: u64,
    /// Rows missing, extra or different in the target.
    pub row_differences: u64,
    /// GCM counts in the source, and how many of them the target holds
    /// equal or higher.
    pub gcm_keys: u64,
    pub gcm_kept: u64,
    /// Invocations counted in the source, over every key material.
    pub gcm_invocations: u64,
    pub kek_versions_equal: bool,
    /// The first few differences, by id or print (never contents).
    pub examples: Vec<String>,
}

impl Verified {
    /// Whether the target holds everything the source does, the same.
    pub fn ok(&self) -> bool {
        self.row_differences == 0
            && self.gcm_kept == self.gcm_keys
            && self.kek_versions_equal
            && self.source.per_version == self.target.per_version
            && self.source.deleted == self.target.deleted
            && (!self.source.purge_protection || self.target.purge_protection)
    }
}

/// How many differences [`Verified::examples`] names.
const EXAMPLES: usize = 5;

/// Reads up to `n` rows after a key (None: from the first).
type Fetch<'a, T> = Box<dyn FnMut(Option<&[u8; 16]>, u32) -> Result<Vec<T>, StoreError> + 'a>;

/// Rows of a store in key order (DEK ids, or GCM prints: 16 bytes
/// either way), read a batch at a time.
struct Cursor<'a, T> {
    fetch: Fetch<'a, T>,
    key: fn(&T) -> [u8; 16],
    batch: u32,
    buf: VecDeque<T>,
    after: Option<[u8; 16]>,
    done: bool,
}

impl<'a, T> Cursor<'a, T> {
    fn peek(&mut self) -> Result<Option<[u8; 16]>, StoreError> {
        if self.buf.is_empty() && !self.done {
            let rows = (self.fetch)(self.after.as_ref(), self.batch)?;
            self.done = rows.len() < self.batch as usize;
            self.after = rows.last().map(self.key);
            self.buf.extend(rows);
        }
        Ok(self.buf.front().map(self.key))
    }

    fn next(&mut self) -> Result<Option<T>, StoreError> {
        self.peek()?;
        Ok(self.buf.pop_front())
    }
}

fn row_cursor<'a>(store: &'a dyn StoreEngine, batch: u32) -> Cursor<'a, FullRow> {
    Cursor {
        fetch: Box::new(move |after, n| store.export_rows(after, n)),
        key: |r| r.row.id,
        batch: batch.max(1),
        buf: VecDeque::new(),
        after: None,
        done: false,
    }
}

fn gcm_cursor<'a>(store: &'a dyn StoreEngine, batch: u32) -> Cursor<'a, GcmUsage> {
    Cursor {
        fetch: Box::new(move |after, n| store.export_gcm_usage(after, n)),
        key: |r| r.print,
        batch: batch.max(1),
        buf: VecDeque::new(),
        after: None,
        done: false,
    }
}

/// The first field in which two rows of the same id differ.
fn first_difference(a: &FullRow, b: &FullRow) -> &'static str {
    let (x, y) = (&a.row, &b.row);
    [
        (x.label != y.label, "label"),
        (x.ckaid != y.ckaid, "CKA_ID"),
        (x.attrs != y.attrs, "attributes"),
        (x.record != y.record, "record"),
        (x.kek_label != y.kek_label, "KEK label"),
        (x.kek_version != y.kek_version, "KEK version"),
        (x.created != y.created, "created"),
        (x.updated != y.updated, "updated"),
        (x.generation != y.generation, "generation"),
        (a.last_used != b.last_used, "last_used"),
        (a.deleted_at != b.deleted_at, "deleted_at"),
        (a.purge_after != b.purge_after, "purge_after"),
        (a.gcm_print != b.gcm_print, "gcm_print"),
    ]
    .into_iter()
    .find_map(|(differs, name)| differs.then_some(name))
    .unwrap_or("nothing")
}

/// Rows compared by [`Copier::walk`].
#[derive(Default)]
struct Walk {
    compared: u64,
    equal: u64,
    differences: u64,
    examples: Vec<String>,
    /// The last target row seen.
    last_target: Option<[u8; 16]>,
}

impl Walk {
    fn differs(&mut self, what: String) {
        self.differences += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(what);
        }
    }
}

/// A copy from one store into another, `batch` rows per transaction.
pub struct Copier<'a> {
    pub from: &'a dyn StoreEngine,
    pub to: &'a dyn StoreEngine,
    pub batch: u32,
}

impl Copier<'_> {
    /// The KEK version rows, in one transaction; none if the target already
    /// holds exactly the source's (a resumed copy). Returns how many.
    pub fn kek_versions(&self) -> Result<usize, CopyError> {
        let source = versions(self.from)?;
        let target = versions(self.to)?;
        if target.is_empty() {
            self.to.import_kek_versions(&source)?;
        } else if target != source {
            return Err(CopyError::Mismatch(format!(
                "the target's {} KEK version row(s) are not the source's {}",
                target.len(),
                source.len()
            )));
        }
        Ok(source.len())
    }

    /// Copies the rows with ids after `after` (None: all), a batch per
    /// transaction; `progress` gets the count so far after each batch.
    /// Returns how many were copied.
    pub fn rows(
        &self,
        after: Option<[u8; 16]>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        let batch = self.batch.max(1);
        let mut after = after;
        let mut copied = 0u64;
        loop {
            let rows = self.from.export_rows(after.as_ref(), batch)?;
            let Some(last) = rows.last() else { break };
            after = Some(last.row.id);
            self.to.import_rows(&rows)?;
            copied += rows.len() as u64;
            progress(copied);
            if rows.len() < batch as usize {
                break;
            }
        }
        Ok(copied)
    }

    /// Copies the GCM counts (raising, never lowering); returns how many
    /// key materials.
    pub fn gcm_usage(&self) -> Result<u64, StoreError> {
        let mut after = None;
        let mut n = 0u64;
        loop {
            let rows = self
                .from
                .export_gcm_usage(after.as_ref(), self.batch.max(1))?;
            let Some(last) = rows.last() else { break };
            after = Some(last.print);
            self.to.import_gcm_usage(&rows)?;
            n += rows.len() as u64;
            if rows.len() < self.batch.max(1) as usize {
                break;
            }
        }
        Ok(n)
    }

    /// Switches purge protection on in the target if it is on in the
    /// source (it never goes off). Returns the source's setting.
    pub fn purge_protection(&self) -> Result<bool, StoreError> {
        let on = self.from.purge_protection()?;
        if on && !self.to.purge_protection()? {
            self.to.enable_purge_protection()?;
        }
        Ok(on)
    }

    /// Where a stopped copy carries on: after the target's last row, if
    /// the target's rows are exactly the source's first rows (same ids, the
    /// same in every column); None for an empty target. A target with
    /// anything else is refused, before anything is written.
    pub fn resume_point(&self) -> Result<Option<[u8; 16]>, CopyError> {
        let walk = self.walk(true, &mut |_, _| {})?;
        if walk.differences > 0 {
            return Err(CopyError::Mismatch(format!(
                "the target's rows are not the start of the source's ({} difference(s): {})",
                walk.differences,
                walk.examples.join("; ")
            )));
        }
        Ok(walk.last_target)
    }

    /// Compares both stores: every row (id order, whole), the counts per
    /// KEK version, the deleted count, the KEK version rows, the GCM counts
    /// (the target's equal or higher) and purge protection. `pair` sees
    /// each (source, target) pair of equal ids, for sampling.
    pub fn verify(&self, pair: &mut dyn FnMut(&FullRow, &FullRow)) -> Result<Verified, StoreError> {
        let walk = self.walk(false, pair)?;
        let mut v = Verified {
            source: Tally::of(self.from)?,
            target: Tally::of(self.to)?,
            rows_compared: walk.compared,
            rows_equal: walk.equal,
            row_differences: walk.differences,
            examples: walk.examples,
            kek_versions_equal: versions(self.from)? == versions(self.to)?,
            ..Verified::default()
        };
        self.compare_gcm(&mut v)?;
        Ok(v)
    }

    /// Walks both stores' rows in id order side by side. With
    /// `target_prefix`, stops where the target's rows end (the source's
    /// later rows are still to be copied).
    fn walk(
        &self,
        target_prefix: bool,
        pair: &mut dyn FnMut(&FullRow, &FullRow),
    ) -> Result<Walk, StoreError> {
        let mut source = row_cursor(self.from, self.batch);
        let mut target = row_cursor(self.to, self.batch);
        let mut w = Walk::default();
        loop {
            let s = source.peek()?;
            let t = target.peek()?;
            match (s, t) {
                (None, None) => break,
                (Some(_), None) if target_prefix => break,
                (Some(s), t) if t.is_none_or(|t| s < t) => {
                    w.differs(format!("{} only in the source", hex(&s)));
                    source.next()?;
                }
                (_, Some(t)) if s.is_none_or(|s| t < s) => {
                    w.differs(format!("{} only in the target", hex(&t)));
                    w.last_target = Some(t);
                    target.next()?;
                }
                _ => {
                    if let (Some(a), Some(b)) = (source.next()?, target.next()?) {
                        w.compared += 1;
                        w.last_target = Some(b.row.id);
                        if a == b {
                            w.equal += 1;
                        } else {
                            let field = first_difference(&a, &b);
                            w.differs(format!("{} differs ({field})", hex(&a.row.id)));
                        }
                        pair(&a, &b);
                    }
                }
            }
        }
        Ok(w)
    }

    /// Every source GCM count must be in the target, equal or higher
    /// (prints only in the target, made there, are fine).
    fn compare_gcm(&self, v: &mut Verified) -> Result<(), StoreError> {
        let mut source = gcm_cursor(self.from, self.batch);
        let mut target = gcm_cursor(self.to, self.batch);
        while let Some(s) = source.peek()? {
            match target.peek()? {
                Some(t) if t < s => {
                    target.next()?;
                    continue;
                }
                Some(t) if t == s => {
                    if let (Some(mine), Some(theirs)) = (source.next()?, target.next()?) {
                        v.count_gcm(&mine);
                        if theirs.reserved >= mine.reserved {
                            v.gcm_kept += 1;
                        } else {
                            v.add_example(format!(
                                "GCM count of key {} is {} in the target, {} in the source",
                                hex(&s),
                                theirs.reserved,
                                mine.reserved
                            ));
                        }
                    }
                }
                _ => {
                    if let Some(mine) = source.next()? {
                        v.count_gcm(&mine);
                        v.add_example(format!(
                            "GCM count of key {} missing in the target",
                            hex(&s)
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Verified {
    fn add_example(&mut self, what: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(what);
        }
    }

    fn count_gcm(&mut self, row: &GcmUsage) {
        self.gcm_keys += 1;
        self.gcm_invocations = self.gcm_invocations.saturating_add(row.reserved);
    }
}
