//! Where the KEK is protected on the API. Through this module the KEK wraps
//! and unwraps DEKs with AES key wrap, and nothing else: as an AES oracle
//! (ECB/CBC encryption or key derivation, CMAC) it would reveal the GCM
//! keystream of the stored records; copied, changed or destroyed, it would
//! leak or shred every DEK.
//!
//! The check fails closed: any backend object whose label is the KEK's label
//! counts as a KEK, and so does one whose label cannot be read. Nothing can
//! be created, copied or renamed to that label through the module.

use cryptoki_sys::*;

use crate::error::{Error, Result};
use crate::token::forward::forward_objects;
use crate::token::forward::CKR_HSME_INTERNAL_RECONNECTED;
use crate::token::module::Module;
use crate::token::object::template::Template;
use crate::token::session::table::Session;

pub fn is_dek_slot(m: &Module, s: &Session) -> bool {
    m.dek_slot == Some(s.slot)
}

/// Whether a key the application asks for becomes a DEK on this slot.
/// `wants_dek` says whether the template asks for one (an AES secret key
/// without `CKA_HSME_ON_BACKEND`). On the DEK slot that is the answer; on a
/// slot without the KEK such a key is refused, since made on the backend it
/// would pass for a DEK and be none (fail closed): the application must ask
/// for a backend key with `CKA_HSME_ON_BACKEND`. A module configured with
/// `passthrough_only` makes no DEKs and passes every key through.
pub fn dek_here(
    m: &Module,
    s: &Session,
    call: &str,
    wants_dek: impl FnOnce() -> Result<bool>,
) -> Result<bool> {
    if m.config.passthrough_only {
        return Ok(false);
    }
    let wants = wants_dek()?;
    if wants && !is_dek_slot(m, s) {
        crate::log_warn!(
            "{call} on slot {} refused: the token there holds no KEK, so the AES key would not \
             be a DEK; set CKA_HSME_ON_BACKEND true in the template to make a plain backend key",
            s.slot
        );
        return Err(Error::Rv(crate::vendor::CKR_HSME_KEK_UNAVAILABLE));
    }
    Ok(wants)
}

/// Labels reserved for the module's own keys on the backend token: the KEK
/// and the audit log's HMAC key (whose MACs would otherwise be forgeable by
/// any application using the module).
fn protected_labels(m: &Module) -> [&[u8]; 2] {
    [
        m.config.kek_label.as_bytes(),
        m.config.audit_hmac_label.as_bytes(),
    ]
}

/// Whether the backend object `bh` is (or passes for) a KEK or the audit
/// key: a protected key.
pub fn is_kek(m: &Module, s: &Session, bh: CK_OBJECT_HANDLE) -> Result<bool> {
    if !is_dek_slot(m, s) {
        return Ok(false);
    }
    let want = protected_labels(m);
    match forward_objects(m, s, |bs| m.backend.attribute_bytes(bs, bh, CKA_LABEL)) {
        Ok(label) => Ok(want.contains(&label.as_slice())),
        // A reconnect: the whole call runs again, on the object found again.
        Err(e) if e.rv() == CKR_HSME_INTERNAL_RECONNECTED => Err(e),
        // The call with this handle will fail on its own.
        Err(e) if matches!(e.rv(), CKR_OBJECT_HANDLE_INVALID | CKR_KEY_HANDLE_INVALID) => Ok(false),
        // Unreadable: counts as a KEK (fail closed).
        Err(_) => Ok(true),
    }
}

/// Copy, change or destroy of a KEK: refused.
pub fn refuse_kek(m: &Module, s: &Session, bh: CK_OBJECT_HANDLE) -> Result<()> {
    if is_kek(m, s, bh)? {
        crate::log_warn!("refused a change to the KEK through the PKCS#11 API");
        return Err(Error::Rv(CKR_ACTION_PROHIBITED));
    }
    Ok(())
}

/// A template that would give a backend object the KEK's label: refused, so
/// no decoy can make the KEK ambiguous or pass for it.
pub fn refuse_kek_label(m: &Module, s: &Session, t: &Template) -> Result<()> {
    // Every CKA_LABEL entry: a backend may apply a template's repeats in
    // order, so the last one would win.
    let protected = protected_labels(m);
    if is_dek_slot(m, s)
        && t.iter()
            .any(|a| a.ty == CKA_LABEL && protected.contains(&a.value.as_slice()))
    {
        return Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
    }
    Ok(())
}

pub fn is_key_wrap(mech: CK_MECHANISM_TYPE) -> bool {
    matches!(
        mech,
        CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD | CKM_AES_KEY_WRAP_KWP
    )
}

/// The KEK wraps and unwraps with AES key wrap only: another mechanism
/// (CBC, GCM) could turn a stored record into a key the caller controls.
pub fn kek_only_key_wraps(
    m: &Module,
    s: &Session,
    bh: CK_OBJECT_HANDLE,
    mech: CK_MECHANISM_TYPE,
) -> Result<()> {
    if !is_key_wrap(mech) && is_kek(m, s, bh)? {
        return Err(Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
    }
    Ok(())
}

/// Mechanisms (key derivation and key wrap) whose parameters carry object
/// handles (in or out). Forwarding them untranslated would let a caller name backend
/// objects, the KEK included, past our checks; they are refused.
pub fn mechanism_has_handles(mech: CK_MECHANISM_TYPE) -> bool {
    matches!(
        mech,
        CKM_CONCATENATE_BASE_AND_KEY
            | CKM_X9_42_DH_HYBRID_DERIVE
            | CKM_X9_42_MQV_DERIVE
            | CKM_ECMQV_DERIVE
            | CKM_SSL3_KEY_AND_MAC_DERIVE
            | CKM_TLS_KEY_AND_MAC_DERIVE
            | CKM_TLS12_KEY_AND_MAC_DERIVE
            | CKM_WTLS_SERVER_KEY_AND_MAC_DERIVE
            | CKM_WTLS_CLIENT_KEY_AND_MAC_DERIVE
            | CKM_SP800_108_COUNTER_KDF
            | CKM_SP800_108_FEEDBACK_KDF
            | CKM_SP800_108_DOUBLE_PIPELINE_KDF
            | CKM_HKDF_DERIVE
            | CKM_HKDF_DATA
            | CKM_IKE_PRF_DERIVE
            | CKM_IKE1_PRF_DERIVE
            | CKM_IKE1_EXTENDED_DERIVE
            | CKM_IKE2_PRF_PLUS_DERIVE
            | CKM_KIP_DERIVE
            | CKM_KIP_WRAP
            | CKM_KIP_MAC
            | CKM_GOSTR3410_KEY_WRAP
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SoftHSM2 offers none of the handle-carrying derivations, so this is
    /// checked here rather than through the module.
    #[test]
    fn handle_carrying_derivations_are_listed_and_plain_ones_are_not() {
        for m in [
            CKM_CONCATENATE_BASE_AND_KEY,
            CKM_ECMQV_DERIVE,
            CKM_TLS12_KEY_AND_MAC_DERIVE,
            CKM_SP800_108_COUNTER_KDF,
        ] {
            assert!(mechanism_has_handles(m), "{m:#x}");
        }
        for m in [
            CKM_ECDH1_DERIVE,
            CKM_AES_CBC_ENCRYPT_DATA,
            CKM_DH_PKCS_DERIVE,
            CKM_SHA256_KEY_DERIVATION,
        ] {
            assert!(!mechanism_has_handles(m), "{m:#x}");
        }
    }
}
