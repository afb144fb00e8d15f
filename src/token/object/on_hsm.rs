//! A DEK made real on the HSM for one call, for a mechanism only the HSM
//! runs (RSA wrap of a DEK, a DEK digested with C_DigestKey, a derivation or
//! key wrap the software engines do not offer). The DEK's value becomes a
//! short-lived session object on the application's own backend session,
//! with the DEK's usage flags, sensitive and extractable as the DEK is; the
//! call is forwarded; the object is destroyed when this guard drops. No
//! search through the module sees it meanwhile (`TempGate`).

use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::backend::AttrIn;
use crate::error::{Error, Result};
use crate::token::forward::forward;
use crate::token::module::Module;
use crate::token::object::table::{Dek, DekState};
use crate::token::session::Session;

/// Usage flags a copy on the HSM takes from its DEK.
const USAGE: [CK_ATTRIBUTE_TYPE; 7] = [
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_DERIVE,
];

pub struct OnHsm<'a> {
    m: &'a Module,
    s: &'a Session,
    handle: CK_OBJECT_HANDLE,
    _gate: crate::backend::kek::TempHold<'a>,
}

impl OnHsm<'_> {
    /// The backend handle of the copy.
    pub fn handle(&self) -> CK_OBJECT_HANDLE {
        self.handle
    }
}

impl Drop for OnHsm<'_> {
    fn drop(&mut self) {
        let (m, h) = (self.m, self.handle);
        if let Err(e) = forward(m, self.s, |bs| m.backend.destroy_object(bs, h)) {
            crate::log_warn!("a short-lived DEK copy on the HSM was not destroyed: {e}");
        }
    }
}

const SECRET_KEY: [u8; size_of::<CK_ULONG>()] = CKO_SECRET_KEY.to_ne_bytes();
const AES: [u8; size_of::<CK_ULONG>()] = CKK_AES.to_ne_bytes();
pub const NO: [u8; 1] = [CK_FALSE];
pub const YES: [u8; 1] = [CK_TRUE];

/// The start of every template for a short-lived AES key on the HSM: a
/// secret AES session object.
pub fn session_aes_key() -> Vec<AttrIn<'static>> {
    vec![
        AttrIn {
            ty: CKA_CLASS,
            value: &SECRET_KEY,
        },
        AttrIn {
            ty: CKA_KEY_TYPE,
            value: &AES,
        },
        AttrIn {
            ty: CKA_TOKEN,
            value: &NO,
        },
    ]
}

/// Make `d` (in state `st`) a session object on the HSM, for one call on
/// session `s`.
pub fn materialize<'a>(m: &'a Module, s: &'a Session, d: &Dek, st: &DekState) -> Result<OnHsm<'a>> {
    let env = m.envelope_for(d.slot)?;
    let key = env.value(d.key_ref(st))?;
    let flag = |ty| [u8::from(st.attrs.flag(ty))];
    let flags: Vec<(CK_ATTRIBUTE_TYPE, [u8; 1])> = USAGE.iter().map(|&ty| (ty, flag(ty))).collect();
    let value = Zeroizing::new(key.value().to_vec());
    let extractable = flag(CKA_EXTRACTABLE);
    let sensitive = flag(CKA_SENSITIVE);
    let mut t = session_aes_key();
    t.extend([
        AttrIn {
            ty: CKA_PRIVATE,
            value: &YES,
        },
        AttrIn {
            ty: CKA_SENSITIVE,
            value: &sensitive,
        },
        AttrIn {
            ty: CKA_EXTRACTABLE,
            value: &extractable,
        },
        AttrIn {
            ty: CKA_VALUE,
            value: &value,
        },
    ]);
    t.extend(flags.iter().map(|(ty, v)| AttrIn { ty: *ty, value: v }));
    let gate = env.temp_gate.hold();
    let handle = forward(m, s, |bs| m.backend.create_object(bs, &t)).map_err(|e| match e.rv() {
        // The HSM refuses what the DEK allows (a template it cannot take).
        CKR_TEMPLATE_INCONSISTENT | CKR_ATTRIBUTE_VALUE_INVALID => {
            Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED)
        }
        _ => e,
    })?;
    Ok(OnHsm {
        m,
        s,
        handle,
        _gate: gate,
    })
}
