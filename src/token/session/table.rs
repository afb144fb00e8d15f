//! Our sessions: each has one backend session (for forwarded calls) and the
//! state of its own operations. The state sits behind a per-session mutex,
//! so threads using different sessions never contend.

use crate::runtime::lock::unpoisoned;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use cryptoki_sys::*;

use crate::crypto::{Direction, Mode, PreparedOp, SessionKey, SpareBuffer};
use crate::envelope::gcm_budget::Lease;
use crate::error::{Error, Result};
use crate::runtime::handle_hash::HandleMap;
use crate::token::session::remembered::RememberedKey;

pub enum Op {
    Idle,
    /// A software cipher on a DEK.
    Soft(PreparedOp),
    /// Forwarded to the backend session.
    Backend,
    /// No operation: the last software one of this direction, ended, kept
    /// so that the next init on the same key re-arms it in place
    /// (`PreparedOp::rearm`). It holds the key no longer than the
    /// remembered key does: both go at a stale init, a logout and the
    /// session's close.
    Ended(PreparedOp),
}

impl Op {
    pub fn is_active(&self) -> bool {
        matches!(self, Op::Soft(_) | Op::Backend)
    }

    /// Re-arm the ended operation for `mode` on `key` (see
    /// `PreparedOp::rearm`): true when this is then an active software
    /// operation; false when one must be built (a kept operation that
    /// cannot re-arm is let go of, its buffer wiped as it drops).
    // The C_EncryptInit path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn rearm(&mut self, key: &SessionKey, mode: &Mode<'_>, dir: Direction) -> bool {
        // Moved into place first, then re-armed there: moving it after the
        // writes would reload them at once, a store-forwarding stall.
        match std::mem::replace(self, Op::Idle) {
            Op::Ended(op) => *self = Op::Soft(op),
            other => {
                *self = other;
                return false;
            }
        }
        let rearmed = match self {
            Op::Soft(op) => op.rearm(key, mode, dir),
            _ => false,
        };
        if !rearmed {
            // Another key or mode: the caller builds a new operation.
            *self = Op::Idle;
        }
        rearmed
    }
}

/// A message-based operation (PKCS#11 3.0 `C_MessageEncryptInit` and
/// `C_MessageDecryptInit`).
pub enum MsgOp {
    Idle,
    /// AES-GCM on a DEK (see `token::message`).
    Soft(Box<crate::token::message::SoftMessages>),
    /// Forwarded to the backend session.
    Backend,
}

impl MsgOp {
    pub fn is_active(&self) -> bool {
        !matches!(self, MsgOp::Idle)
    }
}

/// A software MAC operation (AES-CMAC on a DEK).
pub struct MacOp {
    pub op: crate::crypto::CmacOp,
    /// Whether an update came: then only the final call may end it.
    pub multi_part: bool,
}

pub struct Find {
    pub handles: Vec<CK_OBJECT_HANDLE>,
    pub pos: usize,
}

pub struct Ops {
    pub encrypt: Op,
    pub decrypt: Op,
    pub find: Option<Find>,
    /// Software sign and verify operations; None when the session's
    /// operation (if any) is the backend's.
    pub sign: Option<MacOp>,
    pub verify: Option<MacOp>,
    /// The DEK this session last encrypted with, and the one it last
    /// decrypted with (see `remembered`).
    pub last_encrypt_key: Option<RememberedKey>,
    pub last_decrypt_key: Option<RememberedKey>,
    /// A wiped multi-part buffer from an ended operation, for the next one.
    spare: Option<SpareBuffer>,
    /// Whether the operation of each direction (encrypt, decrypt) had an
    /// update: it can then only be finished, not done in one call.
    multi_part: [bool; 2],
    /// The message-based operation of each direction (encrypt, decrypt).
    messages: [MsgOp; 2],
    /// The session's run of GCM invocation numbers (see
    /// `envelope::gcm_budget`), for the key it last encrypted with.
    pub gcm: Option<Lease>,
}

impl Ops {
    fn new() -> Self {
        Ops {
            encrypt: Op::Idle,
            decrypt: Op::Idle,
            find: None,
            sign: None,
            verify: None,
            last_encrypt_key: None,
            last_decrypt_key: None,
            spare: None,
            multi_part: [false; 2],
            messages: [MsgOp::Idle, MsgOp::Idle],
            gcm: None,
        }
    }

    fn index(dir: Direction) -> usize {
        match dir {
            Direction::Encrypt => 0,
            Direction::Decrypt => 1,
        }
    }

    /// The message-based operation of one direction.
    pub fn message(&mut self, dir: Direction) -> &mut MsgOp {
        &mut self.messages[Self::index(dir)]
    }

    /// The message-based operation of one direction and the session's run
    /// of GCM invocation numbers.
    pub fn message_and_gcm(&mut self, dir: Direction) -> (&mut MsgOp, &mut Option<Lease>) {
        (&mut self.messages[Self::index(dir)], &mut self.gcm)
    }

    /// The software MAC operation slot of one direction.
    pub fn mac(&mut self, dir: crate::token::mac::MacDir) -> &mut Option<MacOp> {
        match dir {
            crate::token::mac::MacDir::Sign => &mut self.sign,
            crate::token::mac::MacDir::Verify => &mut self.verify,
        }
    }

    pub fn is_multi_part(&self, dir: Direction) -> bool {
        self.multi_part[Self::index(dir)]
    }

    pub fn mark_multi_part(&mut self, dir: Direction) {
        self.multi_part[Self::index(dir)] = true;
    }

    /// Start a software operation in direction `dir`.
    // The C_EncryptInit path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn start(&mut self, dir: Direction, op: PreparedOp) {
        *self.direction(dir).0 = Op::Soft(op);
        self.started(dir);
    }

    /// The software operation in direction `dir` was just put in place or
    /// re-armed: it is single-part so far and gets the spare buffer.
    // The C_EncryptInit path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn started(&mut self, dir: Direction) {
        self.multi_part[Self::index(dir)] = false;
        if let Some(spare) = self.spare.take() {
            self.spare = match self.direction(dir).0 {
                Op::Soft(op) => op.lend_buffer(spare),
                _ => Some(spare),
            };
        }
    }

    /// End the operation in direction `dir`, keeping its buffer (wiped)
    /// and, if it can be re-armed, the operation itself.
    pub fn end(&mut self, dir: Direction) {
        self.multi_part[Self::index(dir)] = false;
        let (slot, spare) = self.slot_and_spare(dir);
        match slot {
            Op::Soft(op) => {
                // Kept with its buffer, wiped: the next message under the
                // same key re-arms both (no buffer handed to `spare` and
                // back). Else the buffer goes to the next operation.
                if op.keep() {
                    if let Op::Soft(op) = std::mem::replace(slot, Op::Idle) {
                        *slot = Op::Ended(op);
                    }
                    return;
                }
                if let Some(buf) = op.reclaim_buffer() {
                    spare.get_or_insert(buf);
                }
                *slot = Op::Idle;
            }
            Op::Backend => *slot = Op::Idle,
            Op::Idle | Op::Ended(_) => {}
        }
    }

    /// Let go of the kept operation of direction `dir` (its key is no
    /// longer the remembered one), handing its buffer to the next.
    pub fn forget_ended(&mut self, dir: Direction) {
        let (slot, spare) = self.slot_and_spare(dir);
        if let Op::Ended(op) = slot {
            if let Some(buf) = op.reclaim_buffer() {
                spare.get_or_insert(buf);
            }
            *slot = Op::Idle;
        }
    }

    /// The operation slot of one direction and the spare buffer.
    fn slot_and_spare(&mut self, dir: Direction) -> (&mut Op, &mut Option<SpareBuffer>) {
        match dir {
            Direction::Encrypt => (&mut self.encrypt, &mut self.spare),
            Direction::Decrypt => (&mut self.decrypt, &mut self.spare),
        }
    }

    /// End software operations and forget remembered keys (their key
    /// values are released); backend operations are the backend's to end.
    pub fn drop_soft(&mut self) {
        for op in [&mut self.encrypt, &mut self.decrypt] {
            if matches!(op, Op::Soft(_) | Op::Ended(_)) {
                *op = Op::Idle;
            }
        }
        self.last_encrypt_key = None;
        self.last_decrypt_key = None;
        for m in &mut self.messages {
            if matches!(m, MsgOp::Soft(_)) {
                *m = MsgOp::Idle;
            }
        }
        self.gcm = None;
        self.spare = None;
        self.sign = None;
        self.verify = None;
    }

    /// The operation slot, the remembered key of one direction and the
    /// session's run of GCM invocation numbers.
    pub fn direction_and_gcm(
        &mut self,
        dir: Direction,
    ) -> (&mut Op, &mut Option<RememberedKey>, &mut Option<Lease>) {
        match dir {
            Direction::Encrypt => (&mut self.encrypt, &mut self.last_encrypt_key, &mut self.gcm),
            Direction::Decrypt => (&mut self.decrypt, &mut self.last_decrypt_key, &mut self.gcm),
        }
    }

    /// The operation slot and the remembered key of one direction.
    pub fn direction(&mut self, dir: Direction) -> (&mut Op, &mut Option<RememberedKey>) {
        match dir {
            Direction::Encrypt => (&mut self.encrypt, &mut self.last_encrypt_key),
            Direction::Decrypt => (&mut self.decrypt, &mut self.last_decrypt_key),
        }
    }
}

/// Aligned to whole cache lines (128 bytes: x86 fetches lines in pairs):
/// its count and its mutex are written on every call, and must not share a
/// line with another session that another thread uses.
#[repr(align(128))]
pub struct Session {
    pub handle: CK_SESSION_HANDLE,
    pub slot: usize,
    pub flags: CK_FLAGS,
    /// The backend session behind this one; replaced when the backend lost
    /// it (an HSM reconnect), see `token::forward`.
    backend: AtomicU64,
    /// Set once the handle is closed: threads that remember this session
    /// (see `session_cache`) check it, since they skip the handle table.
    closed: AtomicBool,
    ops: Mutex<Ops>,
}

impl Session {
    pub fn ops(&self) -> Result<MutexGuard<'_, Ops>> {
        Ok(unpoisoned(self.ops.lock()))
    }

    pub fn backend(&self) -> CK_SESSION_HANDLE {
        self.backend.load(Ordering::Acquire) as CK_SESSION_HANDLE
    }

    pub fn set_backend(&self, bh: CK_SESSION_HANDLE) {
        self.backend.store(handle_bits(bh), Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The handle is gone: say so to threads that remember it, and release
    /// every key value this session holds, since such a thread may keep the
    /// session itself alive for a while.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut ops = unpoisoned(self.ops.lock());
        ops.drop_soft();
        ops.find = None;
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
            backend: AtomicU64::new(handle_bits(backend)),
            closed: AtomicBool::new(false),
            ops: Mutex::new(Ops::new()),
        };
        unpoisoned(self.map.write()).insert(handle, Arc::new(s));
        Ok(handle)
    }

    pub fn get(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Session>> {
        let m = unpoisoned(self.map.read());
        m.get(&h)
            .cloned()
            .ok_or(Error::Rv(CKR_SESSION_HANDLE_INVALID))
    }

    /// Take the session out of the table and close it (see `Session::close`).
    pub fn remove(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Session>> {
        let mut m = unpoisoned(self.map.write());
        let s = m.remove(&h).ok_or(Error::Rv(CKR_SESSION_HANDLE_INVALID))?;
        drop(m);
        s.close();
        Ok(s)
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

/// CK_SESSION_HANDLE is a CK_ULONG: 32 or 64 bits by platform.
#[allow(clippy::unnecessary_cast)]
fn handle_bits(h: CK_SESSION_HANDLE) -> u64 {
    h as u64
}
