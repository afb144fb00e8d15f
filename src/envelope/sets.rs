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
use super::members::{fails_over, Member, State};
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
    /// Nothing to hold back (what had to go is gone).
    Fine,
    /// Not enough members answered to vouch for what is cached: served
    /// until `until` (`clock::mono_ms`), looked at again soon.
    Retry { until: u64, why: Error },
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
        // Any-of skips members known to be down or refused while another
        // is up (each would cost its failure, or its time-out, per DEK).
        let some_up = members.iter().any(|m| m.found() && m.state() == State::Up);
        for (i, m) in members.iter().enumerate() {
            let kept = keep.and_then(|k| k.wrap_of(&m.name));
            if let Some(w) = kept.filter(|w| Some(w.rec.kek_version) == primaries[i]) {
                wraps.push(w.clone());
                continue;
            }
            let revoked = primaries[i].is_some_and(|v| self.is_revoked_on(i, v));
            let skip = match mode {
                SetMode::AllOf if revoked => return Err(Error::Rv(CKR_HSME_KEK_REVOKED)),
                // Every party must take part, and a refused one may not.
                SetMode::AllOf if matches!(m.state(), State::Refused { .. }) => {
                    return Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE))
                }
                SetMode::AllOf => false,
                SetMode::AnyOf => revoked || (some_up && m.state() != State::Up),
            };
            if skip {
                if let Some(w) = kept {
                    wraps.push(w.clone());
                }
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
        self.note_in_use(
            set.wraps
                .iter()
                .map(|w| (w.hsm.as_str(), w.rec.kek_version)),
        );
        Ok(set.try_encode()?)
    }

    /// The health check looks at these (member name, KEK version) pairs
    /// from now on (revoked ones stay revoked: not looked at again).
    fn note_in_use<'a>(&self, pairs: impl IntoIterator<Item = (&'a str, u32)>) {
        let revoked = unpoisoned(self.set_health.revoked.lock());
        let mut in_use = unpoisoned(self.set_health.in_use.lock());
        for (name, v) in pairs {
            if let Some((i, _)) = self.member_index(name) {
                if !revoked.contains(&(i, v)) {
                    in_use.insert((i, v));
                }
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
        let mut refused = None;
        for (w, wrap) in set.wraps.iter().enumerate() {
            let v = wrap.rec.kek_version;
            // min_decrypt_version is about the top-level KEK, main's.
            let too_old =
                |i: usize| i == 0 && self.settings.min_decrypt_version.is_some_and(|min| v < min);
            match self.member_index(&wrap.hsm) {
                Some((_, m))
                    if set.mode == SetMode::AllOf && matches!(m.state(), State::Refused { .. }) =>
                {
                    crate::log_warn!(
                        "DEK {} needs a share from HSM '{}', which is refused",
                        hex(id),
                        m.name
                    );
                    return Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE));
                }
                Some((i, m)) if !self.is_revoked_on(i, v) && !too_old(i) => usable.push((w, i, m)),
                Some((i, _)) => {
                    let rv = if too_old(i) {
                        CKR_HSME_KEK_UNAVAILABLE
                    } else {
                        CKR_HSME_KEK_REVOKED
                    };
                    if set.mode == SetMode::AllOf {
                        return Err(Error::Rv(rv));
                    }
                    refused = Some(rv);
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
            // Revoked (or too old) wraps, or none this module can use.
            return Err(Error::Rv(refused.unwrap_or(CKR_HSME_KEK_UNAVAILABLE)));
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
        // The value, and which wraps took part.
        let (value, used): (SecretBytes, Vec<usize>) = match set.mode {
            SetMode::AllOf => {
                let mut parts = Vec::with_capacity(usable.len());
                for &(w, i, m) in &usable {
                    parts.push(open_one(w, i, m)?);
                }
                let value = shares::join(&parts)
                    .ok_or(Error::Rv(crate::vendor::CKR_HSME_RECORD_INVALID))?;
                (value, (0..set.wraps.len()).collect())
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
                            opened = Some((v, vec![w]));
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
        // The pairs that took part are checked from now on (any-of: the one
        // that opened it; if it is revoked, another reopens it).
        let pairs = used
            .iter()
            .map(|&w| (set.wraps[w].hsm.as_str(), set.wraps[w].rec.kek_version));
        self.note_in_use(pairs);
        let took_part = used
            .iter()
            .map(|&w| set.wraps[w].hsm.as_str())
            .collect::<Vec<_>>()
            .join(",");
        Ok((value, took_part))
    }

    /// Member `i`'s KEK version `version` is gone or disabled: refuse its
    /// wraps from now on and drop every value opened from a set record.
    pub(super) fn revoke_on(&self, i: usize, version: u32) {
        let first = unpoisoned(self.set_health.revoked.lock()).insert((i, version));
        unpoisoned(self.set_health.in_use.lock()).remove(&(i, version));
        if !first {
            return;
        }
        self.cache.remove_version(SET_TAG);
        let Some(m) = self.members.all().get(i) else {
            return;
        };
        m.forget_keks();
        {
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
                // A member refused at login (all-of parties sharing a KEK, a
                // PIN that cannot be read) stays refused.
                Ok(st) if !st.is_revoked() => {
                    if !matches!(m.state(), State::Refused { .. }) {
                        m.mark_up();
                    }
                }
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
        let mut missing: Vec<(&Arc<Member>, Error)> = Vec::new();
        for (i, m) in self.members.all().iter().enumerate() {
            let versions: Vec<u32> = pairs
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, v)| *v)
                .collect();
            if versions.is_empty() {
                continue;
            }
            match timed(m, move |m| m.kek_statuses(&versions)) {
                Ok(statuses) => {
                    m.mark_up();
                    reached += 1;
                    for (v, st) in statuses {
                        if st.is_revoked() {
                            self.revoke_on(i, v);
                        }
                    }
                }
                Err(e) => {
                    if fails_over(&e) || !m.found() {
                        m.mark_down(&e);
                    } else {
                        // A refused PIN, say: this member cannot vouch, but
                        // the DEKs of one KEK must not fail for it.
                        crate::log_warn!(
                            "HSM member '{}': its KEK versions could not be checked ({e})",
                            m.name
                        );
                    }
                    missing.push((m, e));
                }
            }
        }
        if missing.is_empty() {
            return SetCheck::Fine;
        }
        // Any one answering member vouches for an any-of value.
        if self.set_mode() != Some(SetMode::AllOf) && reached > 0 {
            return SetCheck::Fine;
        }
        // As with one HSM: served up to cache_hard_ttl_secs after the last
        // good answer of each member they need, then dropped.
        let hard = self.settings.hard_ttl.as_millis() as u64;
        let now = crate::clock::mono_ms();
        let until = missing
            .iter()
            .map(|(m, _)| m.last_ok_ms().saturating_add(hard))
            .min()
            .unwrap_or(0);
        if hard > 0 && now < until {
            let why = missing
                .into_iter()
                .next()
                .map_or(Error::Rv(CKR_HSME_HSM_UNAVAILABLE), |(_, e)| e);
            return SetCheck::Retry { until, why };
        }
        let names: Vec<&str> = missing.iter().map(|(m, _)| m.name.as_str()).collect();
        crate::log_warn!(
            "HSM member(s) {} unreachable past cache_hard_ttl_secs: values from records of several HSMs dropped",
            names.join(", ")
        );
        self.cache.remove_version(SET_TAG);
        SetCheck::Fine
    }
}
