//! A member's KEK calls: its KEK version handles (found once per login and
//! checked to be fit for a KEK: sensitive, never extractable, enabled; a
//! stale handle or a lost login makes them be found again), wrapping
//! under them, and the time-out (`hsm_timeout_ms`).
//!
//! With a time-out, a member's KEK calls run on threads of its own
//! (`runtime::deadline`) and the caller waits at most the time-out: an HSM
//! that stops answering (a network HSM whose link hangs rather than
//! breaks) then costs the time-out once, is taken as down, and the next
//! member serves. The call given up on finishes in the background; its
//! session goes back to the pool when it does (at most `MAX_GIVEN_UP` at
//! once: past that the member counts as down). The price is a hand-over to
//! a worker thread per call (see the README's numbers); without a time-out
//! calls run on the caller's thread as before.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cryptoki_sys::*;

use super::health::Status;
use super::members::Member;
use super::record::{self, WrapAlg, WrappedRecord};
use crate::backend::kek::{self, KekKey};
use crate::backend::{rsa, Backend};
use crate::error::{Error, Result};
use crate::runtime::deadline::Missed;

pub(super) use super::members::MAX_GIVEN_UP;
use crate::runtime::lock::unpoisoned;
use crate::vendor::{CKR_HSME_KEK_REVOKED, CKR_HSME_KEK_UNAVAILABLE};

const RECORD_IV_LEN: usize = 12;

/// What a call given up on answers: an outage, so the member is taken as
/// down and the next one tried.
fn timed_out() -> Error {
    Error::backend("call (hsm_timeout_ms passed)", CKR_DEVICE_ERROR)
}

/// Run `job` on member `m` under its time-out, if it has one and threads
/// are allowed; else on this thread.
pub(super) fn timed<T: Send + 'static>(
    m: &Arc<Member>,
    job: impl FnOnce(&Member) -> Result<T> + Send + 'static,
) -> Result<T> {
    let Some((runner, timeout)) = &m.deadline else {
        return job(m);
    };
    if !crate::runtime::threads::allowed() {
        return job(m);
    }
    let me = m.clone();
    match runner.run(*timeout, move || job(&me)) {
        Ok(r) => r,
        Err(Missed::TimedOut) => {
            crate::log_warn!(
                "HSM member '{}' did not answer within hsm_timeout_ms ({} ms)",
                m.name,
                timeout.as_millis()
            );
            Err(timed_out())
        }
        Err(Missed::NoWorker) => {
            crate::log_warn!(
                "HSM member '{}': {MAX_GIVEN_UP} calls given up on are still waiting for it \
                 (or no thread could be started): taken as down",
                m.name
            );
            Err(timed_out())
        }
        // A bug, not an outage: the member is not taken as down for it.
        Err(Missed::Panicked) => Err(Error::Rv(CKR_GENERAL_ERROR)),
    }
}

/// How long `C_Finalize` waits, per member, for calls given up on to
/// return (at most this, or twice the time-out if that is longer).
const FINALIZE_WAIT: Duration = Duration::from_secs(5);

impl super::service::Envelope {
    /// At `C_Finalize`: wait a while for calls given up on (past
    /// `hsm_timeout_ms`) to return. One still inside a backend when it is
    /// finalised, or when the process exits, could crash the process; one
    /// that never returns is named in the log and left.
    pub(super) fn wait_given_up(&self) {
        self.wait_given_up_for(|timeout| FINALIZE_WAIT.max(timeout * 2));
    }

    /// At process exit (without `C_Finalize`): the same, up to `within`
    /// per member.
    pub fn wait_given_up_within(&self, within: Duration) {
        self.wait_given_up_for(|_| within);
    }

    fn wait_given_up_for(&self, wait: impl Fn(Duration) -> Duration) {
        for m in self.members.all() {
            let Some((runner, timeout)) = &m.deadline else {
                continue;
            };
            if !runner.wait_given_up(wait(*timeout)) {
                crate::log_warn!(
                    "HSM member '{}': {} call(s) given up on still wait for it at C_Finalize",
                    m.name,
                    runner.given_up()
                );
            }
        }
    }
}

impl Member {
    /// Run `f` with KEK version `version` on a pooled session of this
    /// member; a stale handle makes the KEK be found again once.
    pub(super) fn with_kek<T>(
        &self,
        version: u32,
        f: impl Fn(&Backend, &cryptoki::session::Session, KekKey) -> Result<T>,
    ) -> Result<T> {
        let backend = self.backend()?;
        self.pool.with_retry(backend.pkcs11(), |s| {
            let handle = self.kek_handle(s, version)?;
            match f(backend, s, handle) {
                // A stale handle (the login was lost and regained, say): find
                // the KEK again once.
                Err(e) if stale_handle(&e) => {
                    self.forget_keks();
                    let handle = self.kek_handle(s, version)?;
                    f(backend, s, handle).map_err(|e| self.kek_error(e))
                }
                other => other.map_err(|e| self.kek_error(e)),
            }
        })
    }

    /// The backend objects of a KEK version on this member, checked to be
    /// fit for a KEK.
    pub(super) fn kek_handle(
        &self,
        s: &cryptoki::session::Session,
        version: u32,
    ) -> Result<KekKey> {
        if let Some(h) = self
            .handles
            .lock()
            .ok()
            .and_then(|m| m.get(&version).copied())
        {
            return Ok(h);
        }
        let label = &self.kek_label;
        let h = match kek::find(s, label, version) {
            Ok(h) => h,
            // Not there although we are logged in: deleted on the HSM.
            Err(e) if e.rv() == CKR_HSME_KEK_UNAVAILABLE && kek::logged_in(s)? => {
                return Err(Error::Rv(CKR_HSME_KEK_REVOKED));
            }
            Err(e) => return Err(e),
        };
        if !kek::check_policy(s, h)? {
            crate::log_error!(
                "KEK '{label}' v{version} is extractable or not sensitive; refusing to use it"
            );
            return Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE));
        }
        if !kek::enabled(s, h)? {
            return Err(Error::Rv(CKR_HSME_KEK_REVOKED));
        }
        {
            let mut handles = unpoisoned(self.handles.lock());
            handles.insert(version, h);
        }
        Ok(h)
    }

    /// A stale KEK handle or a lost login means the KEK must be found again.
    fn kek_error(&self, e: Error) -> Error {
        if let Some(rv) = e.backend_rv() {
            if matches!(
                rv,
                CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID | CKR_USER_NOT_LOGGED_IN
            ) {
                self.forget_keks();
                return Error::Rv(CKR_HSME_KEK_UNAVAILABLE);
            }
        }
        e
    }

    /// Seal `value` for DEK `id` (security attributes `bound`, encoded) with
    /// `key` on session `s` of this member, in a record naming KEK `kek.0`
    /// version `kek.1` (the top-level label for main and replicas; a
    /// member's own in a record of several HSMs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn seal(
        &self,
        backend: &Backend,
        s: &cryptoki::session::Session,
        key: KekKey,
        kek: (&str, u32),
        id: &[u8; 16],
        bound: &[u8],
        value: &[u8],
    ) -> Result<WrappedRecord> {
        let (kek_label, version) = kek;
        let blank = |alg, iv: Vec<u8>| WrappedRecord {
            alg,
            kek_label: kek_label.to_string(),
            kek_version: version,
            iv,
            ciphertext: Vec::new(),
        };
        match key {
            KekKey::Aes(k) => {
                let mut iv = [0u8; RECORD_IV_LEN];
                getrandom::fill(&mut iv).map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))?;
                let mut rec = blank(WrapAlg::AesGcm256, iv.to_vec());
                let aad = rec.aad(id, bound);
                rec.ciphertext = kek::gcm_seal(backend, s, k, &iv, &aad, value)?;
                Ok(rec)
            }
            KekKey::Rsa { private, public } => {
                let public = public.ok_or_else(|| {
                    crate::log_error!(
                        "RSA KEK '{kek_label}' v{version} has no public key on the HSM: nothing can be wrapped under it"
                    );
                    Error::Rv(CKR_HSME_KEK_UNAVAILABLE)
                })?;
                // SHA-256 unless this backend is known to refuse it.
                let known = WrapAlg::from_u8(self.oaep.load(Ordering::Relaxed));
                let mut alg = known.unwrap_or(WrapAlg::RsaOaepSha256);
                loop {
                    let mut rec = blank(alg, Vec::new());
                    let aad = rec.aad(id, bound);
                    let plain = record::rsa_plaintext(&aad, value);
                    match rsa::oaep_seal(backend, s, public, alg, &plain) {
                        Ok(block) => {
                            self.oaep.store(alg.as_u8(), Ordering::Relaxed);
                            let signed = WrappedRecord::rsa_signed(&aad, &block);
                            let signature = rsa::pss_sign(backend, s, private, &signed)?;
                            if signature.len() != block.len() {
                                return Err(Error::Rv(CKR_GENERAL_ERROR));
                            }
                            rec.ciphertext = [block, signature].concat();
                            return Ok(rec);
                        }
                        Err(e) if alg == WrapAlg::RsaOaepSha256 && rsa::is_hash_refused(&e) => {
                            crate::log_info!(
                                "the backend refuses RSA-OAEP with SHA-256; wrapping with SHA-1"
                            );
                            alg = WrapAlg::RsaOaepSha1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// The health check's question for each of `versions`, on one pooled
    /// session of this member.
    pub(super) fn kek_statuses(&self, versions: &[u32]) -> Result<Vec<(u32, Status)>> {
        self.pool.with_retry(self.backend()?.pkcs11(), |s| {
            versions
                .iter()
                .map(|v| self.kek_status(s, *v).map(|st| (*v, st)))
                .collect()
        })
    }

    /// What the HSM says about KEK version `version` (revoked: deleted or
    /// disabled there).
    fn kek_status(&self, s: &cryptoki::session::Session, version: u32) -> Result<Status> {
        match self.kek_handle(s, version) {
            Ok(h) => match kek::enabled(s, h) {
                Ok(true) => Ok(Status::Usable),
                Ok(false) => Ok(Status::Revoked),
                // The handle went stale: look it up again next time.
                Err(e) if stale_handle(&e) => {
                    self.forget_keks();
                    match self.kek_handle(s, version) {
                        Ok(h) if kek::enabled(s, h)? => Ok(Status::Usable),
                        Ok(_) => Ok(Status::Revoked),
                        Err(e) if e.rv() == CKR_HSME_KEK_REVOKED => Ok(Status::Revoked),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
            Err(e) if e.rv() == CKR_HSME_KEK_REVOKED => Ok(Status::Revoked),
            Err(e) => Err(e),
        }
    }
}

/// The backend no longer knows the KEK's handle (the login was lost and
/// regained, say): the KEK is to be found again.
fn stale_handle(e: &Error) -> bool {
    matches!(
        e.backend_rv(),
        Some(CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID)
    )
}
