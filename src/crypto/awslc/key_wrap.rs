//! AES key wrap on aws-lc (KW and KWP, NIST SP 800-38F). aws-lc-rs wraps
//! under AES-128 and AES-256 keys only: an AES-192 wrapping key is
//! `Unsupported`. The lengths are checked by the caller (`crypto::key_wrap`).

use aws_lc_rs::key_wrap::{AesKek, KeyWrap as _, KeyWrapPadded as _, AES_128, AES_256};

use crate::crypto::key_wrap::KeyWrap;
use crate::crypto::CryptoError;
use crate::secret::SecretBytes;

fn kek(wrapping: &[u8]) -> Result<AesKek, CryptoError> {
    let cipher = match wrapping.len() {
        16 => &AES_128,
        32 => &AES_256,
        24 => return Err(CryptoError::Unsupported),
        _ => return Err(CryptoError::KeySize),
    };
    AesKek::new(cipher, wrapping).map_err(|_| CryptoError::KeySize)
}

/// `key` wrapped under `wrapping`, into `out` (room for the result); the length written.
pub fn wrap(
    wrapping: &[u8],
    kind: KeyWrap,
    key: &[u8],
    out: &mut [u8],
) -> Result<usize, CryptoError> {
    let k = kek(wrapping)?;
    match kind {
        KeyWrap::Kw => k.wrap(key, out),
        KeyWrap::Kwp => k.wrap_with_padding(key, out),
    }
    .map(|w| w.len())
    .map_err(|_| CryptoError::DataLen)
}

/// `wrapped` unwrapped under `wrapping` into `out`; an integrity failure is `Invalid`.
pub fn unwrap(
    wrapping: &[u8],
    kind: KeyWrap,
    wrapped: &[u8],
    out: &mut SecretBytes,
) -> Result<usize, CryptoError> {
    let k = kek(wrapping)?;
    let buf = out.as_mut_slice();
    match kind {
        KeyWrap::Kw => k.unwrap(wrapped, buf),
        KeyWrap::Kwp => k.unwrap_with_padding(wrapped, buf),
    }
    .map(|w| w.len())
    .map_err(|_| CryptoError::Invalid)
}
