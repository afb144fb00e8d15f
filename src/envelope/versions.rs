//! KEK versions: which one is primary (refreshed from the store every
//! `refresh` interval, so a rotation reaches every process without a
//! restart), rotation under a lease, batched re-wrapping, and destroying a
//! version nothing needs any more. Data is never re-encrypted: only the
//! wrapped DEK records change.

use crate::runtime::lock::unpoisoned;
use std::time::Duration;

use super::record_set::Stored;
use super::service::{Envelope, View};
use crate::backend::kek;
use crate::error::Result;
use crate::store::KekVersionRow;

impl Envelope {
    /// The primary KEK version, from this process's view while fresh, else
    /// from the store. Registers version 1 on first use, and rotates when
    /// the policy says the primary is too old.
    pub fn primary(&self) -> Result<u32> {
        if let Some(v) = *unpoisoned(self.view.read()) {
            let age = Duration::from_millis(crate::clock::mono_ms().saturating_sub(v.loaded_ms));
            if age < self.settings.refresh {
                return Ok(v.primary);
            }
        }
        let label = self.settings.kek_label.clone();
        let row = match self.with_store(|st| Ok(st.primary_kek(&label)?))? {
            Some(row) => row,
            None => self.bootstrap()?,
        };
        let mut primary = row.version;
        if let (Some(max_age), Some(since)) = (self.settings.rotate_after, row.primary_since) {
            let age = crate::clock::unix_secs().saturating_sub(since);
            if age >= max_age.as_secs() as i64 {
                match self.rotate() {
                    Ok(v) => primary = v,
                    // Someone else is rotating, or we cannot: keep sealing
                    // under the current primary and try again later.
                    Err(e) => crate::log_warn!("rotation due by policy did not run here: {e}"),
                }
            }
        }
        {
            let mut w = unpoisoned(self.view.write());
            *w = Some(View {
                primary,
                loaded_ms: crate::clock::mono_ms(),
            });
        }
        Ok(primary)
    }

    /// Forget the view of versions (the next seal reads the store).
    pub fn refresh_now(&self) {
        {
            let mut w = unpoisoned(self.view.write());
            *w = None;
        }
    }

    /// A store with no versions yet: version 1 is the KEK made with the
    /// token (label, CKA_ID 01). Another process may register it first.
    fn bootstrap(&self) -> Result<KekVersionRow> {
        self.bootstrap_on(self.members.main())
    }

    /// Whether the configured KEK is there at all: versions of its label
    /// recorded in the store, or else (nothing recorded yet) version 1 on
    /// the HSM. The KEK is private: call it logged in as the user.
    pub fn kek_present(&self) -> Result<bool> {
        let label = self.settings.kek_label.clone();
        if !self
            .with_store(|st| Ok(st.kek_versions(&label)?))?
            .is_empty()
        {
            return Ok(true);
        }
        self.with_session(|s| kek::exists(s, &label, 1))
    }

    /// Every version of the top-level KEK, oldest first, with how many
    /// records each holds.
    pub fn versions(&self) -> Result<Vec<(KekVersionRow, u64)>> {
        self.kek_scope(None)?.versions()
    }

    /// Rotate the top-level KEK (see `KekScope::rotate`).
    pub fn rotate(&self) -> Result<u32> {
        self.kek_scope(None)?.rotate()
    }

    /// Records not under the primary version (of the set, with several
    /// HSMs of their own KEKs).
    pub fn pending_rewrap(&self) -> Result<u64> {
        self.kek_scope(None)?.pending_rewrap()
    }

    /// The KEK version a record names (for listings; for a record of
    /// several HSMs, its first wrap's).
    pub fn record_version(record: &[u8]) -> Option<u32> {
        Stored::decode(record).ok().map(|r| r.version())
    }

    /// What the cache tags a value opened from `record` with: its KEK
    /// version, or for a record of several HSMs `sets::SET_TAG`.
    pub fn cache_tag(record: &[u8]) -> u32 {
        match Stored::decode(record) {
            Ok(Stored::One(r)) => r.kek_version,
            Ok(Stored::Set(_)) => super::sets::SET_TAG,
            Err(_) => 0,
        }
    }
}
