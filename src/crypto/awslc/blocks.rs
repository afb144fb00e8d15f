//! AES-ECB (CKM_AES_ECB) and AES-CBC without padding (CKM_AES_CBC) on
//! aws-lc: the whole input must be a multiple of 16 bytes. Multi-part calls
//! return every whole block they can and keep the rest (0..=15 bytes) for
//! the next call; a remainder left at the final call is a length error.
//! CBC hands the last ciphertext block of one call to the next as its IV,
//! which is what the mode does from block to block.

use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext};
use zeroize::{Zeroize, Zeroizing};

use super::cipher_key;
use crate::crypto::{whole_blocks, CipherOp, CryptoError, Direction, SessionKey};

const BS: usize = 16;

enum Key {
    Encrypt(EncryptingKey),
    Decrypt(DecryptingKey),
}

pub struct BlockOp {
    key: Key,
    /// CBC's chaining value (None: ECB). Public, like the IV.
    chain: Option<[u8; BS]>,
    /// Input carried to the next call (less than one block).
    pending: Zeroizing<[u8; BS]>,
    pending_len: usize,
}

impl BlockOp {
    pub fn new(
        key: &SessionKey,
        iv: Option<[u8; BS]>,
        dir: Direction,
    ) -> Result<Self, CryptoError> {
        let k = cipher_key(key.value())?;
        let key = match (dir, iv.is_some()) {
            (Direction::Encrypt, true) => EncryptingKey::cbc(k).map(Key::Encrypt),
            (Direction::Encrypt, false) => EncryptingKey::ecb(k).map(Key::Encrypt),
            (Direction::Decrypt, true) => DecryptingKey::cbc(k).map(Key::Decrypt),
            (Direction::Decrypt, false) => DecryptingKey::ecb(k).map(Key::Decrypt),
        }
        .map_err(|_| CryptoError::KeySize)?;
        Ok(BlockOp {
            key,
            chain: iv,
            pending: Zeroizing::new([0; BS]),
            pending_len: 0,
        })
    }

    /// How many bytes a call with `input_len` more bytes returns now.
    fn ready(&self, input_len: usize) -> usize {
        self.pending_len.saturating_add(input_len) / BS * BS
    }

    /// Runs whole blocks in place through the module, CBC chaining on.
    fn run(&mut self, blocks: &mut [u8]) -> Result<(), CryptoError> {
        let Some(last) = blocks.len().checked_sub(BS) else {
            return Ok(());
        };
        let mut next = [0u8; BS];
        let r = match (&self.key, self.chain) {
            (Key::Encrypt(k), None) => k
                .less_safe_encrypt(blocks, EncryptionContext::None)
                .map(|_| ()),
            (Key::Decrypt(k), None) => k.decrypt(blocks, DecryptionContext::None).map(|_| ()),
            (Key::Encrypt(k), Some(iv)) => {
                let r = k.less_safe_encrypt(blocks, EncryptionContext::Iv128(iv.into()));
                next.copy_from_slice(&blocks[last..]);
                r.map(|_| ())
            }
            (Key::Decrypt(k), Some(iv)) => {
                // The last ciphertext block chains on; decryption overwrites it.
                next.copy_from_slice(&blocks[last..]);
                k.decrypt(blocks, DecryptionContext::Iv128(iv.into()))
                    .map(|_| ())
            }
        };
        r.map_err(|_| CryptoError::DataLen)?;
        if let Some(c) = self.chain.as_mut() {
            *c = next;
        }
        Ok(())
    }

    /// Feed `input`; write every whole block to `output`; keep the rest.
    fn feed(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let n = self.ready(input.len());
        let out = output
            .get_mut(..n)
            .ok_or(CryptoError::BufferTooSmall { needed: n })?;
        // `pending || input`'s first n bytes go to `out`, then run in place.
        let from_input = n.saturating_sub(self.pending_len.min(n));
        let held = n - from_input;
        out[..held].copy_from_slice(&self.pending[..held]);
        out[held..].copy_from_slice(&input[..from_input]);
        if let Err(e) = self.run(out) {
            out.zeroize();
            return Err(e);
        }
        // What is left: the pending bytes not used, then the input's rest.
        let rest = &input[from_input..];
        if held > 0 {
            self.pending.copy_within(held..self.pending_len, 0);
            self.pending_len -= held;
        }
        let end = self.pending_len + rest.len();
        self.pending
            .get_mut(self.pending_len..end)
            .ok_or(CryptoError::DataLen)?
            .copy_from_slice(rest);
        self.pending_len = end;
        Ok(n)
    }
}

impl CipherOp for BlockOp {
    fn oneshot_len(&self, input_len: usize) -> usize {
        input_len
    }

    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        whole_blocks::oneshot(input, output, |i, o| self.feed(i, o))
    }

    fn update_len(&self, input_len: usize) -> usize {
        self.ready(input_len)
    }

    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.feed(input, output)
    }

    fn finish_len(&self) -> usize {
        0
    }

    fn finish(&mut self, _output: &mut [u8]) -> Result<usize, CryptoError> {
        whole_blocks::finish(self.pending_len)
    }
}
