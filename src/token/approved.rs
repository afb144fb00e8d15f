//! `fips_mode = true` (FIPS build only): the module approved-only. Its own
//! (software) mechanisms are limited to approved ones, with key sizes and
//! parameters in the ranges AWS-LC's FIPS module counts as approved (its
//! service indicator: `crypto/fipsmodule/service_indicator`); AES-GCM
//! encryption runs under IVs the FIPS module draws itself (SP 800-38D
//! 8.2.2, FIPS 140-3 IG C.H), never under one chosen outside it.
//!
//! | mechanism (on a DEK)            | approved-only                         |
//! |---------------------------------|---------------------------------------|
//! | AES-GCM encrypt                 | C_EncryptMessage, CKG_GENERATE_RANDOM, 96-bit IV, no fixed bits, 128-bit tag, AES-128/256 |
//! | AES-GCM decrypt                 | 96-bit IV, 128-bit tag, AES-128/256    |
//! | AES-ECB, -CBC, -CBC-PAD, -CTR   | any AES key size                      |
//! | AES-CMAC(-GENERAL)              | AES-128/256, MAC of 8 to 16 bytes     |
//! | AES key wrap (KW, KWP)          | AES-128/256 wrapping keys             |
//! | AES-*_ENCRYPT_DATA derivation   | refused: not an approved KDF          |
//!
//! Mechanisms on backend keys run on the HSM under its own certificate and
//! its own approved mode; of the HSM's list, those never approved (MD5,
//! DES, RC2, RC4, ...) are not listed.

use cryptoki_sys::*;

use crate::crypto::Mode;
use crate::error::{Error, Result};
use crate::token::module::Module;

/// The module runs approved-only.
pub fn on(m: &Module) -> bool {
    m.config.fips_mode
}

fn refuse(call: &str, what: &str, rv: CK_RV) -> Error {
    crate::log_warn!("{call}: refused by fips_mode = true: {what}");
    Error::Rv(rv)
}

/// The module's own mechanisms as approved-only lists them: no derivation
/// by encryption, and AES-GCM without C_EncryptInit (its IV is the caller's).
pub fn soft_mechanisms(
    m: &Module,
    all: &[(CK_MECHANISM_TYPE, CK_FLAGS)],
) -> Vec<(CK_MECHANISM_TYPE, CK_FLAGS)> {
    if !on(m) {
        return all.to_vec();
    }
    all.iter()
        .filter(|(mech, _)| !matches!(*mech, CKM_AES_ECB_ENCRYPT_DATA | CKM_AES_CBC_ENCRYPT_DATA))
        .map(|(mech, flags)| match *mech {
            CKM_AES_GCM => (*mech, flags & !CKF_ENCRYPT),
            _ => (*mech, *flags),
        })
        .collect()
}

/// Mechanisms no FIPS 140-3 module may offer as approved (SP 800-131A,
/// and derivation by encryption): hidden from the HSM's list in
/// approved-only mode.
pub fn never_approved(mech: CK_MECHANISM_TYPE) -> bool {
    matches!(
        mech,
        CKM_MD2
            | CKM_MD2_HMAC
            | CKM_MD2_HMAC_GENERAL
            | CKM_MD2_RSA_PKCS
            | CKM_MD5
            | CKM_MD5_HMAC
            | CKM_MD5_HMAC_GENERAL
            | CKM_MD5_RSA_PKCS
            | CKM_SSL3_MD5_MAC
            | CKM_DES_KEY_GEN
            | CKM_DES_ECB
            | CKM_DES_CBC
            | CKM_DES_CBC_PAD
            | CKM_DES_MAC
            | CKM_DES_MAC_GENERAL
            | CKM_DES_OFB64
            | CKM_DES_CFB64
            | CKM_DES_ECB_ENCRYPT_DATA
            | CKM_DES_CBC_ENCRYPT_DATA
            | CKM_DES2_KEY_GEN
            | CKM_RC2_KEY_GEN
            | CKM_RC2_ECB
            | CKM_RC2_CBC
            | CKM_RC2_CBC_PAD
            | CKM_RC2_MAC
            | CKM_RC2_MAC_GENERAL
            | CKM_RC4_KEY_GEN
            | CKM_RC4
            | CKM_RC5_KEY_GEN
            | CKM_RC5_ECB
            | CKM_RC5_CBC
            | CKM_RC5_CBC_PAD
            | CKM_RC5_MAC
            | CKM_RC5_MAC_GENERAL
            | CKM_CAST_KEY_GEN
            | CKM_CAST_ECB
            | CKM_CAST_CBC
            | CKM_CAST_CBC_PAD
            | CKM_CAST_MAC
            | CKM_CAST_MAC_GENERAL
            | CKM_IDEA_KEY_GEN
            | CKM_IDEA_ECB
            | CKM_IDEA_CBC
            | CKM_IDEA_CBC_PAD
            | CKM_IDEA_MAC
            | CKM_IDEA_MAC_GENERAL
            // Derivation by encryption: not an approved KDF.
            | CKM_AES_ECB_ENCRYPT_DATA
            | CKM_AES_CBC_ENCRYPT_DATA
    )
}

/// AES-GCM and AES-CMAC are approved with 128- and 256-bit keys only.
fn gcm_or_cmac_key(call: &str, key_len: usize) -> Result<()> {
    if key_len == 24 {
        return Err(refuse(
            call,
            "AES-GCM and AES-CMAC take AES-128 or AES-256 keys, not AES-192",
            CKR_KEY_SIZE_RANGE,
        ));
    }
    Ok(())
}

/// C_EncryptInit / C_DecryptInit on a DEK (GCM encryption never gets here:
/// its IV would be the caller's, see `message::caller_iv_allowed`).
pub fn cipher(m: &Module, mode: &Mode<'_>, key_len: usize) -> Result<()> {
    if !on(m) {
        return Ok(());
    }
    match mode {
        Mode::Gcm { iv, tag_len, .. } => {
            gcm_decrypt(m, "C_DecryptInit", key_len, iv.len(), *tag_len)
        }
        Mode::Ecb | Mode::Cbc { .. } | Mode::CbcPad { .. } | Mode::Ctr { .. } => Ok(()),
    }
}

/// An AES-GCM decryption's key and parameters.
pub fn gcm_decrypt(
    m: &Module,
    call: &str,
    key_len: usize,
    iv_len: usize,
    tag_len: usize,
) -> Result<()> {
    if !on(m) {
        return Ok(());
    }
    gcm_or_cmac_key(call, key_len)?;
    if iv_len != 12 || tag_len != 16 {
        return Err(refuse(
            call,
            "AES-GCM takes a 96-bit IV and a 128-bit tag",
            CKR_MECHANISM_PARAM_INVALID,
        ));
    }
    Ok(())
}

/// An AES-GCM message encryption: the FIPS module draws the whole IV.
pub fn gcm_encrypt(
    m: &Module,
    call: &str,
    key_len: usize,
    random_iv: bool,
    iv_len: usize,
    fixed_bits: usize,
    tag_len: usize,
) -> Result<()> {
    if !on(m) {
        return Ok(());
    }
    gcm_or_cmac_key(call, key_len)?;
    if !random_iv || iv_len != 12 || fixed_bits != 0 || tag_len != 16 {
        return Err(refuse(
            call,
            "AES-GCM encryption takes CKG_GENERATE_RANDOM with a 96-bit IV, no fixed bits \
             and a 128-bit tag (the FIPS module draws the IV itself)",
            CKR_MECHANISM_PARAM_INVALID,
        ));
    }
    Ok(())
}

/// Multi-part message encryption (C_EncryptMessageBegin): the IV is due
/// at Begin, before the FIPS module has the message to draw it with.
pub fn gcm_encrypt_in_parts(m: &Module) -> Result<()> {
    if !on(m) {
        return Ok(());
    }
    Err(refuse(
        "C_EncryptMessageBegin",
        "the FIPS module draws the IV when it seals the whole message: use C_EncryptMessage",
        CKR_MECHANISM_PARAM_INVALID,
    ))
}

/// C_SignInit / C_VerifyInit with AES-CMAC on a DEK.
pub fn cmac(m: &Module, key_len: usize, mac_len: usize) -> Result<()> {
    if !on(m) {
        return Ok(());
    }
    gcm_or_cmac_key("C_SignInit/C_VerifyInit", key_len)?;
    if mac_len < 8 {
        return Err(refuse(
            "C_SignInit/C_VerifyInit",
            "AES-CMAC MACs are 8 to 16 bytes (SP 800-38B)",
            CKR_MECHANISM_PARAM_INVALID,
        ));
    }
    Ok(())
}

/// C_DeriveKey from a DEK.
pub fn derive(m: &Module, mech: CK_MECHANISM_TYPE) -> Result<()> {
    if on(m) && matches!(mech, CKM_AES_ECB_ENCRYPT_DATA | CKM_AES_CBC_ENCRYPT_DATA) {
        return Err(refuse(
            "C_DeriveKey",
            "derivation by encryption is not an approved key derivation (SP 800-108, 56C)",
            CKR_MECHANISM_INVALID,
        ));
    }
    Ok(())
}
