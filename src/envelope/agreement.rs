//! Replica HSMs must hold the same KEK: at login and at every health check
//! (each `cache_soft_ttl_secs`) a random test value is sealed under the
//! primary KEK version on the first member that can, and opened on each of
//! the others. A member that opens it to the same value is up; one that
//! cannot be reached is down; one that answers anything else (another key,
//! no KEK, a disabled KEK, a refused PIN) is refused until a later check
//! proves it agrees. Down and refused members are tried here again, so this
//! check is also how they come back, and how a member not found at start
//! comes into use once it is found (see `members`).

use cryptoki_sys::*;

use std::sync::Arc;

use super::member_kek::timed;
use super::members::{fails_over, Member, State};
use super::service::Envelope;
use crate::error::{Error, Result};
use crate::rv_name::rv_name;

/// Why an all-of member is refused when its KEK is another's.
const SAME_MATERIAL: &str = "all-of needs a KEK of its own on each HSM";

/// The test value's DEK id and bound attributes: nothing a real DEK has.
const TEST_ID: [u8; 16] = [0x5A; 16];
const TEST_BOUND: &[u8] = b"hsm-envelope/replica-agreement";

impl Envelope {
    /// Prove the members agree (see the module comment), on the primary
    /// version and every older one cached values came from. Without a
    /// reachable member that can seal there is nothing to prove against:
    /// states stay as they are. A member refused on any version is refused.
    pub fn prove_agreement(&self) {
        let primary = match self.primary() {
            Ok(v) => v,
            Err(e) => {
                crate::log_warn!("replica agreement not checked: no primary KEK version ({e})");
                return;
            }
        };
        let mut versions = vec![primary];
        versions.extend(
            self.cache
                .versions()
                .into_iter()
                .filter(|v| *v != primary && *v != super::sets::SET_TAG),
        );
        let mut verdicts: Vec<Verdict> = self
            .members
            .all()
            .iter()
            .map(|_| Verdict::Unchecked)
            .collect();
        for v in versions {
            self.agreement_on(v, &mut verdicts);
        }
        for (m, verdict) in self.members.all().iter().zip(verdicts) {
            match verdict {
                Verdict::Unchecked => {}
                Verdict::Agrees => m.mark_agreed(),
                Verdict::Down(e) => m.mark_down(&e),
                Verdict::Refused(why) => m.refuse(why),
            }
        }
    }

    /// One version's test: sealed on the first member that can (never a
    /// refused one: one holding another key would otherwise be proven right
    /// while main is down), opened on each other one.
    fn agreement_on(&self, version: u32, verdicts: &mut [Verdict]) {
        let mut value = [0u8; 32];
        if getrandom::fill(&mut value).is_err() {
            return;
        }
        let members = self.members.all();
        let mut reference = None;
        let label: Arc<str> = self.settings.kek_label.as_str().into();
        for (i, m) in members.iter().enumerate() {
            if !m.found() || matches!(m.state(), State::Refused { .. }) {
                continue;
            }
            let label = label.clone();
            let sealed = timed(m, move |m| {
                m.with_kek(version, |b, s, key| {
                    m.seal(b, s, key, (&label, version), &TEST_ID, TEST_BOUND, &value)
                })
            });
            match sealed {
                Ok(rec) => {
                    reference = Some((i, rec));
                    break;
                }
                Err(e) if fails_over(&e) => verdicts[i].worsen(Verdict::Down(e)),
                // Checked below by opening, once a member has sealed.
                Err(_) => {}
            }
        }
        let Some((first, rec)) = reference else {
            crate::log_warn!(
                "replica agreement on v{version} not checked: no member could seal a test value"
            );
            return;
        };
        verdicts[first].worsen(Verdict::Agrees);
        let aad: Arc<[u8]> = rec.aad(&TEST_ID, TEST_BOUND).into();
        let rec = Arc::new(rec);
        for (i, m) in members.iter().enumerate() {
            if i == first || !m.found() {
                continue;
            }
            let (rec, aad) = (rec.clone(), aad.clone());
            let opened = timed(m, move |m| {
                m.with_kek(version, |b, s, key| {
                    Envelope::open_with(b, s, key, &rec, &aad)
                })
            });
            let verdict = match opened {
                Ok(v) if v.as_slice() == value => Verdict::Agrees,
                Ok(_) => Verdict::Refused(format!(
                    "its KEK v{version} opens what '{}' sealed to another value",
                    members[first].name
                )),
                Err(e) if fails_over(&e) => Verdict::Down(e),
                Err(e) => Verdict::Refused(disagreement(&members[first], version, &e)),
            };
            verdicts[i].worsen(verdict);
        }
    }

    /// Replicas: whether `m` holds KEK version `version` as main does (a
    /// test value sealed on main opens on `m` to the same value); an
    /// outage is returned as it is, a disagreement as why.
    pub(super) fn proves_same(&self, m: &Arc<Member>, version: u32) -> Result<()> {
        let main = self.members.main();
        let mut value = [0u8; 32];
        getrandom::fill(&mut value).map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))?;
        let label: Arc<str> = self.settings.kek_label.as_str().into();
        let rec = timed(main, move |main| {
            main.with_kek(version, |b, s, key| {
                main.seal(b, s, key, (&label, version), &TEST_ID, TEST_BOUND, &value)
            })
        })
        .map_err(|e| {
            if fails_over(&e) {
                e
            } else {
                Error::admin(format!(
                    "main could not seal a test value under v{version} ({e})"
                ))
            }
        })?;
        let aad: Arc<[u8]> = rec.aad(&TEST_ID, TEST_BOUND).into();
        let rec = Arc::new(rec);
        let opened = timed(m, move |m| {
            m.with_kek(version, |b, s, key| {
                Envelope::open_with(b, s, key, &rec, &aad)
            })
        });
        match opened {
            Ok(v) if v.as_slice() == value => Ok(()),
            Ok(_) => Err(Error::admin(format!(
                "its v{version} opens what main sealed to another value"
            ))),
            Err(e) if fails_over(&e) => Err(e),
            Err(e) => Err(Error::admin(disagreement(main, version, &e))),
        }
    }

    /// Replicas: after main's version `version` was destroyed, destroy it
    /// on every replica (found by label and version, whatever its state:
    /// a disabled copy is still key material). Returns the replicas where
    /// it could not be destroyed, with why; one that does not hold it is
    /// done.
    pub(super) fn destroy_on_replicas(&self, version: u32) -> Vec<(String, String)> {
        let mut left = Vec::new();
        for r in self.members.all().iter().skip(1) {
            let done = self.with_session_on(r, |s| {
                let key = match crate::backend::kek::find(s, &r.kek_label, version) {
                    Ok(k) => k,
                    Err(e) if e.rv() == crate::vendor::CKR_HSME_KEK_UNAVAILABLE => return Ok(()),
                    Err(e) => return Err(e),
                };
                for h in key.objects() {
                    s.destroy_object(h)
                        .map_err(|e| Error::from_cryptoki("C_DestroyObject", e))?;
                }
                Ok(())
            });
            r.forget_keks();
            match done {
                Ok(()) => crate::log_info!("KEK v{version} destroyed on replica '{}'", r.name),
                Err(e) => {
                    crate::log_warn!(
                        "KEK v{version} not destroyed on replica '{}' ({e}): remove it there",
                        r.name
                    );
                    left.push((r.name.clone(), e.to_string()));
                }
            }
        }
        left
    }

    /// All-of: each party's KEK must be its own, or the double key is one
    /// key. A test value sealed under each member's primary version is
    /// opened with each other member's primary: a member that opens it
    /// holds the same key material (a KEK copied from another party's HSM,
    /// or a configuration that went from replicas to all-of) and is refused
    /// (not main: main serves everything else), so that DEKs cannot be made
    /// or opened until the parties' KEKs are their own.
    pub fn prove_independence(&self) {
        let members = self.members.all();
        let primaries = self.member_primaries();
        let mut value = [0u8; 32];
        if getrandom::fill(&mut value).is_err() {
            return;
        }
        let mut same = vec![false; members.len()];
        for (i, m) in members.iter().enumerate() {
            let Some(v) = primaries[i].filter(|_| m.found()) else {
                continue;
            };
            let label: Arc<str> = m.kek_label.as_str().into();
            let Ok(rec) = timed(m, move |m| {
                m.with_kek(v, |b, s, key| {
                    m.seal(b, s, key, (&label, v), &TEST_ID, TEST_BOUND, &value)
                })
            }) else {
                continue;
            };
            let aad: Arc<[u8]> = rec.aad(&TEST_ID, TEST_BOUND).into();
            let rec = Arc::new(rec);
            for (j, other) in members.iter().enumerate() {
                let Some(w) = primaries[j].filter(|_| j != i && other.found()) else {
                    continue;
                };
                let (rec, aad) = (rec.clone(), aad.clone());
                let opened = timed(other, move |o| {
                    o.with_kek(w, |b, s, key| Envelope::open_with(b, s, key, &rec, &aad))
                });
                if opened.is_ok_and(|got| got.as_slice() == value) {
                    let (k, as_whom) = if j == 0 { (i, other) } else { (j, m) };
                    same[k] = true;
                    members[k].refuse(format!(
                        "its KEK holds the same key material as '{}''s: {SAME_MATERIAL}",
                        as_whom.name
                    ));
                }
            }
        }
        // One refused for this earlier whose KEK is now its own comes back.
        for (k, m) in members.iter().enumerate() {
            let was = matches!(m.state(), State::Refused { why } if why.contains(SAME_MATERIAL));
            if was && !same[k] && primaries[k].is_some() {
                m.mark_agreed();
            }
        }
    }

    /// The health check's part for several HSMs, run once per soft TTL:
    /// members not found yet (unreachable at start) are looked for,
    /// replicas prove they agree, and all-of parties that their KEKs are
    /// their own.
    pub(super) fn check_members(&self) {
        if self.members.all().len() < 2 {
            return;
        }
        self.members.find_missing();
        if !self.members.main().pool.has_pin() {
            return;
        }
        if self.members.replicated() {
            self.prove_agreement();
        } else if self.set_mode() == Some(super::record_set::SetMode::AllOf) {
            self.prove_independence();
        }
    }
}

/// Why member `m` could not open what `first` sealed, in words.
fn disagreement(first: &Member, version: u32, e: &Error) -> String {
    let what = match e.rv() {
        crate::vendor::CKR_HSME_RECORD_INVALID | CKR_ENCRYPTED_DATA_INVALID => {
            "holds different key material".to_string()
        }
        crate::vendor::CKR_HSME_KEK_REVOKED => "has it disabled or deleted".to_string(),
        crate::vendor::CKR_HSME_KEK_UNAVAILABLE => "does not have it".to_string(),
        rv => format!("answered {}", rv_name(rv)),
    };
    format!(
        "cannot open a test value '{}' sealed under KEK v{version}: it {what}",
        first.name
    )
}

/// What the agreement check found for one member, over the versions: the
/// worst outcome counts (refused over down over agrees).
#[derive(Debug)]
enum Verdict {
    Unchecked,
    Agrees,
    Down(Error),
    Refused(String),
}

impl Verdict {
    fn rank(&self) -> u8 {
        match self {
            Verdict::Unchecked => 0,
            Verdict::Agrees => 1,
            Verdict::Down(_) => 2,
            Verdict::Refused(_) => 3,
        }
    }

    fn worsen(&mut self, other: Verdict) {
        if other.rank() > self.rank() {
            *self = other;
        }
    }
}
