//! C_DigestKey: a backend key is forwarded; a DEK is made real on the HSM
//! for the call (`on_hsm`), so the HSM digests it under its own rules.

use cryptoki_sys::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::token::forward::forward_objects;
use crate::token::object::dek;
use crate::token::object::manage::{backend_key, resolve, Target};
use crate::token::object::on_hsm::materialize;
use crate::token::session::lookup;

pub fn digest_key(
    h: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    mut call: impl FnMut(&Backend, CK_SESSION_HANDLE, CK_OBJECT_HANDLE) -> CK_RV,
) -> Result<CK_RV> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, key).map_err(|_| Error::Rv(CKR_KEY_HANDLE_INVALID))? {
        Target::Dek(d) => {
            let st = dek::visible(&m, &s, &d)?;
            let copy = materialize(&m, &s, &d, &st)?;
            drop(st);
            Ok(forward_objects(&m, &s, |bs| {
                call(&m.backend, bs, copy.handle())
            }))
        }
        Target::Backend(_) => {
            let b = backend_key(&m, &s, key)?;
            Ok(forward_objects(&m, &s, |bs| call(&m.backend, bs, b)))
        }
    }
}
