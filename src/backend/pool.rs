//! Backend sessions used for the module's own KEK work, reused across calls
//! so a DEK unwrap costs two backend round trips, not more.
//!
//! After an HSM outage the backend may have lost every session and the
//! login: a session found dead is replaced (and the work retried once), and
//! a new session logs in again with the PIN the application gave C_Login,
//! kept in locked, zeroized memory until logout.

use crate::runtime::lock::unpoisoned;
use std::sync::{Mutex, OnceLock};

use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;
use cryptoki_sys::*;

use crate::error::{Error, Result};
use crate::secret::SecretBytes;

pub struct SessionPool {
    /// The token's slot; unset for a replica HSM not found yet (its
    /// module or token could not be reached at start, see
    /// `envelope::members`): opening a session then answers
    /// CKR_TOKEN_NOT_PRESENT.
    slot: OnceLock<Slot>,
    idle: Mutex<Vec<Session>>,
    pin: Mutex<Option<SecretBytes>>,
}

/// Codes that mean the HSM (or our link to it) is gone, not that the
/// request was wrong.
pub fn is_outage(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_DEVICE_ERROR
            | CKR_DEVICE_REMOVED
            | CKR_DEVICE_MEMORY
            | CKR_TOKEN_NOT_PRESENT
            | CKR_TOKEN_NOT_RECOGNIZED
            | CKR_SESSION_HANDLE_INVALID
            | CKR_SESSION_CLOSED
    )
}

fn lost(e: &Error) -> bool {
    e.backend_rv().is_some_and(is_outage)
}

impl SessionPool {
    pub fn new(slot: Slot) -> Self {
        let pool = SessionPool::unplaced();
        pool.place(slot);
        pool
    }

    /// A pool whose token is not found yet (see `place`). It keeps the PIN
    /// it is given meanwhile.
    pub fn unplaced() -> Self {
        SessionPool {
            slot: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
            pin: Mutex::new(None),
        }
    }

    /// The token is found at `slot` (once; later calls change nothing).
    pub fn place(&self, slot: Slot) {
        let _ = self.slot.set(slot);
    }

    pub fn slot(&self) -> Result<Slot> {
        self.slot
            .get()
            .copied()
            .ok_or(Error::Rv(CKR_TOKEN_NOT_PRESENT))
    }

    /// Whether a PIN is kept (the user is logged in).
    pub fn has_pin(&self) -> bool {
        unpoisoned(self.pin.lock()).is_some()
    }

    /// Keep the user PIN for logging in again after a reconnect.
    pub fn remember_pin(&self, pin: &[u8]) {
        {
            let mut p = unpoisoned(self.pin.lock());
            *p = Some(SecretBytes::from_slice(pin));
        }
    }

    /// Log backend session `bh` in with the remembered PIN, if there is one
    /// (an application session re-opened after a reconnect).
    pub fn login_raw(&self, backend: &crate::backend::Backend, bh: CK_SESSION_HANDLE) {
        let guard = unpoisoned(self.pin.lock());
        if let Some(pin) = guard.as_ref() {
            if let Err(e) = backend.login(bh, CKU_USER, Some(pin.as_slice())) {
                crate::log_debug!("logging a re-opened session in again: {e}");
            }
        }
    }

    pub fn forget_pin(&self) {
        {
            let mut p = unpoisoned(self.pin.lock());
            *p = None;
        }
    }

    fn open(&self, pkcs11: &Pkcs11) -> Result<Session> {
        // no_drop: dropping a Session must never call the backend (fork, finalize).
        let s = pkcs11
            .open_rw_session_no_drop(self.slot()?)
            .map_err(|e| Error::from_cryptoki("C_OpenSession", e))?;
        {
            let guard = unpoisoned(self.pin.lock());
            if let Some(pin) = guard.as_ref() {
                let raw = RawAuthPin::new(pin.as_slice().to_vec().into());
                match s.login_with_raw(UserType::User, &raw) {
                    Ok(())
                    | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                    Err(e) => {
                        let _ = s.close();
                        return Err(Error::from_cryptoki("C_Login", e));
                    }
                }
            }
        }
        Ok(s)
    }

    /// Run `f` on an idle (or new) read-write session. A session the backend
    /// no longer knows is dropped rather than returned to the pool.
    pub fn with<T>(&self, pkcs11: &Pkcs11, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let taken = unpoisoned(self.idle.lock()).pop();
        let session = match taken {
            Some(s) => s,
            None => self.open(pkcs11)?,
        };
        let out = f(&session);
        if !matches!(&out, Err(e) if lost(e)) {
            {
                let mut idle = unpoisoned(self.idle.lock());
                idle.push(session);
            }
        }
        out
    }

    /// As `with`, but work that failed because the session was lost is tried
    /// once more on a new session (after a reconnect every idle one is dead).
    pub fn with_retry<T>(&self, pkcs11: &Pkcs11, f: impl Fn(&Session) -> Result<T>) -> Result<T> {
        match self.with(pkcs11, &f) {
            Err(e) if lost(&e) => {
                // Drop every idle session: they died together.
                {
                    let mut idle = unpoisoned(self.idle.lock());
                    idle.clear();
                }
                self.with(pkcs11, f)
            }
            other => other,
        }
    }

    /// Close every idle session explicitly (C_Finalize path).
    pub fn close_all(&self) {
        {
            let mut idle = unpoisoned(self.idle.lock());
            for s in idle.drain(..) {
                let _ = s.close();
            }
        }
    }
}
