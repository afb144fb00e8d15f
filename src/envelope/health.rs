//! Revocation and outage. Every `soft_ttl` the KEK versions that cached DEKs
//! came from are checked on the HSM, one cheap call per version (not per
//! DEK): a version deleted or disabled there (CKA_DECRYPT or CKA_UNWRAP off)
//! is revoked, and its DEKs are dropped and refused from then on. An HSM that
//! cannot be reached is an outage, not a revocation: cached DEKs keep
//! working until `hard_ttl` after the last good check, new unwraps fail with
//! CKR_HSME_HSM_UNAVAILABLE, and service resumes when the HSM is back.

use crate::runtime::lock::unpoisoned;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use cryptoki_sys::*;

use super::member_kek::timed;
use super::service::Envelope;
use crate::audit::{Entry, Op};
use crate::backend::pool::is_outage;
use crate::clock::mono_ms as now_ms;
use crate::error::{Error, Result};
use crate::vendor::{CKR_HSME_HSM_UNAVAILABLE, CKR_HSME_KEK_REVOKED};

/// How soon an outage is looked at again while cached DEKs are served.
const OUTAGE_RETRY_MS: u64 = 1_000;

#[derive(Default)]
pub struct Health {
    revoked: Mutex<HashSet<u32>>,
    last_ok: AtomicU64,
    outage: AtomicBool,
    /// One check at a time; the others serve or wait briefly.
    checking: Mutex<()>,
}

/// What the HSM says about one KEK version.
pub(super) enum Status {
    Usable,
    Revoked,
}

impl Status {
    pub(super) fn is_revoked(&self) -> bool {
        matches!(self, Status::Revoked)
    }
}

impl Health {
    pub fn is_revoked(&self, version: u32) -> bool {
        self.revoked
            .lock()
            .map(|r| r.contains(&version))
            .unwrap_or(false)
    }
}

impl Envelope {
    /// Called before serving a cached DEK: checks the KEK versions in use
    /// when the soft TTL has passed. Cheap (one clock read) otherwise.
    pub fn ensure_fresh(&self) -> Result<()> {
        if self.cache.fresh() {
            return Ok(());
        }
        if self.cache.health_fresh() {
            self.cache.settle();
            return Ok(());
        }
        self.check_health(0)
    }

    /// With several HSMs, run by a thread of the module's own every
    /// quarter of the soft TTL (`token::health_thread`): the health check
    /// (members looked for, agreement, KEK versions) runs once less than
    /// half the soft TTL is left, so calls seldom pay for it, and a member
    /// that comes back is found without waiting for a call. Nothing before
    /// the user logged in (the KEK is private).
    pub fn health_tick(&self) {
        if !self.members.main().pool.has_pin() {
            return;
        }
        let ahead = self.settings.soft_ttl.as_millis() as u64 / 2;
        if let Err(e) = self.check_health(ahead) {
            crate::log_debug!("background health check: {e}");
        }
    }

    /// Whether a thread of the module's own should run `health_tick`, and
    /// how often: with several HSMs, each quarter of the soft TTL (250 ms
    /// to 60 s).
    pub fn health_interval(&self) -> Option<std::time::Duration> {
        if self.members.all().len() < 2 {
            return None;
        }
        let quarter = self.settings.soft_ttl / 4;
        Some(quarter.clamp(
            std::time::Duration::from_millis(250),
            std::time::Duration::from_secs(60),
        ))
    }

    /// The health check, unless one that holds `ahead_ms` from now ran
    /// meanwhile (one at a time; the others wait for it).
    fn check_health(&self, ahead_ms: u64) -> Result<()> {
        let _one = unpoisoned(self.health.checking.lock());
        if self.cache.health_fresh_for(ahead_ms) {
            return Ok(());
        }
        // Replicas prove they agree, and down or refused ones get another try.
        self.check_members();
        let now = now_ms();
        let soft = self.settings.soft_ttl.as_millis() as u64;
        // Values from records of several HSMs are checked per member
        // (whatever the configured mode: such a record may be opened after
        // the configuration went back to one HSM).
        let sets = self.check_sets();
        let versions: Vec<u32> = self
            .cache
            .versions()
            .into_iter()
            .filter(|v| *v != super::sets::SET_TAG)
            .collect();
        if versions.is_empty() && matches!(sets, super::sets::SetCheck::Fine) {
            self.cache.valid_until(now + soft);
            return Ok(());
        }
        let checked = if versions.is_empty() {
            Ok(Vec::new())
        } else {
            self.on_members(|m| {
                let versions = versions.clone();
                timed(m, move |m| m.kek_statuses(&versions))
            })
        };
        let checked = match (checked, sets) {
            // The members set values need are not all answering: those are
            // served until their hard TTL, looked at again soon; the rest
            // as checked.
            (Ok(statuses), super::sets::SetCheck::Retry { until, why }) => {
                self.note_statuses(statuses);
                self.outage_seen(&why);
                self.cache.valid_until((now + OUTAGE_RETRY_MS).min(until));
                return Ok(());
            }
            (other, _) => other.map(|statuses| self.note_statuses(statuses)),
        };
        match checked {
            Ok(()) => {
                self.service_ok(now);
                self.cache.valid_until(now + soft);
                Ok(())
            }
            Err(e) if is_outage(e.rv()) || e.rv() == CKR_HSME_HSM_UNAVAILABLE => {
                self.outage_seen(&e);
                let hard = self.settings.hard_ttl.as_millis() as u64;
                let last_ok = self.health.last_ok.load(Ordering::Acquire);
                if hard > 0 && now < last_ok.saturating_add(hard) {
                    self.cache
                        .valid_until((now + OUTAGE_RETRY_MS).min(last_ok + hard));
                    Ok(())
                } else {
                    self.cache.clear();
                    Err(Error::Rv(CKR_HSME_HSM_UNAVAILABLE))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Revoke the versions a check found revoked.
    fn note_statuses(&self, statuses: Vec<(u32, Status)>) {
        for (v, st) in statuses {
            if st.is_revoked() {
                self.revoke(v);
            }
        }
    }

    /// A KEK version is gone or disabled on the HSM: drop (zeroize) its DEKs
    /// and refuse them from now on.
    pub(super) fn revoke(&self, version: u32) {
        let first = self
            .health
            .revoked
            .lock()
            .map(|mut r| r.insert(version))
            .unwrap_or(false);
        self.cache.remove_version(version);
        self.forget_keks();
        if first {
            crate::log_warn!(
                "KEK '{}' v{version} is revoked on the HSM: its DEKs are no longer served",
                self.kek_label()
            );
            self.log(Entry::new(Op::Revoked, CKR_HSME_KEK_REVOKED).kek_version(version));
        }
    }

    /// A backend call worked: the HSM is reachable.
    pub(super) fn service_ok(&self, now: u64) {
        self.health.last_ok.store(now, Ordering::Release);
        if self.health.outage.swap(false, Ordering::AcqRel) {
            crate::log_info!("HSM reachable again");
            self.log(Entry::new(Op::OutageEnd, CKR_OK));
        }
    }

    fn outage_seen(&self, e: &Error) {
        if !self.health.outage.swap(true, Ordering::AcqRel) {
            crate::log_warn!(
                "HSM unreachable ({e}): serving cached DEKs for at most cache_hard_ttl_secs"
            );
            self.log(Entry::new(Op::OutageStart, e.rv()));
        }
    }

    /// Map an unwrap failure: an unreachable HSM is an outage (its own code),
    /// a KEK that vanished while we are logged in is a revocation.
    pub(super) fn classify(&self, version: u32, e: Error) -> Error {
        let rv = e.rv();
        if is_outage(rv) || rv == CKR_HSME_HSM_UNAVAILABLE {
            self.outage_seen(&e);
            return Error::Rv(CKR_HSME_HSM_UNAVAILABLE);
        }
        // (Set records revoke per member as they open: `sets`.)
        if rv == CKR_HSME_KEK_REVOKED && version != super::sets::SET_TAG {
            self.revoke(version);
        }
        e
    }
}
