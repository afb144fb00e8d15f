//! Module, slot, token and mechanism information.

use cryptoki_sys::*;

use crate::backend::label_of;
use crate::error::{Error, Result};
use crate::token::{approved, module};

pub const MANUFACTURER: &str = "hsm-envelope";
pub const LIBRARY_DESCRIPTION: &str = "hsm-envelope KEK/DEK module";
/// C_GetInfo's description with `fips_mode = true` (32 bytes, the field's size).
pub const LIBRARY_DESCRIPTION_FIPS: &str = "hsm-envelope KEK/DEK module FIPS";

/// Mechanisms run in software on DEKs, with their flags (AES keys of 16 to
/// 32 bytes). The DEK slot lists them with the backend's own, whose other
/// mechanisms run on backend keys and, for single calls (wrap, unwrap,
/// derive, digest-key), on DEKs made real on the HSM for the call.
pub const SOFT_MECHANISMS: &[(CK_MECHANISM_TYPE, CK_FLAGS)] = &[
    (CKM_AES_KEY_GEN, CKF_GENERATE),
    (
        CKM_AES_GCM,
        CKF_ENCRYPT | CKF_DECRYPT | CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT | CKF_MULTI_MESSAGE,
    ),
    (CKM_AES_CBC_PAD, CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_AES_CTR, CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_AES_ECB, CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_AES_CBC, CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_AES_CMAC, CKF_SIGN | CKF_VERIFY),
    (CKM_AES_CMAC_GENERAL, CKF_SIGN | CKF_VERIFY),
    (CKM_AES_KEY_WRAP, CKF_WRAP | CKF_UNWRAP),
    (CKM_AES_KEY_WRAP_PAD, CKF_WRAP | CKF_UNWRAP),
    (CKM_AES_KEY_WRAP_KWP, CKF_WRAP | CKF_UNWRAP),
    (CKM_AES_ECB_ENCRYPT_DATA, CKF_DERIVE),
    (CKM_AES_CBC_ENCRYPT_DATA, CKF_DERIVE),
];

/// Copy `s` into a blank-padded PKCS#11 text field.
pub fn pad<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    let b = s.as_bytes();
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

pub fn info() -> Result<CK_INFO> {
    let m = module::get()?;
    let description = if approved::on(&m) {
        LIBRARY_DESCRIPTION_FIPS
    } else {
        LIBRARY_DESCRIPTION
    };
    Ok(CK_INFO {
        cryptokiVersion: CK_VERSION {
            major: 2,
            minor: 40,
        },
        manufacturerID: pad(MANUFACTURER),
        flags: 0,
        libraryDescription: pad(description),
        libraryVersion: CK_VERSION { major: 0, minor: 1 },
    })
}

pub fn slot_list() -> Result<Vec<CK_SLOT_ID>> {
    let m = module::get()?;
    Ok((0..m.slots.len() as CK_SLOT_ID).collect())
}

pub fn slot_info(slot: CK_SLOT_ID) -> Result<CK_SLOT_INFO> {
    let m = module::get()?;
    let b = m.backend.slot_info(m.slot(slot)?.backend_id)?;
    let desc = format!("hsm-envelope over {}", label_of(&b.slotDescription));
    Ok(CK_SLOT_INFO {
        slotDescription: pad(&desc),
        manufacturerID: pad(MANUFACTURER),
        flags: b.flags & (CKF_TOKEN_PRESENT | CKF_HW_SLOT),
        hardwareVersion: b.hardwareVersion,
        firmwareVersion: b.firmwareVersion,
    })
}

/// The backend token's info, with our manufacturer and model.
pub fn token_info(slot: CK_SLOT_ID) -> Result<CK_TOKEN_INFO> {
    let m = module::get()?;
    let mut t = m.backend.token_info(m.slot(slot)?.backend_id)?;
    let model = match (m.dek_slot == Some(slot as usize), approved::on(&m)) {
        (true, false) => "envelope",
        (true, true) => "envelope FIPS",
        (false, false) => "passthrough",
        (false, true) => "passthru FIPS",
    };
    t.manufacturerID = pad(MANUFACTURER);
    t.model = pad(model);
    Ok(t)
}

pub fn mechanism_list(slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>> {
    let m = module::get()?;
    let mut list = m.backend.mechanisms(m.slot(slot)?.backend_id)?;
    if approved::on(&m) {
        list.retain(|mech| !approved::never_approved(*mech));
    }
    if m.dek_slot == Some(slot as usize) {
        for (mech, _) in approved::soft_mechanisms(&m, SOFT_MECHANISMS) {
            if !list.contains(&mech) {
                list.push(mech);
            }
        }
    }
    Ok(list)
}

pub fn mechanism_info(slot: CK_SLOT_ID, mech: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO> {
    let m = module::get()?;
    if approved::on(&m) && approved::never_approved(mech) {
        return Err(Error::Rv(CKR_MECHANISM_INVALID));
    }
    let backend = m.backend.mechanism_info(m.slot(slot)?.backend_id, mech);
    let soft = approved::soft_mechanisms(&m, SOFT_MECHANISMS)
        .into_iter()
        .find(|(t, _)| *t == mech)
        .filter(|_| m.dek_slot == Some(slot as usize))
        .map(|(_, flags)| CK_MECHANISM_INFO {
            ulMinKeySize: 16,
            ulMaxKeySize: 32,
            flags,
        });
    match (backend, soft) {
        (Ok(b), Some(s)) => Ok(CK_MECHANISM_INFO {
            ulMinKeySize: b.ulMinKeySize.min(s.ulMinKeySize),
            ulMaxKeySize: b.ulMaxKeySize.max(s.ulMaxKeySize),
            flags: b.flags | s.flags,
        }),
        (Ok(b), None) => Ok(b),
        (Err(_), Some(s)) => Ok(s),
        (Err(e), None) => Err(e),
    }
}

/// C_InitToken would re-initialise the backend token and destroy the KEKs.
pub fn init_token(slot: CK_SLOT_ID) -> Result<()> {
    let m = module::get()?;
    m.slot(slot)?;
    crate::log_warn!(
        "C_InitToken refused on slot {slot}: it would destroy the KEKs on the backend token"
    );
    Err(Error::Rv(CKR_FUNCTION_NOT_SUPPORTED))
}
