//! Records of several HSMs with KEKs of their own (issue 13):
//! - any-of (disaster recovery): the value is wrapped on every member that
//!   answers, and any one wrap opens it. A member that is down when a DEK is
//!   made is left out (the record's combination is then not the primary
//!   one, and `rewrap` adds its wrap later).
//! - all-of (double key): the value is split into one share per member
//!   (`shares`), each wrapped on its own member; every member must take
//!   part in making and in opening a DEK.
//!
//! Revocation is per member and KEK version: the pairs that cached values
//! came from are checked every soft TTL, on their own member. A pair found
//! revoked is refused from then on, and every value opened from a set
//! record is dropped: an all-of DEK is gone (shredded in every process
//! within the soft TTL), an any-of DEK is opened again through another
//! wrap at its next use, if it has one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cryptoki_sys::*;

use super::attrs::Attrs;
use super::member_kek::timed;
use super::members::{fails_over, Member};
use super::record_set::{set_binding, RecordSet, SetMode, Stored, Wrap};
use super::service::Envelope;
use super::shares;
use crate::audit::{Entry, Op};
use crate::config::KekMode;
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::runtime::lock::unpoisoned;
use crate::secret::SecretBytes;
use crate::vendor::{CKR_HSME_HSM_UNAVAILABLE, CKR_HSME_KEK_REVOKED, CKR_HSME_KEK_UNAVAILABLE};

/// The cache's version tag for values opened from a set record: their
/// members' versions are checked here, not as versions of main's KEK.
pub const SET_TAG: u32 = u32::MAX;

/// Which (member index, KEK version) pairs are in use and which revoked.
#[derive(Default)]
pub struct SetHealth {
    in_use: Mutex<HashSet<(usize, u32)>>,
    revoked: Mutex<HashSet<(usize, u32)>>,
}

/// What the set part of a health check found.
pub(super) enum SetCheck {
    Fine,
    /// Not enough members answered to vouch for what is cached.
    Outage(Error),
}

impl Envelope {
    /// The set mode records are made in, if any.
    pub(super) fn set_mode(&self) -> Option<SetMode> {
        match self.members.mode() {
            KekMode::AnyOf => Some(SetMode::AnyOf),
            KekMode::AllOf => Some(SetMode::AllOf),
            KekMode::Single | KekMode::Replicas => None,
        }
    }

    fn member_index(&self, name: &str) -> Option<(usize, &Arc<Member>)> {
        self.members
            .all()
            .iter()
            .enumerate()
            .find(|(_, m)| m.name == name)
    }

    fn is_revoked_on(&self, member: usize, version: u32) -> bool {
        unpoisoned(self.set_health.revoked.lock()).contains(&(member, version))
    }

    /// Seal `value` for DEK `id` on the members (see the module comment).
    /// Re-wrapping an any-of record passes it as `keep`: its wraps under a
    /// member's primary version stay as they are, and a member that fails
    /// keeps its old wrap.
    pub(super) fn seal_set(
        &self,
        mode: SetMode,
        id: &[u8; 16],
        attrs: &Attrs,
        value: &[u8],
        keep: Option<&RecordSet>,
    ) -> Result<Vec<u8>> {
        let keep = keep.filter(|k| k.mode == SetMode::AnyOf && mode == SetMode::AnyOf);
        let bound = attrs.bound_encoding();
        let members = self.members.all();
        let primaries = self.member_primaries();
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let parts = match mode {
            SetMode::AllOf => shares::split(value, members.len())?,
            SetMode::AnyOf => Vec::new(),
        };
        let mut wraps = Vec::with_capacity(members.len());
        let mut last = None;
        for (i, m) in members.iter().enumerate() {
            let kept = keep.and_then(|k| k.wrap_of(&m.name));
            if let Some(w) = kept.filter(|w| Some(w.rec.kek_version) == primaries[i]) {
                wraps.push(w.clone());
                continue;
            }
            let piece = SecretBytes::from_slice(parts.get(i).map_or(value, |p| p.as_slice()));
            let dek = *id;
            let sealed = primaries[i]
                .ok_or(Error::Rv(CKR_HSME_HSM_UNAVAILABLE))
                .and_then(|v| {
                    let binding = set_binding(mode, &m.name, &names, &bound);
                    timed(m, move |m| {
                        m.with_kek(v, |b, s, key| {
                            let at = (m.kek_label.as_str(), v);
                            m.seal(b, s, key, at, &dek, &binding, piece.as_slice())
                        })
                    })
                });
            match sealed {
                Ok(rec) => {
                    m.mark_up();
                    wraps.push(Wrap {
                        hsm: m.name.clone(),
                        rec,
                    });
                }
                Err(e) => {
                    let e = self.member_failed(i, m, primaries[i], e);
                    if mode == SetMode::AllOf {
                        return Err(e);
                    }
                    if let Some(w) = kept {
                        wraps.push(w.clone());
                        continue;
                    }
                    crate::log_warn!(
                        "DEK {} made without a wrap on HSM '{}' ({e}); `hsm-envelope rewrap` adds it",
                        hex(id),
                        m.name
                    );
                    last = Some(e);
                }
            }
        }
        if wraps.is_empty() {
            return Err(last.unwrap_or(Error::Rv(CKR_HSME_HSM_UNAVAILABLE)));
        }
        let set = RecordSet { mode, wraps };
        // The new value is cached by whoever made it: its versions are
        // checked from now on.
        self.note_in_use(&set);
        Ok(set.try_encode()?)
    }

    /// The health check looks at the (member, version) pairs of `set`.
    fn note_in_use(&self, set: &RecordSet) {
        let mut in_use = unpoisoned(self.set_health.in_use.lock());
        for w in &set.wraps {
            if let Some((i, _)) = self.member_index(&w.hsm) {
                in_use.insert((i, w.rec.kek_version));
            }
        }
    }

    /// The HSMs a record of several HSMs names ("main,b"); None for a
    /// record of one KEK. For audit lines.
    pub fn record_hsms(record: &[u8]) -> Option<String> {
        match Stored::decode(record) {
            Ok(Stored::Set(set)) => Some(set.names().join(",")),
            _ => None,
        }
    }

    /// Count a set record's opening for use in the audit log (which HSMs
    /// took part), written with the use counts.
    pub(super) fn audit_set_unwrap(&self, took_part: &str) {
        if let Some(a) = self.audit.get() {
            a.count_unwrap(&format!("hsms={took_part}"));
        }
    }

    /// What a member's failure means: an outage marks it down (and is
    /// CKR_HSME_HSM_UNAVAILABLE), a KEK gone or disabled there revokes that
    /// version on it.
    fn member_failed(&self, i: usize, m: &Member, version: Option<u32>, e: Error) -> Error {
        if fails_over(&e) {
            m.mark_down(&e);
            return Error::Rv(CKR_HSME_HSM_UNAVAILABLE);
        }
        if let (CKR_HSME_KEK_REVOKED, Some(v)) = (e.rv(), version) {
            self.revoke_on(i, v);
        }
        e
    }

    /// Open a set record (see the module comment); also says which HSMs
    /// took part.
    pub(super) fn open_set(
        &self,
        id: &[u8; 16],
        attrs: &Attrs,
        set: &RecordSet,
    ) -> Result<(SecretBytes, String)> {
        let bound = attrs.bound_encoding();
        // Each wrap with its member, skipping wraps this module cannot use.
        let mut usable = Vec::with_capacity(set.wraps.len());
        for (w, wrap) in set.wraps.iter().enumerate() {
            let v = wrap.rec.kek_version;
            match self.member_index(&wrap.hsm) {
                Some((i, m)) if !self.is_revoked_on(i, v) => usable.push((w, i, m)),
                Some(_) => {
                    if set.mode == SetMode::AllOf {
                        return Err(Error::Rv(CKR_HSME_KEK_REVOKED));
                    }
                }
                None => {
                    if set.mode == SetMode::AllOf {
                        crate::log_warn!(
                            "DEK {} needs a share from HSM '{}', which this module does not name",
                            hex(id),
                            wrap.hsm
                        );
                        return Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE));
                    }
                }
            }
        }
        if usable.is_empty() {
            return Err(Error::Rv(CKR_HSME_KEK_REVOKED));
        }
        let open_one = |w: usize, i: usize, m: &Arc<Member>| -> Result<SecretBytes> {
            let rec = set.wraps[w].rec.clone();
            let v = rec.kek_version;
            let aad = set.aad(w, id, &bound).ok_or(Error::Rv(CKR_GENERAL_ERROR))?;
            timed(m, move |m| {
                m.with_kek(v, |b, s, key| Self::open_with(b, s, key, &rec, &aad))
            })
            .inspect(|_| m.mark_up())
            .map_err(|e| self.member_failed(i, m, Some(v), e))
        };
        let (value, took_part) = match set.mode {
            SetMode::AllOf => {
                let mut parts = Vec::with_capacity(usable.len());
                for &(w, i, m) in &usable {
                    parts.push(open_one(w, i, m)?);
                }
                let value = shares::join(&parts)
                    .ok_or(Error::Rv(crate::vendor::CKR_HSME_RECORD_INVALID))?;
                (value, set.names().join(","))
            }
            SetMode::AnyOf => {
                // Members that are up first (see `Members::order`).
                let ranked = self.members.in_order(self.members.all());
                usable.sort_by_key(|(_, _, m)| {
                    ranked
                        .iter()
                        .position(|r| Arc::ptr_eq(r, m))
                        .unwrap_or(usize::MAX)
                });
                let mut last = None;
                let mut opened = None;
                for &(w, i, m) in &usable {
                    match open_one(w, i, m) {
                        Ok(v) => {
                            opened = Some((v, m.name.clone()));
                            break;
                        }
                        Err(e) => {
                            crate::log_warn!(
                                "DEK {}: the wrap on HSM '{}' did not open ({e}); trying the next",
                                hex(id),
                                m.name
                            );
                            last = Some(e);
                        }
                    }
                }
                opened.ok_or_else(|| last.unwrap_or(Error::Rv(CKR_HSME_KEK_UNAVAILABLE)))?
            }
        };
        self.note_in_use(set);
        Ok((value, took_part))
    }

    /// Member `i`'s KEK version `version` is gone or disabled: refuse its
    /// wraps from now on and drop every value opened from a set record.
    pub(super) fn revoke_on(&self, i: usize, version: u32) {
        let first = unpoisoned(self.set_health.revoked.lock()).insert((i, version));
        unpoisoned(self.set_health.in_use.lock()).remove(&(i, version));
        self.cache.remove_version(SET_TAG);
        let Some(m) = self.members.all().get(i) else {
            return;
        };
        m.forget_keks();
        if first {
            crate::log_warn!(
                "KEK '{}' v{version} is revoked on HSM '{}': wraps under it are no longer opened",
                m.kek_label,
                m.name
            );
            let hsm = format!("hsm={}", m.name);
            self.log(
                Entry::new(Op::Revoked, CKR_HSME_KEK_REVOKED)
                    .kek_version(version)
                    .detail(&hsm),
            );
        }
    }

    /// For `status`: each member's primary KEK version, looked up on its
    /// HSM. A member that answers with its KEK usable is up, one that does
    /// not answer is down, one whose KEK is missing or disabled is refused
    /// (with why). In member order; None where the version is not known.
    pub fn probe_set_members(&self) -> Vec<Option<u32>> {
        self.refresh_set_view();
        let primaries = self.member_primaries();
        for (m, v) in self.members.all().iter().zip(&primaries) {
            let Some(v) = *v else {
                if m.found() {
                    m.mark_down(&Error::Rv(CKR_HSME_HSM_UNAVAILABLE));
                }
                continue;
            };
            match m.kek_statuses(&[v]).map(|mut st| st.remove(0).1) {
                Ok(st) if !st.is_revoked() => m.mark_up(),
                Ok(_) => m.refuse(format!(
                    "its KEK '{}' v{v} is missing or disabled there",
                    m.kek_label
                )),
                Err(e) if fails_over(&e) || !m.found() => m.mark_down(&e),
                Err(e) => m.refuse(e.to_string()),
            }
        }
        primaries
    }

    /// The health check's part for set records: each member's versions in
    /// use, on that member.
    pub(super) fn check_sets(&self) -> SetCheck {
        let pairs: Vec<(usize, u32)> = unpoisoned(self.set_health.in_use.lock())
            .iter()
            .copied()
            .collect();
        if pairs.is_empty() {
            return SetCheck::Fine;
        }
        let mut reached = 0;
        let mut unreachable = None;
        for (i, m) in self.members.all().iter().enumerate() {
            let versions: Vec<u32> = pairs
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, v)| *v)
                .collect();
            if versions.is_empty() {
                continue;
            }
            let statuses = timed(m, move |m| m.kek_statuses(&versions));
            match statuses {
                Ok(statuses) => {
                    m.mark_up();
                    reached += 1;
                    for (v, st) in statuses {
                        if st.is_revoked() {
                            self.revoke_on(i, v);
                        }
                    }
                }
                Err(e) if fails_over(&e) || !m.found() => {
                    m.mark_down(&e);
                    unreachable = Some(Error::Rv(CKR_HSME_HSM_UNAVAILABLE));
                }
                Err(e) => unreachable = Some(e),
            }
        }
        match (self.set_mode(), unreachable) {
            (_, None) => SetCheck::Fine,
            // Any one answering member vouches for an any-of value.
            (Some(SetMode::AnyOf), Some(_)) if reached > 0 => SetCheck::Fine,
            (_, Some(e)) => SetCheck::Outage(e),
        }
    }
}
