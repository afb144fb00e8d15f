//! Our sessions: each has one backend session (for forwarded calls) and the
//! state of its own operations. The state sits behind a per-session mutex,
//! so threads using different sessions never contend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use cryptoki_sys::*;

use super::handle_hash::HandleMap;
use crate::crypto::CipherOp;
use crate::error::{Error, Result};

pub enum Op {
    Idle,
    /// A software cipher on a DEK.
    Soft(Box<dyn CipherOp>),
    /// Forwarded to the backend session.
    Backend,
}

impl Op {
    pub fn is_active(&self) -> bool {
        !matches!(self, Op::Idle)
    }
}

pub struct Find {
    pub handles: Vec<CK_OBJECT_HANDLE>,
    pub pos: usize,
}

pub struct Ops {
    pub encrypt: Op,
    pub decrypt: Op,
    pub find: Option<Find>,
}

impl Ops {
    /// End software operations (their keys are released); backend ones are
    /// the backend's to end.
    pub fn drop_soft(&mut self) {
        for op in [&mut self.encrypt, &mut self.decrypt] {
            if matches!(op, Op::Soft(_)) {
                *op = Op::Idle;
            }
        }
    }
}

pub struct Session {
    pub handle: CK_SESSION_HANDLE,
    pub slot: usize,
    pub flags: CK_FLAGS,
    pub backend: CK_SESSION_HANDLE,
    ops: Mutex<Ops>,
}

impl Session {
    pub fn ops(&self) -> Result<MutexGuard<'_, Ops>> {
        self.ops.lock().map_err(|_| Error::Rv(CKR_GENERAL_ERROR))
    }
    pub fn is_rw(&self) -> bool {
        self.flags & CKF_RW_SESSION != 0
    }
}

pub struct Sessions {
    map: RwLock<HandleMap<CK_SESSION_HANDLE, Arc<Session>>>,
    next: AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            map: RwLock::new(HandleMap::default()),
            next: AtomicU64::new(1),
        }
    }
}

impl Sessions {
    pub fn add(
        &self,
        slot: usize,
        flags: CK_FLAGS,
        backend: CK_SESSION_HANDLE,
    ) -> Result<CK_SESSION_HANDLE> {
        let handle = self.next.fetch_add(1, Ordering::Relaxed) as CK_SESSION_HANDLE;
        let s = Session {
            handle,
            slot,
            flags,
            backend,
            ops: Mutex::new(Ops {
                encrypt: Op::Idle,
                decrypt: Op::Idle,
                find: None,
            }),
        };
        self.map
            .write()
            .map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?
            .insert(handle, Arc::new(s));
        Ok(handle)
    }

    pub fn get(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Session>> {
        let m = self.map.read().map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?;
        m.get(&h)
            .cloned()
            .ok_or(Error::Rv(CKR_SESSION_HANDLE_INVALID))
    }

    pub fn remove(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Session>> {
        let mut m = self.map.write().map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?;
        m.remove(&h).ok_or(Error::Rv(CKR_SESSION_HANDLE_INVALID))
    }

    pub fn on_slot(&self, slot: usize) -> Vec<Arc<Session>> {
        let Ok(m) = self.map.read() else {
            return Vec::new();
        };
        m.values().filter(|s| s.slot == slot).cloned().collect()
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        let Ok(m) = self.map.read() else {
            return Vec::new();
        };
        m.values().cloned().collect()
    }
}
