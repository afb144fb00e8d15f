//! Sign and verify: AES-CMAC in software on DEKs (CKM_AES_CMAC and
//! CKM_AES_CMAC_GENERAL), everything else forwarded to the backend.

use cryptoki_sys::*;

use crate::crypto::CmacOp;
use crate::error::{Error, Result};
use crate::token::crypt::{Out, Part};
use crate::token::object::dek;
use crate::token::object::manage::{backend_key, resolve, Target};
use crate::token::session::lookup;
use crate::token::session::table::MacOp;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MacDir {
    Sign,
    Verify,
}

/// What the shim does next.
pub enum MacStep {
    /// Done here, with this many bytes written (signing).
    Done(usize),
    /// The session's operation is the backend's: forward the call.
    Forward,
}

/// C_SignInit / C_VerifyInit. `mac_len` is the MAC length the mechanism
/// asks for if it is a CMAC mechanism (parsed by ffi), else None. Returns
/// the backend key to forward the init with, or None when it runs here.
pub fn init(
    h: CK_SESSION_HANDLE,
    dir: MacDir,
    mech: CK_MECHANISM_TYPE,
    mac_len: Option<Result<usize>>,
    key: CK_OBJECT_HANDLE,
) -> Result<Option<CK_OBJECT_HANDLE>> {
    let (m, s) = lookup(h)?;
    if s.ops()?.mac(dir).is_some() {
        return Err(Error::Rv(CKR_OPERATION_ACTIVE));
    }
    let d = match resolve(&m, &s, key).map_err(|_| Error::Rv(CKR_KEY_HANDLE_INVALID))? {
        Target::Dek(d) => d,
        Target::Backend(_) => return backend_key(&m, &s, key).map(Some),
    };
    let st = dek::visible(&m, &s, &d).map_err(|_| Error::Rv(CKR_KEY_HANDLE_INVALID))?;
    let usage = match dir {
        MacDir::Sign => CKA_SIGN,
        MacDir::Verify => CKA_VERIFY,
    };
    if !st.attrs.flag(usage) {
        return Err(Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
    }
    if !st.attrs.mechanism_allowed(mech) {
        return Err(Error::Rv(CKR_MECHANISM_INVALID));
    }
    let mac_len = mac_len.ok_or(Error::Rv(CKR_MECHANISM_INVALID))??;
    let env = m.envelope_for(d.slot)?;
    let key = env.value(d.key_ref(&st))?;
    drop(st);
    crate::token::approved::cmac(&m, key.value().len(), mac_len)?;
    let op =
        CmacOp::new(key.value(), mac_len).map_err(|_| Error::Rv(CKR_MECHANISM_PARAM_INVALID))?;
    *s.ops()?.mac(dir) = Some(MacOp {
        op,
        multi_part: false,
    });
    Ok(None)
}

/// Where a sign or verify call goes after the multi-part rules.
enum Next<'a> {
    /// Nothing more to do here (forward it, or an update was fed).
    Done(MacStep),
    /// The last call of a software operation: its MAC is due.
    Last(&'a mut MacOp),
}

fn next<'a>(slot: &'a mut Option<MacOp>, part: Part, data: &[u8]) -> Result<Next<'a>> {
    let Some(mac) = slot.as_mut() else {
        return Ok(Next::Done(MacStep::Forward));
    };
    match part {
        // A one-shot call cannot finish what an update began.
        Part::Single if mac.multi_part => Err(Error::Rv(CKR_OPERATION_ACTIVE)),
        Part::Update => {
            mac.op.update(data);
            mac.multi_part = true;
            Ok(Next::Done(MacStep::Done(0)))
        }
        _ => Ok(Next::Last(mac)),
    }
}

/// C_Sign / C_SignUpdate / C_SignFinal.
pub fn sign(h: CK_SESSION_HANDLE, part: Part, data: &[u8], out: Out<'_>) -> Result<MacStep> {
    let (_, s) = lookup(h)?;
    let mut ops = s.ops()?;
    let slot = ops.mac(MacDir::Sign);
    let mac = match next(slot, part, data)? {
        Next::Done(step) => return Ok(step),
        Next::Last(mac) => mac,
    };
    let n = mac.op.mac_len();
    let buf = match out {
        Out::Query => return Ok(MacStep::Done(n)),
        Out::Buf(buf) => buf,
    };
    let Some(dst) = buf.get_mut(..n) else {
        return Err(Error::BufferTooSmall(n));
    };
    mac.op.update(data);
    let made = mac.op.mac();
    *slot = None;
    dst.copy_from_slice(&made?);
    Ok(MacStep::Done(n))
}

/// C_Verify / C_VerifyUpdate / C_VerifyFinal (`sig` for the one-shot and
/// final calls).
pub fn verify(h: CK_SESSION_HANDLE, part: Part, data: &[u8], sig: &[u8]) -> Result<MacStep> {
    let (_, s) = lookup(h)?;
    let mut ops = s.ops()?;
    let slot = ops.mac(MacDir::Verify);
    let mac = match next(slot, part, data)? {
        Next::Done(step) => return Ok(step),
        Next::Last(mac) => mac,
    };
    mac.op.update(data);
    let (len_ok, valid) = (sig.len() == mac.op.mac_len(), mac.op.verify(sig));
    *slot = None;
    if !len_ok {
        return Err(Error::Rv(CKR_SIGNATURE_LEN_RANGE));
    }
    if !valid {
        return Err(Error::Rv(CKR_SIGNATURE_INVALID));
    }
    Ok(MacStep::Done(0))
}
