//! AES-CMAC (NIST SP 800-38B) on RustCrypto's `cmac` over the same `aes`.

use aes::cipher::common::InnerInit;
use cmac::{Cmac as RcCmac, Mac};

use super::Schedule;
use crate::crypto::CryptoError;

#[derive(Clone)]
pub enum Cmac {
    A128(RcCmac<aes::Aes128>),
    A192(RcCmac<aes::Aes192>),
    A256(RcCmac<aes::Aes256>),
}

impl Cmac {
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        Ok(match Schedule::new(key)? {
            Schedule::A128(c) => Cmac::A128(RcCmac::inner_init(c)),
            Schedule::A192(c) => Cmac::A192(RcCmac::inner_init(c)),
            Schedule::A256(c) => Cmac::A256(RcCmac::inner_init(c)),
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Cmac::A128(m) => m.update(data),
            Cmac::A192(m) => m.update(data),
            Cmac::A256(m) => m.update(data),
        }
    }

    /// The full 16-byte CMAC of everything fed so far.
    pub fn full(&self) -> [u8; 16] {
        let tag = match self {
            Cmac::A128(m) => m.clone().finalize().into_bytes(),
            Cmac::A192(m) => m.clone().finalize().into_bytes(),
            Cmac::A256(m) => m.clone().finalize().into_bytes(),
        };
        tag.into()
    }
}
