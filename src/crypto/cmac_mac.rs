//! AES-CMAC (NIST SP 800-38B; CKM_AES_CMAC and CKM_AES_CMAC_GENERAL) with a
//! DEK, single- or multi-part, on RustCrypto's `cmac` over the same `aes`.

use aes::cipher::common::InnerInit;
use cmac::{Cmac, Mac};

use super::{ct_eq, CryptoError, Schedule};

enum Engine {
    A128(Cmac<aes::Aes128>),
    A192(Cmac<aes::Aes192>),
    A256(Cmac<aes::Aes256>),
}

/// One MAC computation; `mac_len` bytes of the 16-byte CMAC are the MAC.
pub struct CmacOp {
    engine: Engine,
    mac_len: usize,
}

impl CmacOp {
    /// `mac_len` 1..=16 (CKM_AES_CMAC is 16).
    pub fn new(key: &[u8], mac_len: usize) -> Result<Self, CryptoError> {
        if !(1..=16).contains(&mac_len) {
            return Err(CryptoError::Param);
        }
        let engine = match Schedule::new(key)? {
            Schedule::A128(c) => Engine::A128(Cmac::inner_init(c)),
            Schedule::A192(c) => Engine::A192(Cmac::inner_init(c)),
            Schedule::A256(c) => Engine::A256(Cmac::inner_init(c)),
        };
        Ok(CmacOp { engine, mac_len })
    }

    pub fn mac_len(&self) -> usize {
        self.mac_len
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.engine {
            Engine::A128(m) => m.update(data),
            Engine::A192(m) => m.update(data),
            Engine::A256(m) => m.update(data),
        }
    }

    fn full(&self) -> [u8; 16] {
        let tag = match &self.engine {
            Engine::A128(m) => m.clone().finalize().into_bytes(),
            Engine::A192(m) => m.clone().finalize().into_bytes(),
            Engine::A256(m) => m.clone().finalize().into_bytes(),
        };
        tag.into()
    }

    /// The MAC of everything fed so far (the operation may go on being used
    /// only by the caller's choice; PKCS#11 ends it).
    pub fn mac(&self) -> Vec<u8> {
        self.full()[..self.mac_len].to_vec()
    }

    /// Whether `sig` is the MAC, in constant time.
    pub fn verify(&self, sig: &[u8]) -> bool {
        ct_eq(&self.full()[..self.mac_len], sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NIST SP 800-38B D.1 / RFC 4493 4, AES-128, 40-byte message.
    #[test]
    fn rfc4493_vector_whole_and_in_parts() {
        let hex = super::super::test_util::hex;
        let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let msg =
            hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411");
        let want = hex("dfa66747de9ae63030ca32611497c827");
        let mut op = CmacOp::new(&key, 16).unwrap();
        op.update(&msg);
        assert_eq!(op.mac(), want);
        let mut op = CmacOp::new(&key, 8).unwrap();
        op.update(&msg[..13]);
        op.update(&msg[13..]);
        assert_eq!(op.mac(), want[..8]);
        assert!(op.verify(&want[..8]));
        assert!(!op.verify(&want[..7]));
        assert_eq!(CmacOp::new(&key, 17).err(), Some(CryptoError::Param));
    }
}
