//! AES-CBC with PKCS#7 padding (CKM_AES_CBC_PAD) on aws-lc: whole blocks
//! through the module's CBC, the final block through its CBC-PKCS#7 (which
//! pads, or checks and strips the padding).
//!
//! Multi-part: encryption emits whole blocks and keeps the remainder (0..=15
//! bytes); decryption keeps back the final block whenever the input so far
//! is block-aligned, because that block may carry the padding (the same rule
//! as OpenSSL's EVP_DecryptUpdate and the RustCrypto engine).

use aws_lc_rs::cipher::{
    DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, PaddedBlockDecryptingKey,
    PaddedBlockEncryptingKey,
};
use zeroize::{Zeroize, Zeroizing};

use super::cipher_key;
use crate::crypto::{CipherOp, CryptoError, Direction, SessionKey, Staged};

const BS: usize = 16;

pub fn new_op(
    key: &SessionKey,
    iv: [u8; BS],
    dir: Direction,
) -> Result<Box<dyn CipherOp>, CryptoError> {
    let state = State {
        key: key.clone(),
        chain: iv,
        pending: Zeroizing::new([0; BS]),
        pending_len: 0,
    };
    Ok(match dir {
        Direction::Encrypt => Box::new(Staged::new(CbcPadEncrypt(state))),
        Direction::Decrypt => Box::new(Staged::new(CbcPadDecrypt(state))),
    })
}

struct State {
    key: SessionKey,
    /// The IV of the next block: the last ciphertext block so far.
    chain: [u8; BS],
    /// Bytes carried between calls: a partial block, or (decrypt) a held-back block.
    pending: Zeroizing<[u8; BS]>,
    pending_len: usize,
}

impl State {
    /// Runs the first `emit` blocks of `pending || input` through unpadded
    /// CBC into `output`, keeps the rest (at most one block) as pending.
    fn feed(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        emit: usize,
        dir: Direction,
    ) -> Result<usize, CryptoError> {
        let n = emit.checked_mul(BS).ok_or(CryptoError::DataLen)?;
        let out = output
            .get_mut(..n)
            .ok_or(CryptoError::BufferTooSmall { needed: n })?;
        if n == 0 {
            return self.keep(input);
        }
        let held = self.pending_len.min(n);
        let from_input = n - held;
        out[..held].copy_from_slice(&self.pending[..held]);
        out[held..].copy_from_slice(input.get(..from_input).ok_or(CryptoError::DataLen)?);
        let last: [u8; BS] = out[n - BS..].try_into().map_err(|_| CryptoError::DataLen)?;
        let value = self.key.value();
        let r = match dir {
            Direction::Encrypt => EncryptingKey::cbc(cipher_key(value)?)
                .and_then(|k| k.less_safe_encrypt(out, EncryptionContext::Iv128(self.chain.into())))
                .map(|_| ()),
            Direction::Decrypt => DecryptingKey::cbc(cipher_key(value)?)
                .and_then(|k| k.decrypt(out, DecryptionContext::Iv128(self.chain.into())))
                .map(|_| ()),
        };
        if r.is_err() {
            out.zeroize();
            return Err(CryptoError::DataLen);
        }
        self.chain = match dir {
            Direction::Encrypt => out[n - BS..].try_into().map_err(|_| CryptoError::DataLen)?,
            Direction::Decrypt => last,
        };
        self.pending.copy_within(held..self.pending_len, 0);
        self.pending_len -= held;
        self.keep(&input[from_input..])?;
        Ok(n)
    }

    fn keep(&mut self, rest: &[u8]) -> Result<usize, CryptoError> {
        let end = self.pending_len + rest.len();
        self.pending
            .get_mut(self.pending_len..end)
            .ok_or(CryptoError::DataLen)?
            .copy_from_slice(rest);
        self.pending_len = end;
        Ok(0)
    }
}

struct CbcPadEncrypt(State);

impl CbcPadEncrypt {
    fn update_inner(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let emit = self.0.pending_len.saturating_add(input.len()) / BS;
        self.0.feed(input, output, emit, Direction::Encrypt)
    }

    /// The padded final block: the module pads the 0..=15 pending bytes.
    fn finish_inner(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        let out = output
            .get_mut(..BS)
            .ok_or(CryptoError::BufferTooSmall { needed: BS })?;
        let st = &mut self.0;
        let key = PaddedBlockEncryptingKey::cbc_pkcs7(cipher_key(st.key.value())?)
            .map_err(|_| CryptoError::KeySize)?;
        let mut block = Vec::with_capacity(2 * BS);
        block.extend_from_slice(&st.pending[..st.pending_len]);
        let r = key.less_safe_encrypt(&mut block, EncryptionContext::Iv128(st.chain.into()));
        let ok = r.is_ok() && block.len() == BS;
        if ok {
            out.copy_from_slice(&block);
        }
        block.zeroize();
        if !ok {
            return Err(CryptoError::DataLen);
        }
        st.pending.zeroize();
        st.pending_len = 0;
        Ok(BS)
    }
}

impl CipherOp for CbcPadEncrypt {
    fn oneshot_len(&self, input_len: usize) -> usize {
        (input_len / BS).saturating_add(1).saturating_mul(BS)
    }

    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let needed = self.oneshot_len(input.len());
        if output.len() < needed {
            Err(CryptoError::BufferTooSmall { needed })
        } else {
            self.update_inner(input, output).and_then(|n| {
                let tail = output.get_mut(n..).ok_or(CryptoError::DataLen)?;
                Ok(n + self.finish_inner(tail)?)
            })
        }
    }

    fn update_len(&self, input_len: usize) -> usize {
        (self.0.pending_len.saturating_add(input_len) / BS) * BS
    }

    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.update_inner(input, output)
    }

    fn finish_len(&self) -> usize {
        BS
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        self.finish_inner(output)
    }
}

struct CbcPadDecrypt(State);

impl CbcPadDecrypt {
    /// Blocks `update` may emit: all complete ones except a final block-aligned one.
    fn emit_blocks(&self, input_len: usize) -> usize {
        let total = self.0.pending_len.saturating_add(input_len);
        if total.is_multiple_of(BS) {
            (total / BS).saturating_sub(1)
        } else {
            total / BS
        }
    }

    /// The plaintext of the last block `ct` after `prev`, padding checked
    /// and stripped by the module; nothing is committed.
    fn last_block(
        &self,
        prev: [u8; BS],
        ct: &[u8],
    ) -> Result<(Zeroizing<[u8; BS]>, usize), CryptoError> {
        let key = PaddedBlockDecryptingKey::cbc_pkcs7(cipher_key(self.0.key.value())?)
            .map_err(|_| CryptoError::KeySize)?;
        let mut block = Zeroizing::new([0u8; BS]);
        block.copy_from_slice(ct);
        let keep = key
            .decrypt(&mut block[..], DecryptionContext::Iv128(prev.into()))
            .map(|pt| pt.len())
            .map_err(|_| CryptoError::Invalid)?;
        Ok((block, keep))
    }

    fn finish_inner(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        if self.0.pending_len != BS {
            return Err(CryptoError::DataLen); // empty input or not a multiple of 16
        }
        let (pt, keep) = self.last_block(self.0.chain, &self.0.pending[..])?;
        let out = output
            .get_mut(..keep)
            .ok_or(CryptoError::BufferTooSmall { needed: keep })?;
        out.copy_from_slice(&pt[..keep]);
        self.0.pending.zeroize();
        self.0.pending_len = 0;
        Ok(keep)
    }

    /// Checks the padding before writing anything, so a bad message or short
    /// buffer leaves `output` and the state untouched.
    fn oneshot_inner(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        if input.is_empty() || !input.len().is_multiple_of(BS) {
            return Err(CryptoError::DataLen);
        }
        let (head, last) = input.split_at(input.len() - BS);
        let prev = match head.len().checked_sub(BS).and_then(|i| head.get(i..)) {
            Some(p) => p.try_into().map_err(|_| CryptoError::DataLen)?,
            None => self.0.chain,
        };
        let (pt, keep) = self.last_block(prev, last)?;
        let needed = head.len() + keep;
        if output.len() < needed {
            return Err(CryptoError::BufferTooSmall { needed });
        }
        let n = self
            .0
            .feed(head, output, head.len() / BS, Direction::Decrypt)?;
        output[n..needed].copy_from_slice(&pt[..keep]);
        Ok(needed)
    }
}

impl CipherOp for CbcPadDecrypt {
    fn oneshot_len(&self, input_len: usize) -> usize {
        input_len
    }

    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.oneshot_inner(input, output)
    }

    fn update_len(&self, input_len: usize) -> usize {
        self.emit_blocks(input_len).saturating_mul(BS)
    }

    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let emit = self.emit_blocks(input.len());
        self.0.feed(input, output, emit, Direction::Decrypt)
    }

    fn finish_len(&self) -> usize {
        BS
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        self.finish_inner(output)
    }
}
