//! Single-part encryption and decryption on the backend in exactly two
//! calls (init, then one call into a buffer sized up front): on a network
//! HSM every call is a round trip, so no size query is made first.

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki_sys::*;

use crate::backend::{bcall, check, Backend};
use crate::error::{Error, Result};
use crate::secret::SecretBytes;
use crate::vendor::CKR_HSME_RECORD_INVALID;

/// Encrypt `data` with `key`; the output is at most `out_cap` bytes.
pub fn encrypt(
    backend: &Backend,
    session: &Session,
    mech: &mut CK_MECHANISM,
    key: ObjectHandle,
    data: &[u8],
    out_cap: usize,
) -> Result<Vec<u8>> {
    let sh = session.handle();
    check(
        "C_EncryptInit",
        // SAFETY: a function of the backend's own list; every pointer is to a
        // local or buffer that outlives the call.
        unsafe { bcall!(backend, C_EncryptInit(sh, mech, key.handle())) },
    )?;
    let mut out = vec![0u8; out_cap];
    let mut len = out.len() as CK_ULONG;
    let call = |out: &mut [u8], len: &mut CK_ULONG| {
        // SAFETY: a function of the backend's own list; every pointer is to a
        // local or buffer that outlives the call.
        unsafe {
            bcall!(
                backend,
                C_Encrypt(
                    sh,
                    data.as_ptr() as *mut u8,
                    data.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    len
                )
            )
        }
    };
    let mut rv = call(&mut out, &mut len);
    // The operation is still active: finish it with the size the backend
    // asked for, or the pooled session stays busy for good.
    if rv == CKR_BUFFER_TOO_SMALL && len as usize > out.len() {
        out = vec![0u8; len as usize];
        rv = call(&mut out, &mut len);
    }
    check("C_Encrypt", rv)?;
    out.truncate(len as usize);
    Ok(out)
}

/// Decrypt a wrapped value with `key` straight into locked memory (the
/// input's length bounds the output for every mechanism used here). A
/// failed integrity or padding check is `CKR_HSME_RECORD_INVALID`.
pub fn decrypt(
    backend: &Backend,
    session: &Session,
    mech: &mut CK_MECHANISM,
    key: ObjectHandle,
    data: &[u8],
) -> Result<SecretBytes> {
    let sh = session.handle();
    check(
        "C_DecryptInit",
        // SAFETY: a function of the backend's own list; every pointer is to a
        // local or buffer that outlives the call.
        unsafe { bcall!(backend, C_DecryptInit(sh, mech, key.handle())) },
    )?;
    let mut buf = SecretBytes::new(data.len());
    let mut len = data.len() as CK_ULONG;
    let call = |buf: &mut SecretBytes, len: &mut CK_ULONG| {
        // SAFETY: a function of the backend's own list; every pointer is to a
        // local or buffer that outlives the call.
        unsafe {
            bcall!(
                backend,
                C_Decrypt(
                    sh,
                    data.as_ptr() as *mut u8,
                    data.len() as CK_ULONG,
                    buf.as_mut_slice().as_mut_ptr(),
                    len
                )
            )
        }
    };
    let mut rv = call(&mut buf, &mut len);
    // As for encryption: finish the still-active operation.
    if rv == CKR_BUFFER_TOO_SMALL && len as usize > buf.len() {
        buf = SecretBytes::new(len as usize);
        rv = call(&mut buf, &mut len);
    }
    match rv {
        CKR_OK => {}
        // A failed tag or padding check, or a block for another key:
        // SoftHSM2 answers CKR_GENERAL_ERROR, others
        // CKR_ENCRYPTED_DATA_INVALID. Either way the record does not open.
        CKR_GENERAL_ERROR | CKR_ENCRYPTED_DATA_INVALID | CKR_ENCRYPTED_DATA_LEN_RANGE => {
            return Err(Error::Rv(CKR_HSME_RECORD_INVALID))
        }
        rv => return Err(Error::backend("C_Decrypt", rv)),
    }
    if len as usize > buf.len() {
        return Err(Error::Rv(CKR_GENERAL_ERROR));
    }
    buf.truncate(len as usize);
    Ok(buf)
}
