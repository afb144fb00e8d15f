//! AES key wrap with a DEK as the wrapping key (NIST SP 800-38F): KW
//! (RFC 3394, CKM_AES_KEY_WRAP) and KWP (RFC 5649: CKM_AES_KEY_WRAP_KWP, and
//! CKM_AES_KEY_WRAP_PAD as SoftHSM2 implements it).

use aes::cipher::common::InnerInit;
use aes_kw::{AesKw, AesKwp};

use super::{CryptoError, Schedule};
use crate::secret::SecretBytes;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyWrap {
    /// RFC 3394: the key a multiple of 8 bytes, at least 16.
    Kw,
    /// RFC 5649: any key length from 1 byte.
    Kwp,
}

/// Longest key value wrapped or unwrapped here (an AES key is 32 bytes;
/// generic secrets on HSMs reach a few hundred).
const MAX_KEY: usize = 1024;

/// Wrap `key` under the AES key `wrapping`.
pub fn wrap(wrapping: &[u8], kind: KeyWrap, key: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(CryptoError::DataLen);
    }
    if kind == KeyWrap::Kw && (!key.len().is_multiple_of(8) || key.len() < 16) {
        return Err(CryptoError::DataLen);
    }
    let mut out = vec![0u8; key.len().div_ceil(8) * 8 + 8];
    let n = match (Schedule::new(wrapping)?, kind) {
        (Schedule::A128(c), KeyWrap::Kw) => AesKw::inner_init(c)
            .wrap_key(key, &mut out)
            .map(<[u8]>::len),
        (Schedule::A192(c), KeyWrap::Kw) => AesKw::inner_init(c)
            .wrap_key(key, &mut out)
            .map(<[u8]>::len),
        (Schedule::A256(c), KeyWrap::Kw) => AesKw::inner_init(c)
            .wrap_key(key, &mut out)
            .map(<[u8]>::len),
        (Schedule::A128(c), KeyWrap::Kwp) => AesKwp::inner_init(c)
            .wrap_key(key, &mut out)
            .map(<[u8]>::len),
        (Schedule::A192(c), KeyWrap::Kwp) => AesKwp::inner_init(c)
            .wrap_key(key, &mut out)
            .map(<[u8]>::len),
        (Schedule::A256(c), KeyWrap::Kwp) => AesKwp::inner_init(c)
            .wrap_key(key, &mut out)
            .map(<[u8]>::len),
    }
    .map_err(|_| CryptoError::DataLen)?;
    out.truncate(n);
    Ok(out)
}

/// Unwrap `wrapped` under the AES key `wrapping`; an integrity failure is
/// `Invalid`, a length no wrap can have is `DataLen`.
pub fn unwrap(wrapping: &[u8], kind: KeyWrap, wrapped: &[u8]) -> Result<SecretBytes, CryptoError> {
    if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) || wrapped.len() > MAX_KEY + 16 {
        return Err(CryptoError::DataLen);
    }
    let mut out = SecretBytes::new(wrapped.len());
    let buf = out.as_mut_slice();
    let n = match (Schedule::new(wrapping)?, kind) {
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
    .map_err(|_| CryptoError::Invalid)?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        super::super::test_util::hex(s)
    }

    /// RFC 3394 4.6 (256-bit KEK, 256-bit key) and RFC 5649 6 (192-bit KEK,
    /// 20- and 7-byte keys).
    #[test]
    fn rfc_vectors() {
        let kek = hex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F");
        let key = hex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
        let want =
            hex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21");
        assert_eq!(wrap(&kek, KeyWrap::Kw, &key).unwrap(), want);
        assert_eq!(
            unwrap(&kek, KeyWrap::Kw, &want).unwrap().as_slice(),
            &key[..]
        );
        let kek = hex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        for (key, want) in [
            (
                "c37b7e6492584340bed12207808941155068f738",
                "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
            ),
            ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
        ] {
            let (key, want) = (hex(key), hex(want));
            assert_eq!(wrap(&kek, KeyWrap::Kwp, &key).unwrap(), want);
            assert_eq!(
                unwrap(&kek, KeyWrap::Kwp, &want).unwrap().as_slice(),
                &key[..]
            );
        }
    }

    #[test]
    fn tampering_and_bad_lengths_are_refused() {
        let kek = [7u8; 32];
        let mut w = wrap(&kek, KeyWrap::Kwp, &[1; 32]).unwrap();
        w[3] ^= 1;
        assert_eq!(
            unwrap(&kek, KeyWrap::Kwp, &w).unwrap_err(),
            CryptoError::Invalid
        );
        assert_eq!(
            wrap(&kek, KeyWrap::Kw, &[1; 20]).unwrap_err(),
            CryptoError::DataLen
        );
        assert_eq!(
            unwrap(&kek, KeyWrap::Kw, &[1; 20]).unwrap_err(),
            CryptoError::DataLen
        );
        assert_eq!(
            wrap(&[1; 17], KeyWrap::Kw, &[1; 16]).unwrap_err(),
            CryptoError::KeySize
        );
    }
}
