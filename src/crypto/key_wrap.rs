//! AES key wrap with a DEK as the wrapping key (NIST SP 800-38F): KW
//! (RFC 3394, CKM_AES_KEY_WRAP) and KWP (RFC 5649: CKM_AES_KEY_WRAP_KWP, and
//! CKM_AES_KEY_WRAP_PAD as SoftHSM2 implements it), on the build's provider.

#[cfg(feature = "aws-lc")]
use super::awslc;
use super::provider::{self, Provider};
use super::CryptoError;
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
    provider::first(|p| wrap_with(p, wrapping, kind, key))
}

/// Unwrap `wrapped` under the AES key `wrapping`; an integrity failure is
/// `Invalid`, a length no wrap can have is `DataLen`.
pub fn unwrap(wrapping: &[u8], kind: KeyWrap, wrapped: &[u8]) -> Result<SecretBytes, CryptoError> {
    provider::first(|p| unwrap_with(p, wrapping, kind, wrapped))
}

fn wrap_with(
    p: Provider,
    wrapping: &[u8],
    kind: KeyWrap,
    key: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(CryptoError::DataLen);
    }
    if kind == KeyWrap::Kw && (!key.len().is_multiple_of(8) || key.len() < 16) {
        return Err(CryptoError::DataLen);
    }
    // Room for the result, and for aws-lc's bound (the input + 15).
    let mut out = vec![0u8; key.len().div_ceil(8) * 8 + 16];
    let n = match p {
        #[cfg(feature = "aws-lc")]
        Provider::AwsLc => awslc::key_wrap::wrap(wrapping, kind, key, &mut out)?,
        #[cfg(not(feature = "fips"))]
        Provider::RustCrypto => super::rustcrypto::key_wrap::wrap(wrapping, kind, key, &mut out)?,
    };
    out.truncate(n);
    Ok(out)
}

fn unwrap_with(
    p: Provider,
    wrapping: &[u8],
    kind: KeyWrap,
    wrapped: &[u8],
) -> Result<SecretBytes, CryptoError> {
    if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) || wrapped.len() > MAX_KEY + 16 {
        return Err(CryptoError::DataLen);
    }
    let mut out = SecretBytes::new(wrapped.len());
    let n = match p {
        #[cfg(feature = "aws-lc")]
        Provider::AwsLc => awslc::key_wrap::unwrap(wrapping, kind, wrapped, &mut out)?,
        #[cfg(not(feature = "fips"))]
        Provider::RustCrypto => {
            super::rustcrypto::key_wrap::unwrap(wrapping, kind, wrapped, &mut out)?
        }
    };
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        super::super::test_util::hex(s)
    }

    /// RFC 3394 4.1 (128-bit KEK) and 4.6 (256-bit KEK, 256-bit key), RFC
    /// 5649 6 (192-bit KEK, 20- and 7-byte keys), on every provider; aws-lc
    /// wraps under no AES-192 key (`Unsupported`: the FIPS build refuses).
    #[test]
    fn rfc_vectors_on_every_provider() {
        let kw = [
            (
                "000102030405060708090A0B0C0D0E0F",
                "00112233445566778899AABBCCDDEEFF",
                "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5",
            ),
            (
                "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
                "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
                "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21",
            ),
        ];
        let kwp192 = "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8";
        let kwp = [
            (
                kwp192,
                "c37b7e6492584340bed12207808941155068f738",
                "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
            ),
            (kwp192, "466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
        ];
        let cases = kw
            .iter()
            .map(|c| (KeyWrap::Kw, c))
            .chain(kwp.iter().map(|c| (KeyWrap::Kwp, c)));
        for (kind, (kek, key, want)) in cases {
            let (kek, key, want) = (hex(kek), hex(key), hex(want));
            for p in Provider::ALL {
                let wrapped = wrap_with(*p, &kek, kind, &key);
                let unwrapped = unwrap_with(*p, &kek, kind, &want).map(|v| v.as_slice().to_vec());
                if cfg!(feature = "aws-lc") && *p == Provider::ALL[0] && kek.len() == 24 {
                    assert_eq!(wrapped, Err(CryptoError::Unsupported));
                    assert_eq!(unwrapped, Err(CryptoError::Unsupported));
                    continue;
                }
                assert_eq!(wrapped.as_ref(), Ok(&want), "{p:?} {kind:?}");
                assert_eq!(unwrapped.as_ref(), Ok(&key), "{p:?} {kind:?}");
            }
        }
        // The front: the default build passes AES-192 on to RustCrypto.
        let r = wrap(&hex(kwp192), KeyWrap::Kwp, &[1; 7]);
        if cfg!(feature = "fips") {
            assert_eq!(r, Err(CryptoError::Unsupported));
        } else {
            assert!(r.is_ok());
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
