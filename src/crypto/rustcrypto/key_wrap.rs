//! AES key wrap on RustCrypto's `aes-kw` (KW, RFC 3394; KWP, RFC 5649), for
//! any AES key size. The lengths are checked by the caller (`crypto::key_wrap`).

use aes::cipher::common::InnerInit;
use aes_kw::{AesKw, AesKwp};

use super::Schedule;
use crate::crypto::key_wrap::KeyWrap;
use crate::crypto::CryptoError;
use crate::secret::SecretBytes;

/// `key` wrapped under `wrapping`, into `out` (room for the result); the length written.
pub fn wrap(
    wrapping: &[u8],
    kind: KeyWrap,
    key: &[u8],
    out: &mut [u8],
) -> Result<usize, CryptoError> {
    match (Schedule::new(wrapping)?, kind) {
        (Schedule::A128(c), KeyWrap::Kw) => {
            AesKw::inner_init(c).wrap_key(key, out).map(<[u8]>::len)
        }
        (Schedule::A192(c), KeyWrap::Kw) => {
            AesKw::inner_init(c).wrap_key(key, out).map(<[u8]>::len)
        }
        (Schedule::A256(c), KeyWrap::Kw) => {
            AesKw::inner_init(c).wrap_key(key, out).map(<[u8]>::len)
        }
        (Schedule::A128(c), KeyWrap::Kwp) => {
            AesKwp::inner_init(c).wrap_key(key, out).map(<[u8]>::len)
        }
        (Schedule::A192(c), KeyWrap::Kwp) => {
            AesKwp::inner_init(c).wrap_key(key, out).map(<[u8]>::len)
        }
        (Schedule::A256(c), KeyWrap::Kwp) => {
            AesKwp::inner_init(c).wrap_key(key, out).map(<[u8]>::len)
        }
    }
    .map_err(|_| CryptoError::DataLen)
}

/// `wrapped` unwrapped under `wrapping` into `out`; an integrity failure is `Invalid`.
pub fn unwrap(
    wrapping: &[u8],
    kind: KeyWrap,
    wrapped: &[u8],
    out: &mut SecretBytes,
) -> Result<usize, CryptoError> {
    let buf = out.as_mut_slice();
    match (Schedule::new(wrapping)?, kind) {
        (Schedule::A128(c), KeyWrap::Kw) => AesKw::inner_init(c)
            .unwrap_key(wrapped, buf)
            .map(<[u8]>::len),
        (Schedule::A192(c), KeyWrap::Kw) => AesKw::inner_init(c)
            .unwrap_key(wrapped, buf)
            .map(<[u8]>::len),
        (Schedule::A256(c), KeyWrap::Kw) => AesKw::inner_init(c)
            .unwrap_key(wrapped, buf)
            .map(<[u8]>::len),
        (Schedule::A128(c), KeyWrap::Kwp) => AesKwp::inner_init(c)
            .unwrap_key(wrapped, buf)
            .map(<[u8]>::len),
        (Schedule::A192(c), KeyWrap::Kwp) => AesKwp::inner_init(c)
            .unwrap_key(wrapped, buf)
            .map(<[u8]>::len),
        (Schedule::A256(c), KeyWrap::Kwp) => AesKwp::inner_init(c)
            .unwrap_key(wrapped, buf)
            .map(<[u8]>::len),
    }
    .map_err(|_| CryptoError::Invalid)
}
