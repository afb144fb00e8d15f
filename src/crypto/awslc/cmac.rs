//! AES-CMAC (NIST SP 800-38B) on aws-lc, single- or multi-part.

use aws_lc_rs::cmac::{Context, Key, AES_128, AES_192, AES_256};

use crate::crypto::CryptoError;

#[derive(Clone)]
pub struct Cmac(Context);

impl Cmac {
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let alg = match key.len() {
            16 => AES_128,
            24 => AES_192,
            32 => AES_256,
            _ => return Err(CryptoError::KeySize),
        };
        let key = Key::new(alg, key).map_err(|_| CryptoError::KeySize)?;
        Ok(Cmac(Context::with_key(&key)))
    }

    pub fn update(&mut self, data: &[u8]) -> Result<(), CryptoError> {
        self.0.update(data).map_err(|_| CryptoError::DataLen)
    }

    /// The full 16-byte CMAC of everything fed so far.
    pub fn full(&self) -> Result<[u8; 16], CryptoError> {
        let tag = self.0.clone().sign().map_err(|_| CryptoError::DataLen)?;
        tag.as_ref().try_into().map_err(|_| CryptoError::DataLen)
    }
}
