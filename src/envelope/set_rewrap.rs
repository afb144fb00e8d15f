//! `hsm-envelope rewrap` for any-of and all-of (issue 13): every record
//! brought to the primary combination (every member's primary version,
//! one wrap per configured member). That re-wraps records under a
//! member's older version, adds the wraps a record lacks (a member added to
//! the configuration, or down when the DEK was made), leaves out the wraps
//! of members no longer configured, and turns format-1 records (made before
//! the set was configured) into records of the set.
//!
//! Per record: one open (any one wrap for any-of; every share for all-of)
//! and one wrap per member whose wrap is missing or old (all-of: every
//! share, split afresh). Resumable as the one-KEK job is: each batch
//! selects rows not under the primary set version, and each row is written
//! only if unchanged meanwhile and only under the primary.

use super::attrs::Attrs;
use super::record_set::{RecordSet, Stored};
use super::rewrap::{fan_out, RewrapBatch};
use super::service::Envelope;
use super::set_versions::SET_MODES;
use crate::audit::{Entry, Op};
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::store::DekRow;
use cryptoki_sys::CKR_OK;

use super::kek_scope::ANY_VERSION;

/// A re-wrap run of a set: the primary set version at its start.
pub struct SetRewrap<'a> {
    env: &'a Envelope,
    primary: u32,
    combination: String,
    threads: usize,
}

impl<'a> SetRewrap<'a> {
    /// Settles the primary set version first (a member may have rotated).
    pub fn new(env: &'a Envelope, threads: usize) -> Result<Self> {
        let primary = env.settle_set_primary()?;
        let label = env.set_label();
        let combination = env
            .with_store(|st| Ok(st.primary_kek(&label)?))?
            .map(|r| r.kind)
            .unwrap_or_default();
        Ok(SetRewrap {
            env,
            primary,
            combination,
            threads: threads.clamp(1, 64),
        })
    }

    pub fn primary(&self) -> u32 {
        self.primary
    }

    /// Every member's primary version, as the store writes it.
    pub fn combination(&self) -> &str {
        &self.combination
    }

    /// Up to `limit` rows after position `after` that are not under the
    /// primary set version: records of the configured mode under another
    /// combination, every record of the other mode and every format-1
    /// record of the top-level KEK, merged in position order.
    pub fn batch(&self, after: i64, limit: u32) -> Result<RewrapBatch> {
        let env = self.env;
        let set_label = env.set_label();
        let mut found = env.with_store(|st| {
            let mut rows = st.rows_not_under(&set_label, self.primary, after, limit)?;
            let mut others = vec![env.kek_label().to_string()];
            others.extend(
                SET_MODES
                    .iter()
                    .map(|m| env.set_label_for(*m))
                    .filter(|l| *l != set_label),
            );
            for label in others {
                rows.extend(st.rows_not_under(&label, ANY_VERSION, after, limit)?);
            }
            Ok(rows)
        })?;
        found.sort_by_key(|(pos, _)| *pos);
        found.truncate(limit as usize);
        let mut batch = RewrapBatch {
            scanned: found.len(),
            next: found.last().map(|(pos, _)| *pos),
            ..Default::default()
        };
        let rows: Vec<DekRow> = found.into_iter().map(|(_, r)| r).collect();
        let mut updates = Vec::with_capacity(rows.len());
        for u in fan_out(&rows, self.threads, |chunk| {
            Ok(chunk.iter().map(|row| self.rewrap_row(row)).collect())
        })? {
            match u {
                Some(u) => updates.push(u),
                None => batch.skipped += 1,
            }
        }
        let written = env.with_store(|st| Ok(st.replace_records(&set_label, &updates)?))?;
        batch.rewrapped = written;
        batch.skipped += updates.len() - written;
        if written > 0 {
            let detail = format!("set {set_label} v{}: {}", self.primary, self.combination);
            env.log(
                Entry::new(Op::Rewrap, CKR_OK)
                    .kek_version(self.primary)
                    .count(written as u64)
                    .detail(&detail),
            );
        }
        Ok(batch)
    }

    /// One row's new record under the primary combination; None (logged)
    /// when it cannot be made now.
    fn rewrap_row(&self, row: &DekRow) -> Option<([u8; 16], i64, Vec<u8>, u32)> {
        let env = self.env;
        let made = (|| -> Result<(Vec<u8>, u32)> {
            let mode = env
                .set_mode()
                .ok_or(Error::Rv(cryptoki_sys::CKR_GENERAL_ERROR))?;
            let attrs = Attrs::decode(&row.attrs)?;
            let value = env.open(&row.id, &attrs, &row.record)?;
            let old: Option<RecordSet> = match Stored::decode(&row.record)? {
                Stored::Set(set) => Some(set),
                Stored::One(_) => None,
            };
            let record = env.seal_set(mode, &row.id, &attrs, value.as_slice(), old.as_ref())?;
            let (_, version) = env.store_key(&record)?;
            Ok((record, version))
        })();
        match made {
            Ok((_, version)) if version != self.primary => {
                crate::log_warn!(
                    "re-wrap: DEK {} could not be wrapped on every member (see above); left as it was",
                    hex(&row.id)
                );
                None
            }
            Ok((record, version)) => Some((row.id, row.generation, record, version)),
            Err(e) => {
                crate::log_warn!("re-wrap: DEK {} left as it was: {e}", hex(&row.id));
                None
            }
        }
    }
}
