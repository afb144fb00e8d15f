//! AES-CTR (CKM_AES_CTR): the low `counter_bits` bits of the 16-byte counter block are a
//! big-endian counter. Reusing a counter value would reuse keystream, so an operation
//! that would need more blocks than the counter has left is refused (DataLen) up front.
//!
//! Whole blocks go through the `ctr` crate's core (parallel AES); the partial keystream
//! block between calls is kept here, in zeroizing storage, rather than in the crate's
//! buffered wrapper, whose buffer is only wiped when cipher's `zeroize` feature is on.
//! Since the counter never overflows its field, a plain 128-bit increment of the whole
//! block (what `Ctr128BE` does) is the same as incrementing the counter field.

use super::AesCipher;
use crate::crypto::{CipherOp, CryptoError};
use ::ctr::{flavors::Ctr128BE, CtrCore};
use aes::cipher::{array::Array, consts::U16, InOutBuf, InnerIvInit, StreamCipherCore};
use zeroize::Zeroizing;

type Block = Array<u8, U16>;
const BS: usize = 16;

pub(super) struct CtrOp<A: AesCipher> {
    cipher: A,
    /// Next counter block, as a big-endian integer.
    counter: u128,
    /// Counter values still unused, minus one (None: all used). Avoids 2^128 overflow.
    left_minus_one: Option<u128>,
    /// Keystream block in use and how much of it is consumed (BS = none left).
    ks: Zeroizing<[u8; BS]>,
    ks_used: usize,
}

impl<A: AesCipher> CtrOp<A> {
    pub(super) fn new(cipher: A, iv: &[u8; 16], counter_bits: usize) -> Result<Self, CryptoError> {
        if !(1..=128).contains(&counter_bits) {
            return Err(CryptoError::Param);
        }
        let counter = u128::from_be_bytes(*iv);
        let mask = u128::MAX >> (128 - counter_bits);
        Ok(Self {
            cipher,
            counter,
            left_minus_one: Some(mask - (counter & mask)),
            ks: Zeroizing::new([0; BS]),
            ks_used: BS,
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

    fn process(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let n = input.len();
        let output = output
            .get_mut(..n)
            .ok_or(CryptoError::BufferTooSmall { needed: n })?;
        let from_ks = n.min(BS - self.ks_used);
        let rest = n - from_ks;
        let (full, tail) = (rest / BS, rest % BS);
        self.reserve(full as u128 + u128::from(tail > 0))?;

        // 1. Leftover keystream from the previous call.
        let (in_ks, input) = input.split_at(from_ks);
        let (out_ks, output) = output.split_at_mut(from_ks);
        let ks = self.ks.get(self.ks_used..).unwrap_or(&[]);
        for ((o, i), k) in out_ks.iter_mut().zip(in_ks).zip(ks) {
            *o = i ^ k;
        }
        self.ks_used += from_ks;

        // 2. Whole blocks straight from the block cipher.
        let (in_full, in_tail) = input.split_at(full * BS);
        let (out_full, out_tail) = output.split_at_mut(full * BS);
        if full > 0 {
            let (ib, _) = Block::slice_as_chunks(in_full);
            let (ob, _) = Block::slice_as_chunks_mut(out_full);
            let blocks = InOutBuf::new(ib, ob).map_err(|_| CryptoError::DataLen)?;
            let start = Array::from(self.counter.to_be_bytes());
            CtrCore::<&A, Ctr128BE>::inner_iv_init(&self.cipher, &start)
                .apply_keystream_blocks_inout(blocks);
            self.counter = self.counter.wrapping_add(full as u128);
        }

        // 3. A trailing partial block: keep its unused keystream for the next call.
        if tail > 0 {
            *self.ks = self.counter.to_be_bytes();
            self.cipher
                .encrypt_block(Block::cast_from_core_mut(&mut self.ks));
            self.counter = self.counter.wrapping_add(1);
            for ((o, i), k) in out_tail.iter_mut().zip(in_tail).zip(self.ks.iter()) {
                *o = i ^ k;
            }
            self.ks_used = tail;
        }
        Ok(n)
    }
}

impl<A: AesCipher> CipherOp for CtrOp<A> {
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

#[cfg(test)]
mod tests {
    use super::super::new_op;
    use crate::crypto::test_util::{hex, multipart, oneshot, random_chunks, Rng};
    use crate::crypto::{CipherOp, CryptoError, Direction, Mode};

    fn op(key: &[u8], iv: [u8; 16], counter_bits: usize, dir: Direction) -> Box<dyn CipherOp> {
        new_op(key, &Mode::Ctr { iv, counter_bits }, dir).unwrap()
    }

    const CTR0: [u8; 16] = [
        0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe,
        0xff,
    ];
    const PT: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                      30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

    /// SP 800-38A F.5.1 (AES-128), F.5.3 (AES-192) and F.5.5 (AES-256); the counter
    /// carries from byte 15 into byte 14, so 16-bit and wider counters must all agree.
    #[test]
    fn known_answers() {
        let cases = [
            (
                "2b7e151628aed2a6abf7158809cf4f3c",
                "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff\
              5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
            ),
            (
                "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
                "1abc932417521ca24f2b0459fe7e6e0b090339ec0aa6faefd5ccc2c6f4ce8e94\
              1e36b26bd1ebc670d1bd1d665620abf74f78a7f6d29809585a97daec58c6b050",
            ),
            (
                "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
                "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5\
              2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6",
            ),
        ];
        let mut rng = Rng(99);
        let p = hex(PT);
        for (k, c) in cases {
            let (k, c) = (hex(k), hex(c));
            for bits in [16, 32, 64, 128] {
                assert_eq!(
                    oneshot(&mut *op(&k, CTR0, bits, Direction::Encrypt), &p).unwrap(),
                    c
                );
                assert_eq!(
                    oneshot(&mut *op(&k, CTR0, bits, Direction::Decrypt), &c).unwrap(),
                    p
                );
                for _ in 0..8 {
                    let chunks = random_chunks(&mut rng, p.len());
                    assert_eq!(
                        multipart(&mut *op(&k, CTR0, bits, Direction::Encrypt), &p, &chunks)
                            .unwrap(),
                        c
                    );
                }
            }
        }
    }

    #[test]
    fn multipart_matches_oneshot_random() {
        let mut rng = Rng(1234);
        for _ in 0..40 {
            let key_len = [16, 24, 32][rng.below(3)];
            let key = rng.bytes(key_len);
            let iv: [u8; 16] = rng.bytes(16).try_into().unwrap();
            let len = rng.below(500);
            let msg = rng.bytes(len);
            let ct = oneshot(&mut *op(&key, iv, 128, Direction::Encrypt), &msg).unwrap();
            let chunks = random_chunks(&mut rng, len);
            assert_eq!(
                multipart(&mut *op(&key, iv, 128, Direction::Encrypt), &msg, &chunks).unwrap(),
                ct
            );
            assert_eq!(
                oneshot(&mut *op(&key, iv, 128, Direction::Decrypt), &ct).unwrap(),
                msg
            );
        }
    }

    #[test]
    fn counter_wrap_is_refused() {
        let key = [0x42u8; 16];
        // 8-bit counter starting at 0: exactly 256 blocks, then no more.
        let mut e = op(&key, [0; 16], 8, Direction::Encrypt);
        let mut out = vec![0u8; 256 * 16];
        assert_eq!(e.update(&vec![0; 256 * 16], &mut out), Ok(256 * 16));
        assert_eq!(e.update(&[0], &mut [0]), Err(CryptoError::DataLen));
        let mut e = op(&key, [0; 16], 8, Direction::Encrypt);
        assert_eq!(
            oneshot(&mut *e, &vec![0; 256 * 16 + 1]),
            Err(CryptoError::DataLen)
        );
        let mut e = op(&key, [0; 16], 8, Direction::Encrypt);
        assert_eq!(
            oneshot(&mut *e, &vec![0; 256 * 16]).map(|v| v.len()),
            Ok(4096)
        );

        // Counter at 0xfe: two blocks; a partial block's leftover keystream is still usable.
        let mut iv = [0xaau8; 16];
        iv[15] = 0xfe;
        let mut e = op(&key, iv, 8, Direction::Encrypt);
        assert_eq!(e.update(&[0; 17], &mut [0; 17]), Ok(17));
        assert_eq!(e.update(&[0; 15], &mut [0; 15]), Ok(15));
        assert_eq!(e.update(&[0; 1], &mut [0; 1]), Err(CryptoError::DataLen));

        // Full-width counter at its maximum: one block only.
        let mut e = op(&key, [0xff; 16], 128, Direction::Encrypt);
        assert_eq!(e.update(&[0; 16], &mut [0; 16]), Ok(16));
        assert_eq!(e.update(&[0; 1], &mut [0; 1]), Err(CryptoError::DataLen));
        let mut e = op(&key, [0; 16], 128, Direction::Encrypt);
        assert_eq!(oneshot(&mut *e, &[0; 100]).map(|v| v.len()), Ok(100));
    }

    /// Bits above the counter field never change: the 8-bit counter at 0xff yields one
    /// block, and the keystream equals AES of the IV itself.
    #[test]
    fn counter_field_only() {
        let key = [0x13u8; 32];
        let mut iv = [0x77u8; 16];
        iv[15] = 0xff;
        let ks = oneshot(&mut *op(&key, iv, 8, Direction::Encrypt), &[0; 16]).unwrap();
        let ks128 = oneshot(&mut *op(&key, iv, 128, Direction::Encrypt), &[0; 32]).unwrap();
        assert_eq!(ks[..], ks128[..16]);
        assert_eq!(
            oneshot(&mut *op(&key, iv, 8, Direction::Encrypt), &[0; 17]),
            Err(CryptoError::DataLen)
        );
    }

    #[test]
    fn bad_counter_bits() {
        for bits in [0usize, 129, 1000] {
            let r = new_op(
                &[0; 16],
                &Mode::Ctr {
                    iv: [0; 16],
                    counter_bits: bits,
                },
                Direction::Encrypt,
            );
            assert_eq!(r.err(), Some(CryptoError::Param));
        }
        assert!(new_op(
            &[0; 16],
            &Mode::Ctr {
                iv: [0; 16],
                counter_bits: 1
            },
            Direction::Encrypt
        )
        .is_ok());
    }

    #[test]
    fn buffer_too_small_changes_nothing() {
        let key = [8u8; 16];
        let msg: Vec<u8> = (0..50).collect();
        let ct = oneshot(&mut *op(&key, CTR0, 32, Direction::Encrypt), &msg).unwrap();
        let mut e = op(&key, CTR0, 32, Direction::Encrypt);
        let mut out = vec![0u8; 50];
        assert_eq!(
            e.update(&msg[..7], &mut out[..6]),
            Err(CryptoError::BufferTooSmall { needed: 7 })
        );
        assert_eq!(e.update(&msg[..7], &mut out[..7]), Ok(7));
        assert_eq!(
            e.update(&msg[7..], &mut out[7..49]),
            Err(CryptoError::BufferTooSmall { needed: 43 })
        );
        assert_eq!(e.update(&msg[7..], &mut out[7..]), Ok(43));
        assert_eq!(e.finish_len(), 0);
        assert_eq!(e.finish(&mut []), Ok(0));
        assert_eq!(out, ct);
        let mut e = op(&key, CTR0, 32, Direction::Encrypt);
        assert_eq!(
            e.oneshot(&msg, &mut [0; 49]),
            Err(CryptoError::BufferTooSmall { needed: 50 })
        );
        assert_eq!(oneshot(&mut *e, &msg).unwrap(), ct);
    }
}
