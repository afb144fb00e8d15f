//! AES-CBC with PKCS#7 padding (CKM_AES_CBC_PAD) on top of the `cbc` crate's block modes.
//!
//! Multi-part: encryption emits whole blocks and keeps the remainder (0..=15 bytes);
//! decryption keeps back the final block whenever the input so far is block-aligned,
//! because that block may carry the padding (the same rule as OpenSSL's EVP_DecryptUpdate).

use super::AesCipher;
use crate::crypto::{CipherOp, CryptoError, Direction, Staged};
use ::cbc::{Decryptor, Encryptor};
use aes::cipher::{
    array::Array, consts::U16, BlockModeDecrypt, BlockModeEncrypt, InnerIvInit, IvState, SetIvState,
};
use zeroize::Zeroizing;

type Block = Array<u8, U16>;
const BS: usize = 16;

pub(super) fn new_op<A: AesCipher>(cipher: A, iv: &[u8; 16], dir: Direction) -> Box<dyn CipherOp> {
    let iv = Array::from(*iv);
    match dir {
        Direction::Encrypt => Box::new(Staged::new(CbcEncrypt {
            mode: Encryptor::inner_iv_init(cipher, &iv),
            pending: Pending::default(),
        })),
        Direction::Decrypt => Box::new(Staged::new(CbcDecrypt {
            mode: Decryptor::inner_iv_init(cipher, &iv),
            pending: Pending::default(),
        })),
    }
}

/// Bytes carried between calls: a partial block, or (decrypt) a held-back full block.
#[derive(Default)]
struct Pending {
    buf: Zeroizing<[u8; BS]>,
    len: usize,
}

impl Pending {
    /// Treats `pending || input` as one stream, runs its first `emit` blocks through
    /// `f` into `output`, and keeps the rest (which must fit in one block).
    fn feed(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        emit: usize,
        mut f: impl FnMut(&[Block], &mut [Block]) -> Result<(), CryptoError>,
    ) -> Result<usize, CryptoError> {
        let out_len = emit.checked_mul(BS).ok_or(CryptoError::DataLen)?;
        let output = output
            .get_mut(..out_len)
            .ok_or(CryptoError::BufferTooSmall { needed: out_len })?;
        let mut input = input;
        let mut output = output;
        if emit > 0 && self.len > 0 {
            // Complete the pending block from the input and process it first.
            let take = BS - self.len;
            let (head, rest) = input.split_at_checked(take).ok_or(CryptoError::DataLen)?;
            self.buf
                .get_mut(self.len..)
                .ok_or(CryptoError::DataLen)?
                .copy_from_slice(head);
            let (first, out_rest) = output
                .split_at_mut_checked(BS)
                .ok_or(CryptoError::DataLen)?;
            let (first, _) = Block::slice_as_chunks_mut(first);
            f(
                core::slice::from_ref(Block::cast_from_core(&self.buf)),
                first,
            )?;
            self.len = 0;
            input = rest;
            output = out_rest;
        }
        let bulk = output.len();
        let (now, keep) = input.split_at_checked(bulk).ok_or(CryptoError::DataLen)?;
        if bulk > 0 {
            let (in_blocks, _) = Block::slice_as_chunks(now);
            let (out_blocks, _) = Block::slice_as_chunks_mut(output);
            f(in_blocks, out_blocks)?;
        }
        let end = self.len + keep.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(CryptoError::DataLen)?
            .copy_from_slice(keep);
        self.len = end;
        Ok(out_len)
    }
}

struct CbcEncrypt<A: AesCipher> {
    mode: Encryptor<A>,
    pending: Pending,
}

impl<A: AesCipher> CbcEncrypt<A> {
    fn update_inner(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let emit = self.pending.len.saturating_add(input.len()) / BS;
        let mode = &mut self.mode;
        self.pending.feed(input, output, emit, |i, o| {
            mode.encrypt_blocks_b2b(i, o)
                .map_err(|_| CryptoError::DataLen)
        })
    }

    fn finish_inner(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        let out = output
            .get_mut(..BS)
            .ok_or(CryptoError::BufferTooSmall { needed: BS })?;
        let pad = BS - self.pending.len; // 1..=16, as pending.len <= 15 after update
        let buf = &mut *self.pending.buf;
        buf.get_mut(self.pending.len..)
            .ok_or(CryptoError::DataLen)?
            .fill(pad as u8);
        self.mode.encrypt_block(Block::cast_from_core_mut(buf));
        out.copy_from_slice(buf);
        self.pending = Pending::default();
        Ok(BS)
    }
}

impl<A: AesCipher> CipherOp for CbcEncrypt<A> {
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
        (self.pending.len.saturating_add(input_len) / BS) * BS
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

struct CbcDecrypt<A: AesCipher> {
    mode: Decryptor<A>,
    pending: Pending,
}

impl<A: AesCipher> CbcDecrypt<A> {
    /// Blocks `update` may emit: all complete ones except a final block-aligned one.
    fn emit_blocks(&self, input_len: usize) -> usize {
        let total = self.pending.len.saturating_add(input_len);
        if total.is_multiple_of(BS) {
            (total / BS).saturating_sub(1)
        } else {
            total / BS
        }
    }

    fn update_inner(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let emit = self.emit_blocks(input.len());
        let mode = &mut self.mode;
        self.pending.feed(input, output, emit, |i, o| {
            mode.decrypt_blocks_b2b(i, o)
                .map_err(|_| CryptoError::DataLen)
        })
    }

    /// Decrypts `ct` as if chained after `prev`, leaving the mode's IV state as it was,
    /// so the padding can be checked before anything is committed.
    fn peek_block(&mut self, prev: &Block, ct: &[u8; BS]) -> Zeroizing<[u8; BS]> {
        let saved = self.mode.iv_state();
        self.mode.set_iv(prev);
        let mut pt = Zeroizing::new([0u8; BS]);
        self.mode.decrypt_block_b2b(
            Block::cast_from_core(ct),
            Block::cast_from_core_mut(&mut pt),
        );
        self.mode.set_iv(&saved);
        pt
    }

    fn finish_inner(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        if self.pending.len != BS {
            return Err(CryptoError::DataLen); // empty input or not a multiple of 16
        }
        let prev = self.mode.iv_state();
        let ct = *self.pending.buf;
        let pt = self.peek_block(&prev, &ct);
        let keep = BS - pad_len(&pt)?;
        let out = output
            .get_mut(..keep)
            .ok_or(CryptoError::BufferTooSmall { needed: keep })?;
        out.copy_from_slice(pt.get(..keep).ok_or(CryptoError::Invalid)?);
        self.pending = Pending::default();
        Ok(keep)
    }

    /// Checks the padding before writing anything, so a bad message or short buffer
    /// leaves `output` and the state untouched.
    fn oneshot_inner(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        if input.is_empty() || !input.len().is_multiple_of(BS) {
            return Err(CryptoError::DataLen);
        }
        let (head, last) = input.split_at(input.len() - BS);
        let last = <&[u8; BS]>::try_from(last).map_err(|_| CryptoError::DataLen)?;
        let prev = match head.len().checked_sub(BS).and_then(|i| head.get(i..)) {
            Some(p) => Block::try_from(p).map_err(|_| CryptoError::DataLen)?,
            None => self.mode.iv_state(),
        };
        let pt = self.peek_block(&prev, last);
        let keep = BS - pad_len(&pt)?;
        let needed = head.len() + keep;
        let out = output
            .get_mut(..needed)
            .ok_or(CryptoError::BufferTooSmall { needed })?;
        let (out_head, out_last) = out.split_at_mut(head.len());
        let (in_blocks, _) = Block::slice_as_chunks(head);
        let (out_blocks, _) = Block::slice_as_chunks_mut(out_head);
        self.mode
            .decrypt_blocks_b2b(in_blocks, out_blocks)
            .map_err(|_| CryptoError::DataLen)?;
        out_last.copy_from_slice(pt.get(..keep).ok_or(CryptoError::Invalid)?);
        Ok(needed)
    }
}

/// PKCS#7 padding length (1..=16) of the final block, checked without branching on
/// the block's contents (CBC padding checks are a classic oracle).
fn pad_len(block: &[u8; BS]) -> Result<usize, CryptoError> {
    let p = block[BS - 1];
    let mut bad = u8::from(p == 0) | u8::from(usize::from(p) > BS);
    for (i, &b) in block.iter().enumerate() {
        let in_pad = u8::from(i + usize::from(p) >= BS);
        bad |= in_pad & u8::from(b != p);
    }
    if core::hint::black_box(bad) == 0 {
        Ok(usize::from(p))
    } else {
        Err(CryptoError::Invalid)
    }
}

impl<A: AesCipher> CipherOp for CbcDecrypt<A> {
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
        self.update_inner(input, output)
    }

    fn finish_len(&self) -> usize {
        BS
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        self.finish_inner(output)
    }
}

#[cfg(test)]
mod tests {
    use super::super::new_op;
    use crate::crypto::test_util::{hex, multipart, oneshot, random_chunks, Rng};
    use crate::crypto::{CipherOp, CryptoError, Direction, Mode};

    fn op(key: &[u8], iv: &[u8], dir: Direction) -> Box<dyn CipherOp> {
        let iv: [u8; 16] = iv.try_into().unwrap();
        new_op(key, &Mode::CbcPad { iv }, dir).unwrap()
    }

    const IV: &str = "000102030405060708090a0b0c0d0e0f";
    const PT: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                      30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

    /// SP 800-38A F.2.1 / F.2.5 and RFC 3602 case 1: the padded output starts with the
    /// unpadded vector's ciphertext and carries one extra block of padding.
    #[test]
    fn known_answers() {
        let cases = [
            (
                "2b7e151628aed2a6abf7158809cf4f3c",
                IV,
                PT,
                "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2\
              73bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7",
            ),
            (
                "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
                IV,
                PT,
                "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d\
              39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b",
            ),
            (
                "06a9214036b8a15b512e03d534120006",
                "3dafba429d9eb430b422da802c9fac41",
                "53696e676c6520626c6f636b206d7367",
                "e353779c1079aeb82708942dbe77181a",
            ),
        ];
        for (k, iv, p, c) in cases {
            let (k, iv, p, c) = (hex(k), hex(iv), hex(p), hex(c));
            let ct = oneshot(&mut *op(&k, &iv, Direction::Encrypt), &p).unwrap();
            assert_eq!(ct.len(), p.len() + 16);
            assert_eq!(ct[..c.len()], c[..]);
            // The padding block is E(16 x 0x10 ^ previous ciphertext block).
            let last = oneshot(&mut *op(&k, &c[c.len() - 16..], Direction::Encrypt), &[]).unwrap();
            assert_eq!(ct[c.len()..], last[..]);
            assert_eq!(
                oneshot(&mut *op(&k, &iv, Direction::Decrypt), &ct).unwrap(),
                p
            );
        }
    }

    #[test]
    fn padding_round_trips_and_multipart_matches() {
        let mut rng = Rng(42);
        for key_len in [16, 24, 32] {
            let key = rng.bytes(key_len);
            let iv = rng.bytes(16);
            for len in 0..=33 {
                let msg = rng.bytes(len);
                let mut e = op(&key, &iv, Direction::Encrypt);
                assert_eq!(e.oneshot_len(len), (len / 16 + 1) * 16);
                let ct = oneshot(&mut *e, &msg).unwrap();
                assert_eq!(ct.len(), (len / 16 + 1) * 16);
                assert_eq!(
                    oneshot(&mut *op(&key, &iv, Direction::Decrypt), &ct).unwrap(),
                    msg
                );
                for _ in 0..6 {
                    let chunks = random_chunks(&mut rng, len);
                    let mut e = op(&key, &iv, Direction::Encrypt);
                    assert_eq!(multipart(&mut *e, &msg, &chunks).unwrap(), ct);
                    let chunks = random_chunks(&mut rng, ct.len());
                    let mut d = op(&key, &iv, Direction::Decrypt);
                    assert_eq!(multipart(&mut *d, &ct, &chunks).unwrap(), msg);
                }
            }
        }
    }

    #[test]
    fn multipart_random_long_messages() {
        let mut rng = Rng(4242);
        for _ in 0..30 {
            let key = rng.bytes(32);
            let iv = rng.bytes(16);
            let len = rng.below(300);
            let msg = rng.bytes(len);
            let ct = oneshot(&mut *op(&key, &iv, Direction::Encrypt), &msg).unwrap();
            let chunks = random_chunks(&mut rng, msg.len());
            assert_eq!(
                multipart(&mut *op(&key, &iv, Direction::Encrypt), &msg, &chunks).unwrap(),
                ct
            );
            let chunks = random_chunks(&mut rng, ct.len());
            assert_eq!(
                multipart(&mut *op(&key, &iv, Direction::Decrypt), &ct, &chunks).unwrap(),
                msg
            );
        }
    }

    #[test]
    fn decrypt_holds_back_aligned_final_block() {
        let key = [3u8; 16];
        let d = op(&key, &[0; 16], Direction::Decrypt);
        assert_eq!(d.update_len(16), 0);
        assert_eq!(d.update_len(17), 16);
        assert_eq!(d.update_len(32), 16);
        assert_eq!(d.update_len(40), 32);
        let e = op(&key, &[0; 16], Direction::Encrypt);
        assert_eq!(e.update_len(15), 0);
        assert_eq!(e.update_len(16), 16);
    }

    #[test]
    fn bad_lengths_are_data_len() {
        let key = [9u8; 16];
        for len in [0usize, 1, 15, 17, 31, 33] {
            let mut d = op(&key, &[0; 16], Direction::Decrypt);
            assert_eq!(
                oneshot(&mut *d, &vec![0; len]),
                Err(CryptoError::DataLen),
                "len {len}"
            );
            let mut d = op(&key, &[0; 16], Direction::Decrypt);
            assert_eq!(
                multipart(&mut *d, &vec![0; len], &[]),
                Err(CryptoError::DataLen),
                "len {len}"
            );
        }
    }

    /// Changing the IV flips the same bits of the first plaintext block, which lets us
    /// forge precise padding errors: pad byte 0, pad byte > 16, inconsistent pad bytes.
    #[test]
    fn bad_padding_is_invalid_and_nothing_is_written() {
        let key = [5u8; 32];
        let iv = [0u8; 16];
        let ct = oneshot(&mut *op(&key, &iv, Direction::Encrypt), &[0xab; 14]).unwrap(); // pad 02 02
        let forged = |flip: &[(usize, u8)]| {
            let mut iv2 = iv;
            for &(i, x) in flip {
                iv2[i] ^= x;
            }
            iv2
        };
        for flips in [
            vec![(15usize, 0x02u8)], // last byte 00
            vec![(15, 0x02 ^ 0x11)], // 0x11 > 16
            vec![(15, 0x02 ^ 0xff)], // 0xff
            vec![(14, 0x01)],        // 03 02: inconsistent
            vec![(15, 0x02 ^ 0x03)], // 02 03 claims 3 bytes, third is 0xab
        ] {
            let iv2 = forged(&flips);
            let mut out = vec![0x5au8; 16];
            let mut d = op(&key, &iv2, Direction::Decrypt);
            assert_eq!(
                d.oneshot(&ct, &mut out),
                Err(CryptoError::Invalid),
                "{flips:?}"
            );
            assert!(out.iter().all(|&b| b == 0x5a));
            let mut d = op(&key, &iv2, Direction::Decrypt);
            assert_eq!(d.update(&ct, &mut out), Ok(0));
            assert_eq!(d.finish(&mut out), Err(CryptoError::Invalid));
            assert!(out.iter().all(|&b| b == 0x5a));
        }
        // Valid variants: a full 16-byte pad block, and 01.
        let mut d = op(&key, &forged(&[(15, 0x02 ^ 0x01)]), Direction::Decrypt);
        assert_eq!(oneshot(&mut *d, &ct).unwrap().len(), 15);
    }

    #[test]
    fn buffer_too_small_changes_nothing() {
        let key = [1u8; 24];
        let iv = [2u8; 16];
        let msg: Vec<u8> = (0..37).collect();
        let ct = oneshot(&mut *op(&key, &iv, Direction::Encrypt), &msg).unwrap(); // 48 bytes
                                                                                  // One-shot encrypt.
        let mut e = op(&key, &iv, Direction::Encrypt);
        assert_eq!(
            e.oneshot(&msg, &mut [0; 47]),
            Err(CryptoError::BufferTooSmall { needed: 48 })
        );
        assert_eq!(oneshot(&mut *e, &msg).unwrap(), ct);
        // One-shot decrypt: the exact plaintext length suffices, one less does not.
        let mut d = op(&key, &iv, Direction::Decrypt);
        let mut small = [0x77u8; 36];
        assert_eq!(
            d.oneshot(&ct, &mut small),
            Err(CryptoError::BufferTooSmall { needed: 37 })
        );
        assert!(small.iter().all(|&b| b == 0x77));
        let mut exact = [0u8; 37];
        assert_eq!(d.oneshot(&ct, &mut exact), Ok(37));
        assert_eq!(exact[..], msg[..]);
        // Encrypt update and finish.
        let mut e = op(&key, &iv, Direction::Encrypt);
        assert_eq!(
            e.update(&msg[..20], &mut [0; 15]),
            Err(CryptoError::BufferTooSmall { needed: 16 })
        );
        let mut out = vec![0u8; 16];
        assert_eq!(e.update(&msg[..20], &mut out), Ok(16));
        let mut rest = vec![0u8; e.update_len(17)]; // 4 pending + 17 = one block, 5 left
        assert_eq!(e.update(&msg[20..], &mut rest), Ok(16));
        out.extend_from_slice(&rest);
        assert_eq!(
            e.finish(&mut [0; 15]),
            Err(CryptoError::BufferTooSmall { needed: 16 })
        );
        let mut fin = [0u8; 16];
        assert_eq!(e.finish(&mut fin), Ok(16));
        out.extend_from_slice(&fin);
        assert_eq!(out, ct);
        // Decrypt update and finish: finish needs only the unpadded length (5 here).
        let mut d = op(&key, &iv, Direction::Decrypt);
        assert_eq!(
            d.update(&ct, &mut [0; 31]),
            Err(CryptoError::BufferTooSmall { needed: 32 })
        );
        let mut out = vec![0u8; 32];
        assert_eq!(d.update(&ct, &mut out), Ok(32));
        assert_eq!(d.finish_len(), 16);
        assert_eq!(
            d.finish(&mut [0; 4]),
            Err(CryptoError::BufferTooSmall { needed: 5 })
        );
        let mut fin = [0u8; 5];
        assert_eq!(d.finish(&mut fin), Ok(5));
        out.extend_from_slice(&fin);
        assert_eq!(out, msg);
    }
}
