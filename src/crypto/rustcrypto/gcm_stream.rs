//! Multi-part AES-GCM encryption that streams: every `C_EncryptUpdate`
//! returns the ciphertext of its input, and `C_EncryptFinal` returns the tag
//! (SP 800-38D: CTR keystream from inc32(J0), GHASH over AAD and ciphertext).
//! Memory stays constant whatever the message length, and a client that sizes
//! Final's buffer for the tag loses nothing.
//!
//! Only encryption streams: decryption keeps holding the message back until
//! the tag verifies (no unauthenticated plaintext leaves the module).

use aes::cipher::{InnerIvInit, StreamCipher};
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use zeroize::Zeroizing;

use super::AesCipher;
use crate::crypto::{CipherOp, CryptoError};

type Ctr32<A> = ctr::Ctr32BE<A>;
type Ctr32Core<A> = ctr::CtrCore<A, ctr::flavors::Ctr32BE>;

/// SP 800-38D's per-message plaintext limit (2^39 - 256 bits).
const P_MAX: u64 = (1 << 36) - 32;

pub(super) struct GcmStream<A: AesCipher> {
    keystream: Ctr32<A>,
    ghash: GHash,
    /// E_K(J0), the tag mask.
    tag_mask: Zeroizing<[u8; 16]>,
    /// Ciphertext not yet hashed (less than one block).
    partial: [u8; 16],
    partial_len: usize,
    aad_len: u64,
    ct_len: u64,
    tag_len: usize,
}

impl<A: AesCipher> GcmStream<A> {
    /// The stream for pre-counter block `j0` (see [`j0`]).
    pub(super) fn new(
        cipher: A,
        j0: &[u8; 16],
        aad: &[u8],
        tag_len: usize,
    ) -> Result<Self, CryptoError> {
        if !(4..=16).contains(&tag_len) {
            return Err(CryptoError::Param);
        }
        let h = encrypt_block(&cipher, &[0; 16]);
        let tag_mask = encrypt_block(&cipher, j0);
        let mut counter = *j0;
        let c = u32::from_be_bytes([j0[12], j0[13], j0[14], j0[15]]).wrapping_add(1);
        counter[12..].copy_from_slice(&c.to_be_bytes());
        let keystream =
            Ctr32::<A>::from_core(Ctr32Core::<A>::inner_iv_init(cipher, &counter.into()));
        let mut ghash = GHash::new(&ghash::Key::from(*h));
        ghash.update_padded(aad);
        Ok(GcmStream {
            keystream,
            ghash,
            tag_mask,
            partial: [0; 16],
            partial_len: 0,
            aad_len: aad.len() as u64,
            ct_len: 0,
            tag_len,
        })
    }

    /// Encrypt `input` into `output` (same length) and hash the ciphertext.
    fn encrypt(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let out = output
            .get_mut(..input.len())
            .ok_or(CryptoError::BufferTooSmall {
                needed: input.len(),
            })?;
        let total = self
            .ct_len
            .checked_add(input.len() as u64)
            .filter(|n| *n <= P_MAX)
            .ok_or(CryptoError::DataLen)?;
        out.copy_from_slice(input);
        self.keystream.apply_keystream(out);
        self.hash(out);
        self.ct_len = total;
        Ok(input.len())
    }

    fn hash(&mut self, mut ct: &[u8]) {
        if self.partial_len > 0 {
            let take = (16 - self.partial_len).min(ct.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&ct[..take]);
            self.partial_len += take;
            ct = &ct[take..];
            if self.partial_len < 16 {
                return;
            }
            self.ghash.update(&[self.partial.into()]);
            self.partial_len = 0;
        }
        let whole = ct.len() / 16 * 16;
        let (blocks, rest) = ct.split_at(whole);
        // Whole blocks in one call: GHASH then runs its parallel (PCLMUL)
        // path; there is nothing to pad.
        self.ghash.update_padded(blocks);
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    fn tag(&mut self) -> Zeroizing<[u8; 16]> {
        let mut g = self.ghash.clone();
        if self.partial_len > 0 {
            g.update_padded(&self.partial[..self.partial_len]);
        }
        let mut lens = [0u8; 16];
        lens[..8].copy_from_slice(&(self.aad_len * 8).to_be_bytes());
        lens[8..].copy_from_slice(&(self.ct_len * 8).to_be_bytes());
        g.update(&[lens.into()]);
        let s: [u8; 16] = g.finalize().into();
        let mut tag = Zeroizing::new([0u8; 16]);
        for (t, (a, b)) in tag.iter_mut().zip(s.iter().zip(self.tag_mask.iter())) {
            *t = a ^ b;
        }
        tag
    }
}

/// The pre-counter block J0 for `iv` (SP 800-38D 7.1); the engines compute
/// their own, this is for the tests.
#[cfg(test)]
fn j0<A: AesCipher>(cipher: &A, iv: &[u8]) -> Result<[u8; 16], CryptoError> {
    if iv.is_empty() || iv.len() > 256 {
        return Err(CryptoError::Param);
    }
    if let Ok(n) = <[u8; 12]>::try_from(iv) {
        let mut j0 = [0u8; 16];
        j0[..12].copy_from_slice(&n);
        j0[15] = 1;
        return Ok(j0);
    }
    let h = encrypt_block(cipher, &[0; 16]);
    let mut g = GHash::new(&ghash::Key::from(*h));
    g.update_padded(iv);
    let mut lens = [0u8; 16];
    lens[8..].copy_from_slice(&((iv.len() as u64) * 8).to_be_bytes());
    g.update(&[lens.into()]);
    Ok(g.finalize().into())
}

fn encrypt_block<A: AesCipher>(cipher: &A, block: &[u8; 16]) -> Zeroizing<[u8; 16]> {
    let mut b = (*block).into();
    cipher.encrypt_block(&mut b);
    Zeroizing::new(b.into())
}

impl<A: AesCipher> CipherOp for GcmStream<A> {
    fn oneshot_len(&self, input_len: usize) -> usize {
        input_len.saturating_add(self.tag_len)
    }

    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let needed = input.len().saturating_add(self.tag_len);
        if output.len() < needed {
            return Err(CryptoError::BufferTooSmall { needed });
        }
        self.encrypt(input, output).map(|n| {
            let tag = self.tag();
            output[n..needed].copy_from_slice(&tag[..self.tag_len]);
            needed
        })
    }

    fn update_len(&self, input_len: usize) -> usize {
        input_len
    }

    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.encrypt(input, output)
    }

    fn finish_len(&self) -> usize {
        self.tag_len
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        match output.get_mut(..self.tag_len) {
            Some(out) => {
                let tag = self.tag();
                out.copy_from_slice(&tag[..self.tag_len]);
                Ok(self.tag_len)
            }
            None => Err(CryptoError::BufferTooSmall {
                needed: self.tag_len,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{Aead, KeyInit, Payload};

    fn reference(key: &[u8; 32], iv: &[u8; 12], aad: &[u8], msg: &[u8]) -> Vec<u8> {
        let g = aes_gcm::Aes256Gcm::new(key.into());
        g.encrypt(iv.into(), Payload { msg, aad }).unwrap()
    }

    #[test]
    fn streams_the_same_bytes_as_one_shot_gcm_for_every_split() {
        let key = [7u8; 32];
        let iv = [9u8; 12];
        let aad = b"header bytes that are not a whole block";
        let msg: Vec<u8> = (0..200u32).map(|i| (i * 31 % 251) as u8).collect();
        let want = reference(&key, &iv, aad, &msg);
        for split in [0usize, 1, 15, 16, 17, 33, 100, 199, 200] {
            let cipher = aes::Aes256::new_from_slice(&key).unwrap();
            let j0 = j0(&cipher, &iv).unwrap();
            let mut op = GcmStream::new(cipher, &j0, aad, 16).unwrap();
            let mut out = vec![0u8; msg.len() + 16];
            let (a, b) = msg.split_at(split);
            let mut n = op.update(a, &mut out).unwrap();
            assert_eq!(n, a.len(), "an update returns all of its ciphertext");
            n += op.update(b, &mut out[n..]).unwrap();
            assert_eq!(op.finish_len(), 16);
            n += op.finish(&mut out[n..]).unwrap();
            assert_eq!(out[..n], want[..], "split at {split}");
        }
    }

    #[test]
    fn a_short_final_buffer_changes_nothing_and_a_finished_op_refuses_work() {
        let cipher = aes::Aes256::new_from_slice(&[1u8; 32]).unwrap();
        let j0 = j0(&cipher, &[2u8; 12]).unwrap();
        // With the call rules, as every operation is handed out.
        let mut op = crate::crypto::Staged::new(GcmStream::new(cipher, &j0, b"", 12).unwrap());
        let mut out = [0u8; 32];
        op.update(b"abc", &mut out).unwrap();
        let mut small = [0u8; 11];
        assert_eq!(
            op.finish(&mut small),
            Err(CryptoError::BufferTooSmall { needed: 12 })
        );
        assert_eq!(op.finish(&mut out), Ok(12));
        assert_eq!(op.update(b"x", &mut out), Err(CryptoError::Param));
    }
}

#[cfg(test)]
mod long_iv_tests {
    use super::*;
    use aes::cipher::KeyInit;
    use aes_gcm::aead::{Aead, Payload};

    #[test]
    fn a_60_byte_iv_gives_the_reference_ciphertext() {
        // aes-gcm with a U60 nonce as the independent reference.
        type Gcm60 = aes_gcm::AesGcm<aes::Aes128, aes::cipher::consts::U60>;
        let key = [3u8; 16];
        let iv = [5u8; 60];
        let want = Gcm60::new(&key.into())
            .encrypt(
                &iv.into(),
                Payload {
                    msg: b"streamed",
                    aad: b"a",
                },
            )
            .unwrap();
        let cipher = aes::Aes128::new_from_slice(&key).unwrap();
        let j0 = j0(&cipher, &iv).unwrap();
        let mut op = GcmStream::new(cipher, &j0, b"a", 16).unwrap();
        let mut out = [0u8; 24];
        let n = op.update(b"stream", &mut out).unwrap();
        let n = n + op.update(b"ed", &mut out[n..]).unwrap();
        let n = n + op.finish(&mut out[n..]).unwrap();
        assert_eq!(out[..n], want[..]);
    }
}
