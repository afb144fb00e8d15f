//! C_SessionCancel (PKCS#11 3.0): end the session's active operations of
//! the kinds the flags name. Software operations on DEKs simply end;
//! operations forwarded to a backend that speaks only 2.40 are ended there
//! by finishing them and discarding what they return.

use cryptoki_sys::*;

use crate::backend::calls::Operation;
use crate::crypto::Direction;
use crate::error::Result;
use crate::token::forward::forward;
use crate::token::session::lookup;
use crate::token::session::table::{MsgOp, Op};

pub fn cancel(h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<()> {
    let (m, s) = lookup(h)?;
    let mut backend_ops = Vec::new();
    let mut flags_done: CK_FLAGS = 0;
    let mut backend_message_flags: CK_FLAGS = 0;
    {
        let mut ops = s.ops()?;
        for (flag, dir, op) in [
            (CKF_ENCRYPT, Direction::Encrypt, Operation::Encrypt),
            (CKF_DECRYPT, Direction::Decrypt, Operation::Decrypt),
        ] {
            if flags & flag == 0 {
                continue;
            }
            if matches!(ops.direction(dir).0, Op::Backend) {
                backend_ops.push(op);
            }
            ops.end(dir);
        }
        if flags & CKF_FIND_OBJECTS != 0 {
            ops.find = None;
        }
        // Message operations: ours end here; a backend's (on a 3.0
        // backend) by its own C_SessionCancel.
        for (flag, dir) in [
            (CKF_MESSAGE_ENCRYPT, Direction::Encrypt),
            (CKF_MESSAGE_DECRYPT, Direction::Decrypt),
        ] {
            if flags & flag == 0 {
                continue;
            }
            crate::token::message::hand_over_uses(&m, &s, &mut ops);
            match std::mem::replace(ops.message(dir), MsgOp::Idle) {
                MsgOp::Backend => backend_message_flags |= flag,
                MsgOp::Idle | MsgOp::Soft(_) => {}
            }
        }
        // A software MAC ends here; none means a backend one may be active.
        if flags & CKF_SIGN != 0 && ops.sign.take().is_some() {
            flags_done |= CKF_SIGN;
        }
        if flags & CKF_VERIFY != 0 && ops.verify.take().is_some() {
            flags_done |= CKF_VERIFY;
        }
    }
    // Forwarded without our bookkeeping: ended on the backend if active.
    for (flag, op) in [
        (CKF_DIGEST, Operation::Digest),
        (CKF_SIGN, Operation::Sign),
        (CKF_VERIFY, Operation::Verify),
        (CKF_SIGN_RECOVER, Operation::SignRecover),
        (CKF_VERIFY_RECOVER, Operation::VerifyRecover),
    ] {
        if flags & flag != 0 && flags_done & flag == 0 {
            backend_ops.push(op);
        }
    }
    for op in backend_ops {
        forward(&m, &s, |bs| m.backend.end_operation(bs, op))?;
    }
    if backend_message_flags != 0 {
        forward(&m, &s, |bs| {
            m.backend.session_cancel(bs, backend_message_flags)
        })?;
    }
    Ok(())
}
