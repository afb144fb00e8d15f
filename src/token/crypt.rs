//! Encryption and decryption: software ciphers on DEKs, forwarding for
//! backend keys. Once a DEK's value is cached, this path makes no backend call.

use std::sync::Arc;

use cryptoki_sys::*;

use super::module::Module;
use super::objects::Object;
use super::session::Op;
use super::sessions::lookup;
use crate::crypto::{self, CryptoError, Direction, Mode};
use crate::error::{Error, Result};
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
    /// Forward the same call to this backend session.
    Forward(Arc<Module>, CK_SESSION_HANDLE),
    /// Forward an init to this backend session, with the backend's key handle.
    ForwardInit(Arc<Module>, CK_SESSION_HANDLE, CK_OBJECT_HANDLE),
}

fn slot_of(ops: &mut super::session::Ops, dir: Direction) -> &mut Op {
    match dir {
        Direction::Encrypt => &mut ops.encrypt,
        Direction::Decrypt => &mut ops.decrypt,
    }
}

/// C_EncryptInit / C_DecryptInit. `soft` is the mechanism parsed for the
/// software engines (an error if it is not one of theirs); `raw` is the
/// caller's mechanism, forwarded untouched for backend keys.
pub fn init(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    mech: CK_MECHANISM_TYPE,
    soft: Result<Mode>,
    key: CK_OBJECT_HANDLE,
) -> Result<Step> {
    let (m, s) = lookup(h)?;
    let mut ops = s.ops()?;
    let op = slot_of(&mut ops, dir);
    if op.is_active() {
        return Err(Error::Rv(CKR_OPERATION_ACTIVE));
    }
    let obj = m
        .objects
        .get(key)
        .map_err(|_| Error::Rv(CKR_KEY_HANDLE_INVALID))?;
    match obj {
        Object::Dek(d) => {
            // Checked under the read lock: no copy of the key's state.
            let st = d.state.read().map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?;
            if d.slot != s.slot || (st.attrs.flag(CKA_PRIVATE) && !m.is_user(s.slot)) {
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
            let mode = soft?;
            let env = m.envelope_for(d.slot)?;
            let key = env.value(
                &m.backend,
                &d.id,
                &st.attrs,
                &st.record,
                &st.binding,
                d.is_token().then_some(st.generation),
            )?;
            drop(st);
            *op = Op::Soft(crypto::new_prepared_op(&key, &mode, dir)?);
            Ok(Step::Done(0))
        }
        Object::Backend { .. } => {
            // Refuses the KEK, and keys of another slot.
            let bkey = super::object_ops::backend_key(&m, &s, key)?;
            *op = Op::Backend;
            Ok(Step::ForwardInit(m.clone(), s.backend, bkey))
        }
    }
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
    let (m, s) = lookup(h)?;
    let mut ops = s.ops()?;
    let op = slot_of(&mut ops, dir);
    let cipher = match op {
        // Bad pointers are reported first, with or without an operation.
        Op::Idle => {
            return Err(args()
                .err()
                .unwrap_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED)))
        }
        Op::Backend => return Ok(Step::Forward(m.clone(), s.backend)),
        Op::Soft(c) => c,
    };
    let (input, out) = match args() {
        Ok(a) => a,
        Err(e) => {
            *op = Op::Idle;
            return Err(e);
        }
    };
    let result = match out {
        // A length query has no side effects.
        Out::Query => {
            return Ok(Step::Done(match part {
                Part::Single => cipher.oneshot_len(input.len()),
                Part::Update => cipher.update_len(input.len()),
                Part::Final => cipher.finish_len(),
            }))
        }
        Out::Buf(buf) => match part {
            Part::Single => cipher.oneshot(&input, buf),
            Part::Update => cipher.update(&input, buf),
            Part::Final => cipher.finish(buf),
        },
    };
    match result {
        Ok(n) => {
            if part != Part::Update {
                *op = Op::Idle;
            }
            Ok(Step::Done(n))
        }
        // The caller may retry with a larger buffer: the operation stays.
        Err(e @ CryptoError::BufferTooSmall { .. }) => Err(e.into()),
        // A ciphertext invalid only by its length has its own code.
        Err(CryptoError::DataLen) if dir == Direction::Decrypt => {
            *op = Op::Idle;
            Err(Error::Rv(CKR_ENCRYPTED_DATA_LEN_RANGE))
        }
        Err(e) => {
            *op = Op::Idle;
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
                *slot_of(&mut ops, dir) = Op::Idle;
            }
        }
    }
}

/// A backend init failed: nothing is active.
pub fn init_failed(h: CK_SESSION_HANDLE, dir: Direction) {
    forwarded(h, dir, Part::Final, CKR_GENERAL_ERROR, false);
}
