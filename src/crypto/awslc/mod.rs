//! The aws-lc-rs provider: every AES mode on AWS-LC, which in the FIPS
//! build (`--features fips`) is AWS-LC's FIPS 140-3 validated module.
//!
//! What aws-lc-rs's API does not offer is `Unsupported`: GCM IVs other than
//! 96 bits, GCM tags other than 128 bits, AES-192 key wrap. The default
//! build takes those to the RustCrypto provider; the FIPS build refuses them
//! (see `crypto::provider`).
//!
//! Multi-part CBC, ECB and CTR run each call's blocks through the module's
//! own mode function and hand on to the next call only what the mode itself
//! carries from block to block (the last ciphertext block, the next counter
//! block) and the bytes of a partial block: no AES step, XOR or padding is
//! done outside the module.

mod blocks;
mod cbc_pad;
pub mod cmac;
mod ctr;
pub mod gcm;
pub mod key_wrap;
pub mod module_state;
#[cfg(all(test, feature = "fips"))]
mod service_indicator;

use aws_lc_rs::cipher::{
    EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_192, AES_256,
};

use super::{CryptoError, Direction, Mode, PreparedOp, SessionKey, Staged};

/// A DEK's aws-lc state, built once when the DEK enters the cache.
pub struct Keys {
    pub(super) gcm: gcm::GcmKey,
}

impl Keys {
    pub fn new(value: &[u8]) -> Result<Self, CryptoError> {
        Ok(Keys {
            gcm: gcm::GcmKey::new(value)?,
        })
    }
}

/// The operation for `mode` on `key`, or `Unsupported` (see the module's text).
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn op(key: &SessionKey, mode: &Mode, dir: Direction) -> Result<PreparedOp, CryptoError> {
    Ok(match mode {
        Mode::Gcm { iv, aad, tag_len } => {
            gcm::check_params(iv, *tag_len)?;
            let nonce = <[u8; 12]>::try_from(*iv).map_err(|_| CryptoError::Unsupported)?;
            PreparedOp::AwsGcm(Staged::new(gcm::GcmOp::new(key.clone(), nonce, aad, dir)))
        }
        Mode::Ecb => {
            PreparedOp::Boxed(Box::new(Staged::new(blocks::BlockOp::new(key, None, dir)?)))
        }
        Mode::Cbc { iv } => PreparedOp::Boxed(Box::new(Staged::new(blocks::BlockOp::new(
            key,
            Some(*iv),
            dir,
        )?))),
        Mode::CbcPad { iv } => PreparedOp::Boxed(cbc_pad::new_op(key, *iv, dir)?),
        Mode::Ctr { iv, counter_bits } => PreparedOp::Boxed(Box::new(Staged::new(
            ctr::CtrOp::new(key, *iv, *counter_bits)?,
        ))),
    })
}

/// Re-arm `op`, an ended AES-GCM operation, for `mode` on `key`: true when
/// `op` then is what `op(key, mode, dir)` would build (same key and
/// direction, parameters aws-lc takes), false and unchanged otherwise.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn rearm(op: &mut Staged<gcm::GcmOp>, key: &SessionKey, mode: &Mode, dir: Direction) -> bool {
    let Mode::Gcm { iv, aad, tag_len } = mode else {
        return false;
    };
    if gcm::check_params(iv, *tag_len).is_err() {
        return false;
    }
    let Ok(nonce) = <[u8; 12]>::try_from(*iv) else {
        return false;
    };
    op.rearm(|g| g.rearm(key, nonce, aad, dir))
}

/// `value` as an aws-lc cipher key (AES-128, -192 or -256).
fn cipher_key(value: &[u8]) -> Result<UnboundCipherKey, CryptoError> {
    let alg = match value.len() {
        16 => &AES_128,
        24 => &AES_192,
        32 => &AES_256,
        _ => return Err(CryptoError::KeySize),
    };
    UnboundCipherKey::new(alg, value).map_err(|_| CryptoError::KeySize)
}

/// The first 3 bytes of AES-ECB(key, 0^128): a key check value.
pub fn check_value(value: &[u8]) -> Result<[u8; 3], CryptoError> {
    let key = EncryptingKey::ecb(cipher_key(value)?).map_err(|_| CryptoError::KeySize)?;
    let mut block = [0u8; 16];
    key.less_safe_encrypt(&mut block, EncryptionContext::None)
        .map_err(|_| CryptoError::Param)?;
    Ok([block[0], block[1], block[2]])
}
