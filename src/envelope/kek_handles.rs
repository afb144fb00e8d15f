//! Backend handles of the KEK versions, found once per login and checked
//! to be fit for a KEK (sensitive, never extractable, enabled); a stale
//! handle or a lost login makes them be found again.

use cryptoki_sys::*;

use super::members::Member;
use super::service::Envelope;
use crate::backend::kek::{self, KekKey};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::runtime::lock::unpoisoned;
use crate::vendor::{CKR_HSME_KEK_REVOKED, CKR_HSME_KEK_UNAVAILABLE};

impl Envelope {
    /// Run `f` with KEK version `version` on a pooled backend session of
    /// the first member that answers (see `members`).
    pub(super) fn with_kek<T>(
        &self,
        version: u32,
        f: impl Fn(&Backend, &cryptoki::session::Session, KekKey) -> Result<T>,
    ) -> Result<T> {
        self.on_members(|m| self.with_kek_on(m, version, &f))
    }

    /// `with_kek` on member `m` only.
    pub(super) fn with_kek_on<T>(
        &self,
        m: &Member,
        version: u32,
        f: impl Fn(&Backend, &cryptoki::session::Session, KekKey) -> Result<T>,
    ) -> Result<T> {
        let backend = m.backend()?;
        m.pool.with_retry(backend.pkcs11(), |s| {
            let handle = self.kek_handle_on(m, s, version)?;
            match f(backend, s, handle) {
                // A stale handle (the login was lost and regained, say): find
                // the KEK again once.
                Err(Error::Backend {
                    rv: CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID,
                    ..
                }) => {
                    m.forget_keks();
                    let handle = self.kek_handle_on(m, s, version)?;
                    f(backend, s, handle).map_err(|e| self.kek_error(m, e))
                }
                other => other.map_err(|e| self.kek_error(m, e)),
            }
        })
    }

    /// The backend objects of a KEK version on the main member.
    pub(super) fn kek_handle(
        &self,
        s: &cryptoki::session::Session,
        version: u32,
    ) -> Result<KekKey> {
        self.kek_handle_on(self.members.main(), s, version)
    }

    /// The backend objects of a KEK version on member `m`, checked to be
    /// fit for a KEK.
    pub(super) fn kek_handle_on(
        &self,
        m: &Member,
        s: &cryptoki::session::Session,
        version: u32,
    ) -> Result<KekKey> {
        if let Some(h) = m.handles.lock().ok().and_then(|m| m.get(&version).copied()) {
            return Ok(h);
        }
        let label = &m.kek_label;
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
            let mut handles = unpoisoned(m.handles.lock());
            handles.insert(version, h);
        }
        Ok(h)
    }

    /// A stale KEK handle or a lost login means the KEK must be found again.
    fn kek_error(&self, m: &Member, e: Error) -> Error {
        if let Error::Backend { rv, .. } = &e {
            if matches!(
                *rv,
                CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID | CKR_USER_NOT_LOGGED_IN
            ) {
                m.forget_keks();
                return Error::Rv(CKR_HSME_KEK_UNAVAILABLE);
            }
        }
        e
    }

    pub fn forget_keks(&self) {
        for m in self.members.all() {
            m.forget_keks();
        }
    }
}
