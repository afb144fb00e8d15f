//! AES-CTR (CKM_AES_CTR) on aws-lc: the low `counter_bits` bits of the
//! 16-byte counter block are a big-endian counter. Reusing a counter value
//! would reuse keystream, so an operation that would need more blocks than
//! the counter has left is refused (DataLen) up front; since the counter
//! then never overflows its field, the module's 128-bit increment is the
//! same as incrementing the field.
//!
//! Every byte is encrypted by the module's CTR. A call that starts inside a
//! block another call began runs that block again from its counter, with the
//! new bytes in their places, and keeps only those.

use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext};
use zeroize::{Zeroize, Zeroizing};

use super::cipher_key;
use crate::crypto::{CipherOp, CryptoError, SessionKey};

const BS: usize = 16;

pub struct CtrOp {
    key: EncryptingKey,
    /// Next unused counter block, as a big-endian integer.
    counter: u128,
    /// Counter values still unused, minus one (None: all used). Avoids 2^128 overflow.
    left_minus_one: Option<u128>,
    /// The block a previous call began, and how much of it is used (BS: none).
    partial: u128,
    partial_used: usize,
}

impl CtrOp {
    pub fn new(key: &SessionKey, iv: [u8; BS], counter_bits: usize) -> Result<Self, CryptoError> {
        if !(1..=128).contains(&counter_bits) {
            return Err(CryptoError::Param);
        }
        let key = EncryptingKey::ctr(cipher_key(key.value())?).map_err(|_| CryptoError::KeySize)?;
        let counter = u128::from_be_bytes(iv);
        let mask = u128::MAX >> (128 - counter_bits);
        Ok(CtrOp {
            key,
            counter,
            left_minus_one: Some(mask - (counter & mask)),
            partial: 0,
            partial_used: BS,
        })
    }

    /// Claims `blocks` fresh counter values, or fails without changing anything.
    fn reserve(&mut self, blocks: u128) -> Result<(), CryptoError> {
        if blocks == 0 {
            return Ok(());
        }
        let left = self.left_minus_one.ok_or(CryptoError::DataLen)?;
        self.left_minus_one = match left.checked_sub(blocks - 1) {
            None => return Err(CryptoError::DataLen),
            Some(0) => None,
            Some(rest) => Some(rest - 1),
        };
        Ok(())
    }

    /// The module's CTR over `buf` in place, from counter block `at`.
    fn apply(&self, at: u128, buf: &mut [u8]) -> Result<(), CryptoError> {
        self.key
            .less_safe_encrypt(buf, EncryptionContext::Iv128(at.to_be_bytes().into()))
            .map(|_| ())
            .map_err(|_| CryptoError::DataLen)
    }

    fn process(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let n = input.len();
        let output = output
            .get_mut(..n)
            .ok_or(CryptoError::BufferTooSmall { needed: n })?;
        let from_partial = n.min(BS - self.partial_used);
        let rest = n - from_partial;
        let (full, tail) = (rest / BS, rest % BS);
        self.reserve(full as u128 + u128::from(tail > 0))?;

        // 1. The rest of the block a previous call began.
        if from_partial > 0 {
            let (from, to) = (self.partial_used, self.partial_used + from_partial);
            let mut block = Zeroizing::new([0u8; BS]);
            block[from..to].copy_from_slice(&input[..from_partial]);
            self.apply(self.partial, &mut block[..])?;
            output[..from_partial].copy_from_slice(&block[from..to]);
            self.partial_used = to;
        }

        // 2. Whole blocks and a trailing partial one, from the next counter.
        let out = &mut output[from_partial..];
        if !out.is_empty() {
            out.copy_from_slice(&input[from_partial..]);
            if let Err(e) = self.apply(self.counter, out) {
                out.zeroize();
                return Err(e);
            }
            self.counter = self.counter.wrapping_add(full as u128);
            if tail > 0 {
                self.partial = self.counter;
                self.partial_used = tail;
                self.counter = self.counter.wrapping_add(1);
            }
        }
        Ok(n)
    }
}

impl CipherOp for CtrOp {
    fn oneshot_len(&self, input_len: usize) -> usize {
        input_len
    }

    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.process(input, output)
    }

    fn update_len(&self, input_len: usize) -> usize {
        input_len
    }

    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.process(input, output)
    }

    fn finish_len(&self) -> usize {
        0
    }

    fn finish(&mut self, _output: &mut [u8]) -> Result<usize, CryptoError> {
        Ok(0)
    }
}
