//! The RustCrypto provider: every mode on the pure-Rust `aes` crate (with
//! AES-NI where the CPU has it), for any IV and tag length PKCS#11 allows.
//! It is the portable build's only provider and, in the default build, the
//! one for what aws-lc-rs's API cannot do (GCM IVs other than 96 bits, tags
//! shorter than 128 bits, AES-192 key wrap). The FIPS build does not compile
//! it: no AES outside AWS-LC's FIPS module is on any path there.

mod block;
mod cbc;
pub mod cmac;
mod ctr;
mod gcm;
mod gcm_stream;
pub mod key_wrap;

use aes::cipher::{consts::U16, BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit};

use super::{CipherOp, CryptoError, Direction, Mode, Staged};

/// An expanded AES key schedule for the portable engines (zeroized on drop
/// through the `aes` crate's `zeroize` feature).
#[derive(Clone)]
pub enum Schedule {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
}

impl Schedule {
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        // new_from_slice borrows the key; no extra unzeroized copy is made.
        Ok(match key.len() {
            16 => {
                Schedule::A128(aes::Aes128::new_from_slice(key).map_err(|_| CryptoError::KeySize)?)
            }
            24 => {
                Schedule::A192(aes::Aes192::new_from_slice(key).map_err(|_| CryptoError::KeySize)?)
            }
            32 => {
                Schedule::A256(aes::Aes256::new_from_slice(key).map_err(|_| CryptoError::KeySize)?)
            }
            _ => return Err(CryptoError::KeySize),
        })
    }

    /// A streaming GCM encryptor for pre-counter block `j0` (the aws-lc
    /// operation's multi-part encryption in the default build).
    #[cfg_attr(not(feature = "aws-lc"), allow(dead_code))]
    pub fn gcm_stream(
        &self,
        j0: &[u8; 16],
        aad: &[u8],
        tag_len: usize,
    ) -> Result<Box<dyn CipherOp>, CryptoError> {
        Ok(match self {
            Schedule::A128(c) => Box::new(Staged::new(gcm_stream::GcmStream::new(
                c.clone(),
                j0,
                aad,
                tag_len,
            )?)),
            Schedule::A192(c) => Box::new(Staged::new(gcm_stream::GcmStream::new(
                c.clone(),
                j0,
                aad,
                tag_len,
            )?)),
            Schedule::A256(c) => Box::new(Staged::new(gcm_stream::GcmStream::new(
                c.clone(),
                j0,
                aad,
                tag_len,
            )?)),
        })
    }

    pub fn op(&self, mode: &Mode, dir: Direction) -> Result<Box<dyn CipherOp>, CryptoError> {
        match self {
            Schedule::A128(c) => build(c.clone(), mode, dir),
            Schedule::A192(c) => build(c.clone(), mode, dir),
            Schedule::A256(c) => build(c.clone(), mode, dir),
        }
    }

    /// The first 3 bytes of AES-ECB(key, 0^128): a key check value.
    pub fn check_value(&self) -> [u8; 3] {
        let mut block = aes::cipher::Array::default();
        match self {
            Schedule::A128(c) => c.encrypt_block(&mut block),
            Schedule::A192(c) => c.encrypt_block(&mut block),
            Schedule::A256(c) => c.encrypt_block(&mut block),
        }
        [block[0], block[1], block[2]]
    }
}

/// An operation on a raw key (the engines' own tests).
#[cfg(test)]
pub fn new_op(key: &[u8], mode: &Mode, dir: Direction) -> Result<Box<dyn CipherOp>, CryptoError> {
    Schedule::new(key)?.op(mode, dir)
}

fn build<A: AesCipher>(
    cipher: A,
    mode: &Mode,
    dir: Direction,
) -> Result<Box<dyn CipherOp>, CryptoError> {
    Ok(match mode {
        Mode::Gcm { iv, aad, tag_len } => Box::new(Staged::new(gcm::GcmOp::new(
            cipher, iv, aad, *tag_len, dir,
        )?)),
        Mode::Ecb => Box::new(Staged::new(block::ecb(cipher, dir))),
        Mode::Cbc { iv } => Box::new(Staged::new(block::cbc(cipher, iv, dir))),
        Mode::CbcPad { iv } => cbc::new_op(cipher, iv, dir),
        Mode::Ctr { iv, counter_bits } => {
            Box::new(Staged::new(ctr::CtrOp::new(cipher, iv, *counter_bits)?))
        }
    })
}

/// The block cipher the engines are generic over (Aes128/192/256).
trait AesCipher:
    BlockCipherEncrypt
    + BlockCipherDecrypt
    + BlockSizeUser<BlockSize = U16>
    + KeyInit
    + Clone
    + Send
    + 'static
{
}

impl<T> AesCipher for T where
    T: BlockCipherEncrypt
        + BlockCipherDecrypt
        + BlockSizeUser<BlockSize = U16>
        + KeyInit
        + Clone
        + Send
        + 'static
{
}

#[cfg(test)]
mod tests {
    /// Key schedules are wiped on drop only with aes-gcm's `zeroize` feature (which turns
    /// on aes's and ghash's); this stops the build if that feature is ever dropped.
    #[test]
    fn key_schedules_zeroize_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>() {}
        wiped::<aes::Aes128>();
        wiped::<aes::Aes192>();
        wiped::<aes::Aes256>();
        wiped::<aes_gcm::AesGcm<aes::Aes256, aes::cipher::consts::U12>>();
    }
}
