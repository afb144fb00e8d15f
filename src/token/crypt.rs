//! Encryption and decryption: software ciphers on DEKs, forwarding for
//! backend keys. Once a DEK's value is cached, this path makes no backend call.

use std::sync::Arc;

use cryptoki_sys::*;

use crate::crypto::{self, CipherOp, CryptoError, Direction, Mode};
use crate::error::{Error, Result};
use crate::token::module::{Module, ModuleRef};
use crate::token::object::table::{Dek, Object};
use crate::token::session::calls::{lookup, with_session};
use crate::token::session::remembered::{Checked, RememberedKey};
use crate::token::session::table::{Op, Session};
use zeroize::Zeroizing;

/// The caller's input: borrowed, or copied first when it overlaps the output
/// (PKCS#11 lets pData and pEncryptedData be the same buffer).
pub enum Input<'a> {
    Borrowed(&'a [u8]),
    Copied(Zeroizing<Vec<u8>>),
}

impl std::ops::Deref for Input<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Input::Borrowed(b) => b,
            Input::Copied(v) => v,
        }
    }
}

/// Where the caller's output goes: a length query, or their buffer.
pub enum Out<'a> {
    Query,
    Buf(&'a mut [u8]),
}

/// What the shim must do next.
pub enum Step {
    Done(usize),
    /// Forward the same call (see `token::forward::forward_session`).
    Forward,
    /// Forward an init, with the backend's key handle.
    ForwardInit(CK_OBJECT_HANDLE),
}

/// C_EncryptInit / C_DecryptInit. `soft` parses the mechanism for the
/// software engines (an error if it is not one of theirs); `mech` is the
/// caller's mechanism type. Backend keys get the caller's mechanism
/// forwarded untouched by the shim.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn init<'p>(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    mech: CK_MECHANISM_TYPE,
    soft: impl FnOnce() -> Result<Mode<'p>>,
    key: CK_OBJECT_HANDLE,
) -> Result<Step> {
    with_session(h, |m, s| init_on(m, s, dir, mech, soft, key))
}

// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
fn init_on<'p>(
    m: ModuleRef,
    s: &Session,
    dir: Direction,
    mech: CK_MECHANISM_TYPE,
    soft: impl FnOnce() -> Result<Mode<'p>>,
    key: CK_OBJECT_HANDLE,
) -> Result<Step> {
    let mut ops = s.ops()?;
    let (op, last, gcm) = ops.direction_and_gcm(dir);
    if op.is_active() {
        return Err(Error::Rv(CKR_OPERATION_ACTIVE));
    }
    // Parsed here, not passed in parsed: a `Result<Mode>` moved through
    // the session lookup's closure is reloaded in pieces that stall.
    // `soft` is only ever used on a DEK: the IV policy is the DEKs'.
    let soft = soft().and_then(|mode| match (dir, mode) {
        (Direction::Encrypt, Mode::Gcm { .. }) => {
            crate::token::message::caller_iv_allowed(&m, "C_EncryptInit").map(|()| mode)
        }
        _ => Ok(mode),
    });
    // Warm: the same DEK as last time in this direction, nothing changed.
    // One clock reading serves the checks and the audit count.
    let now = crate::clock::mono_ms();
    if let Some(r) = last.as_ref() {
        if let Some(k) = r.reuse_at(key, mech, &m, now) {
            let mode = soft?;
            crate::token::approved::cipher(&m, &mode, k.value().len())?;
            // The ended operation of the same key, made ready again in
            // place; else a new one.
            if !op.rearm(k, &mode, dir) {
                *op = Op::Soft(crypto::new_prepared_op(k, &mode, dir)?);
            }
            let pending = Unfinished(Some(op));
            count_gcm(&m, s, dir, &mode, r, gcm)?;
            count_use(&m, s, r, now);
            pending.finished();
            ops.started(dir);
            return Ok(Step::Done(0));
        }
    }
    // Stale or another key: let go of it now (it may be a destroyed key's),
    // and of the ended operation on it.
    *last = None;
    ops.forget_ended(dir);
    let (op, last, gcm) = ops.direction_and_gcm(dir);
    let obj = match crate::token::store_sync::object(&m, key) {
        Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID)) => Err(Error::Rv(CKR_KEY_HANDLE_INVALID)),
        r => r,
    }?;
    match obj {
        Object::Dek(d) => {
            let (remembered, mode) = check_and_fetch(&m, s, d, dir, mech, key, soft)?;
            crate::token::approved::cipher(&m, &mode, remembered.key().value().len())?;
            let new_op = crypto::new_prepared_op(remembered.key(), &mode, dir);
            if new_op.is_ok() {
                count_gcm(&m, s, dir, &mode, &remembered, gcm)?;
            }
            count_use(&m, s, &remembered, now);
            *last = Some(remembered);
            ops.start(dir, new_op?);
            Ok(Step::Done(0))
        }
        Object::Backend { .. } => {
            // Refuses the KEK, and keys of another slot.
            let bkey = crate::token::object::manage::backend_key(&m, s, key)?;
            *op = Op::Backend;
            Ok(Step::ForwardInit(bkey))
        }
        // `store_sync::object` loads these.
        Object::Stored { .. } => Err(Error::Rv(CKR_KEY_HANDLE_INVALID)),
    }
}

/// An operation put in its slot by an init that is not done yet: let go of
/// if the init fails or panics (a panic is caught at the C boundary and
/// the session goes on), so that no operation is ever active whose
/// invocation was not counted.
struct Unfinished<'a>(Option<&'a mut Op>);

impl Unfinished<'_> {
    fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(op) = self.0.take() {
            *op = Op::Idle;
        }
    }
}

/// An AES-GCM encryption takes one invocation number of its key (the
/// caller's IV is used; the number only counts it): refused with
/// `CKR_HSME_INVOCATION_LIMIT` once the key is spent.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
fn count_gcm(
    m: &Module,
    s: &Session,
    dir: Direction,
    mode: &Mode<'_>,
    key: &RememberedKey,
    gcm: &mut Option<crate::envelope::gcm_budget::Lease>,
) -> Result<()> {
    if dir == Direction::Encrypt && matches!(mode, Mode::Gcm { .. }) {
        crate::token::message::take_invocation(m, s, key, gcm)?;
    }
    Ok(())
}

/// A DEK use, counted (not logged per call) when there is an audit log.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
fn count_use(m: &Module, s: &Session, r: &RememberedKey, now_ms: u64) {
    if let Some(audit) = m.envelope_for(s.slot).ok().and_then(|e| e.audit()) {
        r.count_uses(audit, 1, now_ms);
    }
}

/// The full checks of an init on a DEK, and its key (from the cache, else
/// unwrapped on the HSM), as the session will remember them.
fn check_and_fetch<'m>(
    m: &Module,
    s: &Session,
    d: Arc<Dek>,
    dir: Direction,
    mech: CK_MECHANISM_TYPE,
    handle: CK_OBJECT_HANDLE,
    soft: Result<Mode<'m>>,
) -> Result<(RememberedKey, Mode<'m>)> {
    let mut parsed = None;
    let key = fetch_checked(m, s, d, dir, mech, handle, || {
        soft.map(|mode| parsed = Some(mode))
    })?;
    let mode = parsed.ok_or(Error::Rv(CKR_GENERAL_ERROR))?;
    Ok((key, mode))
}

/// A DEK or a backend key, for an init naming `handle`.
pub enum KeyFor {
    Dek(RememberedKey),
    /// The backend's handle (the KEK and keys of other slots refused).
    Backend(CK_OBJECT_HANDLE),
}

/// The key an init of `handle` in direction `dir` with `mech` uses, after
/// every check of a full init; `params_ok` reports a bad mechanism
/// parameter after the key's own checks and before any HSM call (for a
/// DEK only).
pub fn key_for(
    m: &Module,
    s: &Session,
    dir: Direction,
    mech: CK_MECHANISM_TYPE,
    handle: CK_OBJECT_HANDLE,
    params_ok: impl FnOnce() -> Result<()>,
) -> Result<KeyFor> {
    let obj = match crate::token::store_sync::object(m, handle) {
        Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID)) => Err(Error::Rv(CKR_KEY_HANDLE_INVALID)),
        r => r,
    }?;
    match obj {
        Object::Dek(d) => fetch_checked(m, s, d, dir, mech, handle, params_ok).map(KeyFor::Dek),
        // A backend key gets the caller's mechanism unchanged: not ours to check.
        Object::Backend { .. } => {
            crate::token::object::manage::backend_key(m, s, handle).map(KeyFor::Backend)
        }
        // `store_sync::object` loads these.
        Object::Stored { .. } => Err(Error::Rv(CKR_KEY_HANDLE_INVALID)),
    }
}

/// `check_and_fetch` with the parameter check as a callback.
fn fetch_checked(
    m: &Module,
    s: &Session,
    d: Arc<Dek>,
    dir: Direction,
    mech: CK_MECHANISM_TYPE,
    handle: CK_OBJECT_HANDLE,
    params_ok: impl FnOnce() -> Result<()>,
) -> Result<RememberedKey> {
    // Checked under the read lock: no copy of the key's state.
    let st = d.state.read();
    // Under the read lock, so it belongs to the state checked below.
    let stamp = d.state.stamp();
    let private = st.attrs.flag(CKA_PRIVATE);
    if d.slot != s.slot || (private && !m.is_user(s.slot)) {
        return Err(Error::Rv(CKR_KEY_HANDLE_INVALID));
    }
    let usage = if dir == Direction::Encrypt {
        CKA_ENCRYPT
    } else {
        CKA_DECRYPT
    };
    if !st.attrs.flag(usage) {
        return Err(Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
    }
    if !st.attrs.mechanism_allowed(mech) {
        return Err(Error::Rv(CKR_MECHANISM_INVALID));
    }
    params_ok()?;
    let env = m.envelope_for(d.slot)?;
    // Before the lookup: a removal from the cache after this is noticed.
    let epoch = env.cache.epoch();
    let key = env.value(d.key_ref(&st))?;
    let label = st.attrs.label().to_vec();
    let kek_version = crate::envelope::Envelope::record_version(&st.record).unwrap_or(0);
    drop(st);
    let checked = Checked {
        handle,
        mechanism: mech,
        dek: d,
        stamp,
        epoch,
        private,
    };
    Ok(RememberedKey::new(checked, key).with_tag(label, kek_version))
}

/// Which part of an operation a call is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Single,
    Update,
    Final,
}

/// C_Encrypt / C_EncryptUpdate / C_EncryptFinal and their decrypt twins.
/// `args` reads the caller's buffers; it runs only for software operations,
/// and its failure ends the operation as any other error does.
pub fn step<'a>(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    part: Part,
    args: impl FnOnce() -> Result<(Input<'a>, Out<'a>)>,
) -> Result<Step> {
    with_session(h, |m, s| step_on(m, s, dir, part, args))
}

fn step_on<'a>(
    _m: ModuleRef,
    s: &Session,
    dir: Direction,
    part: Part,
    args: impl FnOnce() -> Result<(Input<'a>, Out<'a>)>,
) -> Result<Step> {
    let mut ops = s.ops()?;
    // C_Encrypt cannot finish what C_EncryptUpdate began: refused, and the
    // operation stays for C_EncryptFinal.
    if part == Part::Single && ops.is_multi_part(dir) {
        return Err(Error::Rv(CKR_OPERATION_ACTIVE));
    }
    let (op, _) = ops.direction(dir);
    let cipher = match op {
        // Bad pointers are reported first, with or without an operation.
        Op::Idle | Op::Ended(_) => {
            return Err(args()
                .err()
                .unwrap_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED)))
        }
        Op::Backend => return Ok(Step::Forward),
        Op::Soft(c) => c,
    };
    let (input, out) = match args() {
        Ok(a) => a,
        Err(e) => {
            ops.end(dir);
            return Err(e);
        }
    };
    let result = match out {
        // A length query has no side effects.
        Out::Query => {
            return Ok(Step::Done(match part {
                Part::Single => cipher.oneshot_len(input.len()),
                // At least the input's length, as SoftHSM2 answers: an
                // update that holds data back (GCM and CBC-PAD decryption)
                // would otherwise answer 0, and a client (PyKCS11) that
                // then passes an empty buffer passes NULL, a second query,
                // and its data is never fed.
                Part::Update => cipher.update_len(input.len()).max(input.len()),
                Part::Final => cipher.finish_len(),
            }));
        }
        Out::Buf(buf) => match part {
            Part::Single => cipher.oneshot(&input, buf),
            Part::Update => cipher.update(&input, buf),
            Part::Final => cipher.finish(buf),
        },
    };
    match result {
        Ok(n) => {
            match part {
                Part::Update => ops.mark_multi_part(dir),
                _ => ops.end(dir),
            }
            Ok(Step::Done(n))
        }
        // The caller may retry with a larger buffer: the operation stays.
        Err(e @ CryptoError::BufferTooSmall { .. }) => Err(e.into()),
        // A ciphertext invalid only by its length has its own code.
        Err(CryptoError::DataLen) if dir == Direction::Decrypt => {
            ops.end(dir);
            Err(Error::Rv(CKR_ENCRYPTED_DATA_LEN_RANGE))
        }
        Err(e) => {
            ops.end(dir);
            Err(e.into())
        }
    }
}

/// After a forwarded call: the backend ended the operation unless the call
/// was a length query, an update, or came back CKR_BUFFER_TOO_SMALL.
pub fn forwarded(h: CK_SESSION_HANDLE, dir: Direction, part: Part, rv: CK_RV, query: bool) {
    let ends = match rv {
        CKR_OK => !query && part != Part::Update,
        CKR_BUFFER_TOO_SMALL => false,
        _ => true,
    };
    if ends {
        if let Ok((_, s)) = lookup(h) {
            if let Ok(mut ops) = s.ops() {
                ops.end(dir);
            }
        }
    }
}

/// A backend init failed: nothing is active.
pub fn init_failed(h: CK_SESSION_HANDLE, dir: Direction) {
    forwarded(h, dir, Part::Final, CKR_GENERAL_ERROR, false);
}
