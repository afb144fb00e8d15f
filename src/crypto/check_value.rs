//! The key check value of an AES key (CKA_CHECK_VALUE): the first 3 bytes
//! of AES-ECB(key, 0^128), on the build's provider.

#[cfg(feature = "aws-lc")]
use super::awslc;
use super::provider::{self, Provider};

/// Empty if the value is not an AES key.
pub fn check_value(value: &[u8]) -> Vec<u8> {
    provider::first(|p| with(p, value))
        .map(|kcv| kcv.to_vec())
        .unwrap_or_default()
}

fn with(p: Provider, value: &[u8]) -> Result<[u8; 3], super::CryptoError> {
    match p {
        #[cfg(feature = "aws-lc")]
        Provider::AwsLc => awslc::check_value(value),
        #[cfg(not(feature = "fips"))]
        Provider::RustCrypto => super::rustcrypto::Schedule::new(value).map(|s| s.check_value()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AES-ECB of the zero block under the all-zero key (checked against
    /// Python's `cryptography`): its first 3 bytes, on every provider.
    #[test]
    fn the_zero_key_gives_the_known_value() {
        for p in Provider::ALL {
            assert_eq!(with(*p, &[0u8; 16]), Ok([0x66, 0xe9, 0x4b]), "{p:?}");
            assert_eq!(with(*p, &[0u8; 24]), Ok([0xaa, 0xe0, 0x69]), "{p:?}");
            assert_eq!(with(*p, &[0u8; 32]), Ok([0xdc, 0x95, 0xc0]), "{p:?}");
        }
        assert!(check_value(&[0u8; 17]).is_empty());
    }
}
