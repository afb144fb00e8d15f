//! AES-CMAC (NIST SP 800-38B; CKM_AES_CMAC and CKM_AES_CMAC_GENERAL) with a
//! DEK, single- or multi-part, on the build's provider.

#[cfg(feature = "aws-lc")]
use super::awslc;
use super::provider::{self, Provider};
use super::{ct_eq, CryptoError};

#[derive(Clone)]
enum Engine {
    #[cfg(feature = "aws-lc")]
    AwsLc(awslc::cmac::Cmac),
    /// Boxed: RustCrypto's state is several times aws-lc's handle.
    #[cfg(not(feature = "fips"))]
    RustCrypto(Box<super::rustcrypto::cmac::Cmac>),
}

/// One MAC computation; `mac_len` bytes of the 16-byte CMAC are the MAC.
pub struct CmacOp {
    engine: Engine,
    mac_len: usize,
    /// An update the engine refused: the MAC is then an error.
    failed: bool,
}

impl CmacOp {
    /// `mac_len` 1..=16 (CKM_AES_CMAC is 16).
    pub fn new(key: &[u8], mac_len: usize) -> Result<Self, CryptoError> {
        provider::first(|p| Self::with(p, key, mac_len))
    }

    fn with(p: Provider, key: &[u8], mac_len: usize) -> Result<Self, CryptoError> {
        if !(1..=16).contains(&mac_len) {
            return Err(CryptoError::Param);
        }
        let engine = match p {
            #[cfg(feature = "aws-lc")]
            Provider::AwsLc => Engine::AwsLc(awslc::cmac::Cmac::new(key)?),
            #[cfg(not(feature = "fips"))]
            Provider::RustCrypto => {
                Engine::RustCrypto(Box::new(super::rustcrypto::cmac::Cmac::new(key)?))
            }
        };
        Ok(CmacOp {
            engine,
            mac_len,
            failed: false,
        })
    }

    pub fn mac_len(&self) -> usize {
        self.mac_len
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.engine {
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(m) => self.failed |= m.update(data).is_err(),
            #[cfg(not(feature = "fips"))]
            Engine::RustCrypto(m) => m.update(data),
        }
    }

    fn full(&self) -> Result<[u8; 16], CryptoError> {
        if self.failed {
            return Err(CryptoError::DataLen);
        }
        match &self.engine {
            #[cfg(feature = "aws-lc")]
            Engine::AwsLc(m) => m.full(),
            #[cfg(not(feature = "fips"))]
            Engine::RustCrypto(m) => Ok(m.full()),
        }
    }

    /// The MAC of everything fed so far (the operation may go on being used
    /// only by the caller's choice; PKCS#11 ends it).
    pub fn mac(&self) -> Result<Vec<u8>, CryptoError> {
        Ok(self.full()?[..self.mac_len].to_vec())
    }

    /// Whether `sig` is the MAC, in constant time.
    pub fn verify(&self, sig: &[u8]) -> bool {
        self.full()
            .is_ok_and(|full| ct_eq(&full[..self.mac_len], sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NIST SP 800-38B D.1 (AES-128), D.2 (AES-192) and D.3 (AES-256), the
    /// 40-byte and empty messages, whole and in parts, on every provider.
    #[test]
    fn sp800_38b_vectors_on_every_provider() {
        let hex = super::super::test_util::hex;
        let msg =
            hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411");
        let cases = [
            (
                "2b7e151628aed2a6abf7158809cf4f3c",
                "bb1d6929e95937287fa37d129b756746",
                "dfa66747de9ae63030ca32611497c827",
            ),
            (
                "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
                "d17ddf46adaacde531cac483de7a9367",
                "8a1de5be2eb31aad089a82e6ee908b0e",
            ),
            (
                "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
                "028962f61b7bf89efc6b551f4667d983",
                "aaf3d8f1de5640c232f5b169b9c911e6",
            ),
        ];
        for (key, empty, want) in cases {
            let (key, empty, want) = (hex(key), hex(empty), hex(want));
            for p in Provider::ALL {
                let op = CmacOp::with(*p, &key, 16).unwrap();
                assert_eq!(op.mac().unwrap(), empty, "{p:?}");
                let mut op = CmacOp::with(*p, &key, 16).unwrap();
                op.update(&msg);
                assert_eq!(op.mac().unwrap(), want, "{p:?}");
                let mut op = CmacOp::with(*p, &key, 8).unwrap();
                op.update(&msg[..13]);
                op.update(&msg[13..]);
                assert_eq!(op.mac().unwrap(), want[..8]);
                assert!(op.verify(&want[..8]));
                assert!(!op.verify(&want[..7]));
                assert_eq!(CmacOp::with(*p, &key, 17).err(), Some(CryptoError::Param));
            }
        }
    }
}
