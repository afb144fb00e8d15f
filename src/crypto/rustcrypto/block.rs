//! AES-ECB (CKM_AES_ECB) and AES-CBC without padding (CKM_AES_CBC): the
//! whole input must be a multiple of 16 bytes. Multi-part calls return every
//! whole block they can and keep the rest (0..=15 bytes) for the next call;
//! a remainder left at the final call is a length error.

use aes::cipher::{array::Array, consts::U16};
use zeroize::Zeroizing;

use super::AesCipher;
use crate::crypto::{whole_blocks, CipherOp, CryptoError, Direction};

const BS: usize = 16;
type Block = Array<u8, U16>;

/// Which unpadded mode, with its chaining value for CBC.
enum Chain {
    Ecb,
    Cbc(Zeroizing<[u8; BS]>),
}

pub(super) struct BlockOp<A: AesCipher> {
    cipher: A,
    dir: Direction,
    chain: Chain,
    /// Input carried to the next call (less than one block).
    pending: Zeroizing<[u8; BS]>,
    pending_len: usize,
}

pub(super) fn ecb<A: AesCipher>(cipher: A, dir: Direction) -> BlockOp<A> {
    BlockOp::new(cipher, dir, Chain::Ecb)
}

pub(super) fn cbc<A: AesCipher>(cipher: A, iv: &[u8; 16], dir: Direction) -> BlockOp<A> {
    BlockOp::new(cipher, dir, Chain::Cbc(Zeroizing::new(*iv)))
}

impl<A: AesCipher> BlockOp<A> {
    fn new(cipher: A, dir: Direction, chain: Chain) -> Self {
        BlockOp {
            cipher,
            dir,
            chain,
            pending: Zeroizing::new([0; BS]),
            pending_len: 0,
        }
    }

    /// Run one block in place.
    fn block(&mut self, b: &mut [u8; BS]) {
        let mut blk = Block::from(*b);
        match (&mut self.chain, self.dir) {
            (Chain::Ecb, Direction::Encrypt) => self.cipher.encrypt_block(&mut blk),
            (Chain::Ecb, Direction::Decrypt) => self.cipher.decrypt_block(&mut blk),
            (Chain::Cbc(c), Direction::Encrypt) => {
                for (x, y) in blk.iter_mut().zip(c.iter()) {
                    *x ^= y;
                }
                self.cipher.encrypt_block(&mut blk);
                c.copy_from_slice(&blk);
            }
            (Chain::Cbc(c), Direction::Decrypt) => {
                let next = *b;
                self.cipher.decrypt_block(&mut blk);
                for (x, y) in blk.iter_mut().zip(c.iter()) {
                    *x ^= y;
                }
                **c = next;
            }
        }
        b.copy_from_slice(&blk);
        blk.fill(0);
    }

    /// How many bytes a call with `input_len` more bytes returns now.
    fn ready(&self, input_len: usize) -> usize {
        self.pending_len.saturating_add(input_len) / BS * BS
    }

    /// Feed `input`; write every whole block to `output`; keep the rest.
    fn feed(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let n = self.ready(input.len());
        let out = output
            .get_mut(..n)
            .ok_or(CryptoError::BufferTooSmall { needed: n })?;
        let mut written = 0;
        let mut input = input;
        if self.pending_len > 0 && n > 0 {
            let take = BS - self.pending_len;
            let (head, rest) = input.split_at(take);
            let mut b = [0u8; BS];
            b[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
            b[self.pending_len..].copy_from_slice(head);
            self.block(&mut b);
            out[..BS].copy_from_slice(&b);
            b.fill(0);
            written = BS;
            self.pending_len = 0;
            input = rest;
        }
        while written < n {
            let mut b = [0u8; BS];
            b.copy_from_slice(&input[..BS]);
            self.block(&mut b);
            out[written..written + BS].copy_from_slice(&b);
            b.fill(0);
            written += BS;
            input = &input[BS..];
        }
        let end = self.pending_len + input.len();
        self.pending[self.pending_len..end].copy_from_slice(input);
        self.pending_len = end;
        Ok(written)
    }
}

impl<A: AesCipher> CipherOp for BlockOp<A> {
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

#[cfg(test)]
mod tests {
    use super::super::new_op;
    use crate::crypto::test_util::{hex, multipart, oneshot, random_chunks, Rng};
    use crate::crypto::{CryptoError, Direction, Mode};

    /// NIST SP 800-38A F.1.5 (ECB-AES256) and F.2.5 (CBC-AES256).
    const KEY: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const IV: &str = "000102030405060708090a0b0c0d0e0f";
    const PT: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";
    const ECB: &str = "f3eed1bdb5d2a03c064b5a7e3db181f8591ccb10d410ed26dc5ba74a31362870b6ed21b99ca6f4f9f153e7b1beafed1d23304b7a39f9f3ff067d8d8f9e24ecc7";
    const CBC: &str = "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b";

    fn modes() -> [(Mode<'static>, &'static str); 2] {
        let iv: [u8; 16] = hex(IV).try_into().unwrap();
        [(Mode::Ecb, ECB), (Mode::Cbc { iv }, CBC)]
    }

    #[test]
    fn sp800_38a_vectors_whole_and_in_random_parts() {
        let (key, pt) = (hex(KEY), hex(PT));
        let mut rng = Rng(3);
        for (mode, ct) in modes() {
            let ct = hex(ct);
            let enc = || new_op(&key, &mode, Direction::Encrypt).unwrap();
            let dec = || new_op(&key, &mode, Direction::Decrypt).unwrap();
            assert_eq!(oneshot(&mut *enc(), &pt).unwrap(), ct);
            assert_eq!(oneshot(&mut *dec(), &ct).unwrap(), pt);
            for _ in 0..20 {
                let cuts = random_chunks(&mut rng, pt.len());
                assert_eq!(multipart(&mut *enc(), &pt, &cuts).unwrap(), ct);
                assert_eq!(multipart(&mut *dec(), &ct, &cuts).unwrap(), pt);
            }
        }
    }

    #[test]
    fn a_partial_block_is_a_length_error() {
        let key = hex(KEY);
        for (mode, _) in modes() {
            for dir in [Direction::Encrypt, Direction::Decrypt] {
                let mut op = new_op(&key, &mode, dir).unwrap();
                assert_eq!(
                    op.oneshot(&[0; 17], &mut [0; 32]),
                    Err(CryptoError::DataLen)
                );
                let mut op = new_op(&key, &mode, dir).unwrap();
                assert_eq!(op.update(&[0; 20], &mut [0; 32]), Ok(16));
                assert_eq!(op.finish(&mut []), Err(CryptoError::DataLen));
            }
        }
    }

    #[test]
    fn a_short_buffer_changes_nothing() {
        let (key, pt) = (hex(KEY), hex(PT));
        let mode = Mode::Cbc { iv: [0; 16] };
        let mut op = new_op(&key, &mode, Direction::Encrypt).unwrap();
        assert_eq!(op.update_len(20), 16);
        assert_eq!(
            op.update(&pt[..20], &mut [0; 15]),
            Err(CryptoError::BufferTooSmall { needed: 16 })
        );
        let mut out = [0u8; 16];
        assert_eq!(op.update(&pt[..20], &mut out), Ok(16));
        let want = oneshot(
            &mut *new_op(&key, &mode, Direction::Encrypt).unwrap(),
            &pt[..16],
        );
        assert_eq!(out.to_vec(), want.unwrap());
    }
}
