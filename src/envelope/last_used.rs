//! When each token DEK was last used (`dek list`'s LAST USED), written to
//! the store in batches: a first use (an HSM unwrap) only notes it here,
//! and the notes go to the store together, in one transaction, at most
//! once per `FLUSH_MS`, and when the module finalizes. So a first use costs
//! no store write of its own; a process killed meanwhile loses at most
//! `FLUSH_MS` of these notes (never a DEK, a key or a count that matters
//! for safety).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::service::Envelope;
use crate::hex::encode as hex;
use crate::runtime::lock::unpoisoned;

/// How often noted uses are written, at most.
const FLUSH_MS: u64 = 5_000;

#[derive(Default)]
pub struct LastUsed {
    noted: Mutex<HashMap<[u8; 16], i64>>,
    /// When (`clock::mono_ms`) the notes were last written.
    flushed: AtomicU64,
}

impl Envelope {
    /// Token DEK `id` was unwrapped for use at `when` (Unix seconds).
    pub(super) fn note_use(&self, id: &[u8; 16], when: i64) {
        {
            let mut noted = unpoisoned(self.last_used.noted.lock());
            let e = noted.entry(*id).or_insert(when);
            *e = (*e).max(when);
        }
        let now = crate::clock::mono_ms();
        let last = self.last_used.flushed.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= FLUSH_MS
            && self
                .last_used
                .flushed
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.flush_uses();
        }
    }

    /// Writes every noted use now (one store transaction); best effort: a
    /// failure is logged and the notes are dropped.
    pub fn flush_uses(&self) {
        let uses: Vec<([u8; 16], i64)> = unpoisoned(self.last_used.noted.lock()).drain().collect();
        if uses.is_empty() {
            return;
        }
        if let Err(e) = self.with_store(|st| Ok(st.touch_many(&uses)?)) {
            crate::log_debug!(
                "last use of {} DEK(s) (first {}) not written: {e}",
                uses.len(),
                hex(&uses[0].0)
            );
        }
    }
}
