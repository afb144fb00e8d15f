//! KEK versions of an any-of or all-of set (issue 13). Each member has KEKs
//! of its own and rotates on its own: its versions are kept in the store
//! under `Member::store_label`. A record names one version per member; the
//! store indexes records by a *set version*, a row under the set label
//! `<kek_label>#<mode>` of the record's own mode (so a record made in one
//! mode is never counted as one of another after the configuration
//! changes) whose kind is the combination ("main:3,dr:1"). The
//! primary set version is the combination of every member's primary:
//! records under any other (an older version somewhere, or made while a
//! member was down and so lacking its wrap) are what `rewrap` rewrites. So
//! the store's per-row (label, version) columns, their indexes and every
//! query on them (counts, pending re-wraps, resumable batches, the check
//! before a version is destroyed) stay as they are.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cryptoki_sys::*;

use super::members::Member;
use super::record_set::{RecordSet, SetMode, Stored};
use super::service::Envelope;
use crate::backend::kek;
use crate::error::{Error, Result};
use crate::runtime::lock::unpoisoned;
use crate::store::{KekState, KekVersionRow, StoreError};
use crate::vendor::CKR_HSME_KEK_UNAVAILABLE;

/// This process's view of the set's versions.
#[derive(Default)]
pub struct SetVersions {
    /// Each member's primary (None: not known, its HSM unreachable and
    /// nothing recorded yet), in member order, and when it was read.
    view: Mutex<Option<(Vec<Option<u32>>, u64)>>,
    /// (mode, combination) -> set version, as registered.
    numbers: Mutex<HashMap<(SetMode, String), u32>>,
}

/// The combination `pairs` (member name, KEK version) make, as stored.
pub fn combination<'a>(pairs: impl IntoIterator<Item = (&'a str, u32)>) -> String {
    pairs
        .into_iter()
        .map(|(name, v)| format!("{name}:{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The (member name, KEK version) pairs of a stored combination; pairs
/// that do not parse are left out.
pub fn parse_combination(kind: &str) -> Vec<(String, u32)> {
    kind.split(',')
        .filter_map(|p| {
            let (name, v) = p.rsplit_once(':')?;
            Some((name.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The combination of a record's wraps.
pub fn combination_of(set: &RecordSet) -> String {
    combination(
        set.wraps
            .iter()
            .map(|w| (w.hsm.as_str(), w.rec.kek_version)),
    )
}

/// Both set modes, for what must look at the records of either.
pub const SET_MODES: [SetMode; 2] = [SetMode::AnyOf, SetMode::AllOf];

impl Envelope {
    /// The label the store keeps the versions of `mode`'s records under.
    pub fn set_label_for(&self, mode: SetMode) -> String {
        format!("{}#{}", self.settings.kek_label, mode.name())
    }

    /// The set label of the configured mode (any-of or all-of; for other
    /// modes, any-of's).
    pub fn set_label(&self) -> String {
        self.set_label_for(self.set_mode().unwrap_or(SetMode::AnyOf))
    }

    /// Each member's primary KEK version, in member order; read from the
    /// store at most every `refresh_secs`. A member whose versions are not
    /// recorded yet registers version 1 (its KEK with CKA_ID 01) when its
    /// HSM answers, else is None.
    pub(super) fn member_primaries(&self) -> Vec<Option<u32>> {
        let now = crate::clock::mono_ms();
        if let Some((p, at)) = &*unpoisoned(self.set_versions.view.lock()) {
            if Duration::from_millis(now.saturating_sub(*at)) < self.settings.refresh {
                let mut p = p.clone();
                // Main's own view is fresh for `refresh` already: not kept
                // twice as long here.
                if let Some(first) = p.first_mut() {
                    *first = self.primary().ok();
                }
                return p;
            }
        }
        let primaries: Vec<Option<u32>> = self
            .members
            .all()
            .iter()
            .map(|m| match self.primary_on(m) {
                Ok(v) => Some(v),
                Err(e) => {
                    crate::log_warn!(
                        "HSM member '{}': primary KEK version not known ({e})",
                        m.name
                    );
                    None
                }
            })
            .collect();
        *unpoisoned(self.set_versions.view.lock()) = Some((primaries.clone(), now));
        primaries
    }

    /// Forget the view of the members' versions.
    pub(super) fn refresh_set_view(&self) {
        *unpoisoned(self.set_versions.view.lock()) = None;
    }

    /// Member `m`'s primary KEK version, from the store (registering
    /// version 1 on first use).
    pub fn primary_on(&self, m: &Member) -> Result<u32> {
        if std::ptr::eq(m, self.members.main().as_ref()) {
            return self.primary();
        }
        let label = m.store_label.clone();
        match self.with_store(|st| Ok(st.primary_kek(&label)?))? {
            Some(row) => Ok(row.version),
            None => Ok(self.bootstrap_on(m)?.version),
        }
    }

    /// No versions recorded for member `m` yet: version 1 is its KEK with
    /// CKA_ID 01. Another process may register it first.
    pub(super) fn bootstrap_on(&self, m: &Member) -> Result<KekVersionRow> {
        let label = m.store_label.clone();
        let ty = self.with_session_on(m, |s| {
            let key = m.kek_handle(s, 1)?;
            kek::kek_type(s, key)
        })?;
        super::kek_scope::ignore_duplicate(
            self.with_store(|st| Ok(st.add_kek_version(&label, 1, &ty.name(), true)?)),
        )?;
        self.with_store(|st| Ok(st.primary_kek(&label)?))?
            .ok_or(Error::Rv(CKR_HSME_KEK_UNAVAILABLE))
    }

    /// The combination of every member's primary as the store says now,
    /// or None while one is not known.
    fn primaries_now(&self) -> Option<String> {
        self.refresh_now();
        self.refresh_set_view();
        let primaries = self.member_primaries();
        let pairs: Option<Vec<(&str, u32)>> = self
            .members
            .all()
            .iter()
            .zip(primaries)
            .map(|(m, v)| v.map(|v| (m.name.as_str(), v)))
            .collect();
        pairs.map(combination)
    }

    /// The set version of `combo` in records of `mode`, registered on first
    /// use (primary when `mode` is the configured one and `combo` every
    /// member's primary as the store says now).
    pub(super) fn set_version_for(&self, mode: SetMode, combo: &str) -> Result<u32> {
        let key = (mode, combo.to_string());
        if let Some(v) = unpoisoned(self.set_versions.numbers.lock()).get(&key) {
            return Ok(*v);
        }
        let label = self.set_label_for(mode);
        let primary =
            self.set_mode() == Some(mode) && self.primaries_now().as_deref() == Some(combo);
        // Two processes may register at once: a duplicate number is read
        // again, a few times at most.
        for _ in 0..8 {
            let rows = self.with_store(|st| Ok(st.kek_versions(&label)?))?;
            if let Some(r) = rows
                .iter()
                .find(|r| r.kind == combo && r.state != KekState::Destroyed)
            {
                if primary && r.state != KekState::Primary {
                    self.with_store(|st| Ok(st.set_primary_kek(&label, r.version)?))?;
                }
                unpoisoned(self.set_versions.numbers.lock()).insert(key, r.version);
                return Ok(r.version);
            }
            let next = rows.iter().map(|r| r.version).max().unwrap_or(0) + 1;
            match self.with_store(|st| Ok(st.add_kek_version(&label, next, combo, primary)?)) {
                Ok(()) => {
                    crate::log_info!("KEK set '{label}' v{next} is {combo} (primary: {primary})");
                    unpoisoned(self.set_versions.numbers.lock()).insert(key, next);
                    return Ok(next);
                }
                Err(Error::Store(e)) if matches!(*e, StoreError::Duplicate) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Rv(CKR_FUNCTION_FAILED))
    }

    /// The set version every member's primary makes now, made the primary
    /// set version (after a member rotated, or went back to an older
    /// version). `rewrap` starts here.
    pub fn settle_set_primary(&self) -> Result<u32> {
        let mode = self
            .set_mode()
            .ok_or_else(|| Error::admin("kek_mode is not any-of or all-of"))?;
        let combo = self.primaries_now().ok_or_else(|| {
            Error::admin(
                "a member's primary KEK version is not known (its HSM is unreachable and nothing \
                 is recorded for it yet)",
            )
        })?;
        let label = self.set_label_for(mode);
        let v = self.set_version_for(mode, &combo)?;
        let current = self.with_store(|st| Ok(st.primary_kek(&label)?))?;
        if current.map(|r| r.version) != Some(v) {
            self.with_store(|st| Ok(st.set_primary_kek(&label, v)?))?;
        }
        Ok(v)
    }

    /// Where the store indexes `record`: its KEK label and version, or for
    /// a record of several HSMs the set label and version of its
    /// combination.
    pub fn store_key(&self, record: &[u8]) -> Result<(String, u32)> {
        match Stored::decode(record)? {
            Stored::One(r) => Ok((self.settings.kek_label.clone(), r.kek_version)),
            Stored::Set(set) => Ok((
                self.set_label_for(set.mode),
                self.set_version_for(set.mode, &combination_of(&set))?,
            )),
        }
    }

    /// The (set label, set version) pairs, of either mode whatever the
    /// configured one, whose combination names member `m`'s KEK version
    /// `version`.
    pub(super) fn set_versions_using(
        &self,
        m: &Member,
        version: u32,
    ) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for mode in SET_MODES {
            let label = self.set_label_for(mode);
            let rows = self.with_store(|st| Ok(st.kek_versions(&label)?))?;
            out.extend(
                rows.into_iter()
                    .filter(|r| {
                        parse_combination(&r.kind)
                            .iter()
                            .any(|(name, v)| *name == m.name && *v == version)
                    })
                    .map(|r| (label.clone(), r.version)),
            );
        }
        Ok(out)
    }

    /// Run `f` on a pooled session of member `m`.
    pub(super) fn with_session_on<T>(
        &self,
        m: &Member,
        f: impl Fn(&cryptoki::session::Session) -> Result<T>,
    ) -> Result<T> {
        m.pool.with_retry(m.backend()?.pkcs11(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_round_trip() {
        let c = combination([("main", 3), ("dr-1", 12)]);
        assert_eq!(c, "main:3,dr-1:12");
        assert_eq!(
            parse_combination(&c),
            vec![("main".to_string(), 3), ("dr-1".to_string(), 12)]
        );
        assert_eq!(parse_combination("aes256"), vec![]);
        assert_eq!(parse_combination("a:x,b:2"), vec![("b".to_string(), 2)]);
    }
}
