//! Backend sessions used for the module's own KEK work, reused across calls
//! so a DEK unwrap costs one backend round trip, not three.

use std::sync::Mutex;

use cryptoki::context::Pkcs11;
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki_sys::*;

use crate::error::{Error, Result};

pub struct SessionPool {
    slot: Slot,
    idle: Mutex<Vec<Session>>,
}

impl SessionPool {
    pub fn new(slot: Slot) -> Self {
        SessionPool {
            slot,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Run `f` on an idle (or new) read-write session. A session the backend
    /// no longer knows is dropped rather than returned to the pool.
    pub fn with<T>(&self, pkcs11: &Pkcs11, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let taken = self
            .idle
            .lock()
            .map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?
            .pop();
        let session = match taken {
            Some(s) => s,
            // no_drop: dropping a Session must never call the backend (fork, finalize).
            None => pkcs11
                .open_rw_session_no_drop(self.slot)
                .map_err(|e| Error::from_cryptoki("C_OpenSession", e))?,
        };
        let out = f(&session);
        let lost = matches!(&out, Err(Error::Backend { rv, .. })
            if matches!(*rv, CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED | CKR_DEVICE_ERROR | CKR_DEVICE_REMOVED | CKR_TOKEN_NOT_PRESENT));
        if !lost {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(session);
            }
        }
        out
    }

    /// Close every idle session explicitly (C_Finalize path).
    pub fn close_all(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            for s in idle.drain(..) {
                let _ = s.close();
            }
        }
    }
}
