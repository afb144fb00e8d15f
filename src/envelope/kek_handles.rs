//! Backend handles of the KEK versions, found once per login and checked
//! to be fit for a KEK (sensitive, never extractable, enabled); a stale
//! handle or a lost login makes them be found again.

use cryptoki_sys::*;

use super::service::Envelope;
use crate::backend::kek::{self, KekKey};
use crate::error::{Error, Result};
use crate::runtime::lock::unpoisoned;
use crate::vendor::{CKR_HSME_KEK_REVOKED, CKR_HSME_KEK_UNAVAILABLE};

impl Envelope {
    /// Run `f` with a pooled backend session and KEK version `version`.
    pub(super) fn with_kek<T>(
        &self,
        version: u32,
        f: impl Fn(&cryptoki::session::Session, KekKey) -> Result<T>,
    ) -> Result<T> {
        let backend = self.backend();
        self.pool.with_retry(backend.pkcs11(), |s| {
            let handle = self.kek_handle(s, version)?;
            match f(s, handle) {
                // A stale handle (the login was lost and regained, say): find
                // the KEK again once.
                Err(Error::Backend {
                    rv: CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID,
                    ..
                }) => {
                    self.forget_keks();
                    let handle = self.kek_handle(s, version)?;
                    f(s, handle).map_err(|e| self.kek_error(e))
                }
                other => other.map_err(|e| self.kek_error(e)),
            }
        })
    }

    /// The backend objects of a KEK version, checked to be fit for a KEK.
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
        let label = &self.settings.kek_label;
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
            let mut m = unpoisoned(self.handles.lock());
            m.insert(version, h);
        }
        Ok(h)
    }

    /// A stale KEK handle or a lost login means the KEK must be found again.
    fn kek_error(&self, e: Error) -> Error {
        if let Error::Backend { rv, .. } = &e {
            if matches!(
                *rv,
                CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID | CKR_USER_NOT_LOGGED_IN
            ) {
                self.forget_keks();
                return Error::Rv(CKR_HSME_KEK_UNAVAILABLE);
            }
        }
        e
    }

    pub fn forget_keks(&self) {
        {
            let mut m = unpoisoned(self.handles.lock());
            m.clear();
        }
    }
}
