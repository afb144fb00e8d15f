//! AES-GCM (CKM_AES_GCM) for any IV length 1..=256 bytes and tag length 4..=16 bytes.
//!
//! aes-gcm 0.11 fixes the nonce size and tag size at compile time and, without its
//! `hazmat` feature, only checks 12..=16-byte tags. So a 12-byte IV with a 16-byte tag
//! goes straight through `AesGcm<A, U12>` (the fast path) and everything else uses
//! `AesGcm` as a GHASH oracle, which needs nothing beyond its public API:
//!
//! with the all-zero 96-bit nonce N, `tag_N(A, C) = GHASH_H(A, C) ^ E_K(J0_N)` and
//! E_K(J0_N) is one block encryption, so `GHASH_H(A, C) = tag_N(A, C) ^ E_K(J0_N)`.
//! To make aes-gcm hash a given ciphertext C we feed it `C ^ KS_N` as plaintext; it
//! turns that back into C (in place) and returns the tag. From GHASH we get
//! J0 = GHASH_H(IV || 0 pad || [len(IV)]64), which is exactly the oracle with A = "",
//! C = IV (SP 800-38D 7.1), and the full tag `GHASH_H(A, C) ^ E_K(J0)`, which we truncate
//! and compare in constant time. The keystream from inc32(J0) comes from the `ctr` crate.
//!
//! Multi-part encryption streams (`gcm_stream`: ciphertext out of every update, the tag
//! at the final call); multi-part decryption buffers the whole message (zeroized on drop)
//! so no plaintext leaves before the tag checks.

use super::gcm_stream::GcmStream;
use super::AesCipher;
use crate::crypto::{append_secret, ct_eq, CipherOp, CryptoError, Direction};
use aes::cipher::{array::Array, consts::U12, InnerIvInit, StreamCipherCore};
use aes_gcm::aead::{inout::InOutBuf, AeadInOut};
use aes_gcm::AesGcm;
use zeroize::Zeroizing;

type Ctr32<'a, A> = ::ctr::CtrCore<&'a A, ::ctr::flavors::Ctr32BE>;

/// aes-gcm's per-message plaintext limit (2^36 - 32 bytes); checked up front so no
/// library call fails half way through an in-place transformation.
const P_MAX: u64 = aes_gcm::P_MAX;
/// J0 of the all-zero 96-bit oracle nonce.
const ORACLE_J0: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Key material and per-message constants; separate from the buffer so the buffer can
/// be borrowed mutably while the engine is borrowed shared.
struct Engine<A: AesCipher> {
    aead: AesGcm<A, U12>,
    raw: A,
    /// Set when the IV is 96 bits: aes-gcm can then take the message directly.
    nonce: Option<[u8; 12]>,
    /// Pre-counter block J0 (SP 800-38D 7.1); public, like the IV.
    j0: [u8; 16],
    /// E_K(J0), the tag mask.
    tag_mask: Zeroizing<[u8; 16]>,
    /// E_K(J0_N) for the oracle nonce; removes the mask from oracle tags.
    oracle_mask: Zeroizing<[u8; 16]>,
    aad: Vec<u8>,
    tag_len: usize,
}

/// Decrypt input: borrowed from the caller (fast path) or our own scratch copy, which the
/// slow path hashes in place.
enum Input<'a> {
    Shared(&'a [u8]),
    Owned(&'a mut [u8]),
}

impl Input<'_> {
    fn len(&self) -> usize {
        match self {
            Input::Shared(s) => s.len(),
            Input::Owned(o) => o.len(),
        }
    }
}

pub(super) struct GcmOp<A: AesCipher> {
    eng: Engine<A>,
    dir: Direction,
    /// Multi-part encryption streams (see `gcm_stream`); made by the first update.
    stream: Option<GcmStream<A>>,
    /// Multi-part input (plaintext, or ciphertext || tag); wiped on drop.
    buf: Zeroizing<Vec<u8>>,
}

impl<A: AesCipher> GcmOp<A> {
    pub(super) fn new(
        cipher: A,
        iv: &[u8],
        aad: &[u8],
        tag_len: usize,
        dir: Direction,
    ) -> Result<Self, CryptoError> {
        if !(4..=16).contains(&tag_len) || iv.is_empty() || iv.len() > 256 {
            return Err(CryptoError::Param);
        }
        let raw = cipher.clone();
        let mut eng = Engine {
            aead: AesGcm::from(cipher),
            oracle_mask: encrypt_block(&raw, &ORACLE_J0),
            raw,
            nonce: <[u8; 12]>::try_from(iv).ok(),
            j0: [0; 16],
            tag_mask: Zeroizing::new([0; 16]),
            aad: aad.to_vec(),
            tag_len,
        };
        eng.j0 = match eng.nonce {
            Some(n) => j0_from_nonce(&n),
            None => {
                let mut scratch = [0u8; 256];
                let iv_copy = scratch.get_mut(..iv.len()).ok_or(CryptoError::Param)?;
                iv_copy.copy_from_slice(iv);
                *eng.ghash(&[], iv_copy)?
            }
        };
        eng.tag_mask = encrypt_block(&eng.raw, &eng.j0);
        Ok(Self {
            eng,
            dir,
            stream: None,
            buf: Zeroizing::new(Vec::new()),
        })
    }

    /// The streaming encryptor, made on the first multi-part call.
    fn stream_mut(&mut self) -> Result<&mut GcmStream<A>, CryptoError> {
        if self.stream.is_none() {
            let st = GcmStream::new(
                self.eng.raw.clone(),
                &self.eng.j0,
                &self.eng.aad,
                self.eng.tag_len,
            )?;
            self.stream = Some(st);
        }
        self.stream.as_mut().ok_or(CryptoError::Param)
    }

    /// Largest input this op may buffer or process.
    fn max_input(&self) -> u64 {
        match self.dir {
            Direction::Encrypt => P_MAX,
            Direction::Decrypt => P_MAX + self.eng.tag_len as u64,
        }
    }

    fn out_len(&self, input_len: usize) -> usize {
        match self.dir {
            Direction::Encrypt => input_len.saturating_add(self.eng.tag_len),
            Direction::Decrypt => input_len.saturating_sub(self.eng.tag_len),
        }
    }

    fn oneshot_inner(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        if input.len() as u64 > self.max_input() {
            return Err(CryptoError::DataLen);
        }
        match self.dir {
            Direction::Encrypt => self.eng.encrypt(input, output),
            Direction::Decrypt => {
                let n = input
                    .len()
                    .checked_sub(self.eng.tag_len)
                    .ok_or(CryptoError::DataLen)?;
                if output.len() < n {
                    return Err(CryptoError::BufferTooSmall { needed: n });
                }
                if self.eng.fast_decrypt() {
                    return self.eng.decrypt(Input::Shared(input), output);
                }
                // The slow path hashes the ciphertext in place, so work on our own copy.
                self.buf.clear();
                append_secret(&mut self.buf, input)?;
                let r = self.eng.decrypt(Input::Owned(&mut self.buf), output);
                self.buf.clear();
                r
            }
        }
    }

    fn finish_inner(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        let r = match self.dir {
            Direction::Encrypt => self.eng.encrypt(&self.buf, output),
            Direction::Decrypt => self.eng.decrypt(Input::Owned(&mut self.buf), output),
        };
        if r.is_ok() {
            zeroize::Zeroize::zeroize(&mut *self.buf);
        }
        r
    }
}

impl<A: AesCipher> Engine<A> {
    fn fast_decrypt(&self) -> bool {
        self.nonce.is_some() && self.tag_len == 16
    }

    /// Writes ciphertext || tag; `output` must hold input.len() + tag_len bytes.
    fn encrypt(&self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        let n = input.len();
        let needed = n.checked_add(self.tag_len).ok_or(CryptoError::DataLen)?;
        let out = output
            .get_mut(..needed)
            .ok_or(CryptoError::BufferTooSmall { needed })?;
        let (ct, tag_out) = out.split_at_mut(n);
        let full = match self.nonce {
            Some(nonce) => {
                let buf = InOutBuf::new(input, ct).map_err(|_| CryptoError::DataLen)?;
                let tag = self
                    .aead
                    .encrypt_inout_detached(&Array::from(nonce), &self.aad, buf)
                    .map_err(|_| CryptoError::DataLen)?;
                Zeroizing::new(tag.into())
            }
            None => {
                let buf = InOutBuf::new(input, &mut *ct).map_err(|_| CryptoError::DataLen)?;
                self.keystream(&self.j0, buf)?;
                self.full_tag(ct)?
            }
        };
        tag_out.copy_from_slice(full.get(..self.tag_len).ok_or(CryptoError::Param)?);
        Ok(needed)
    }

    /// Decrypts ciphertext || tag, writing to `output` only after the tag verifies.
    fn decrypt(&self, input: Input<'_>, output: &mut [u8]) -> Result<usize, CryptoError> {
        let n = input
            .len()
            .checked_sub(self.tag_len)
            .ok_or(CryptoError::DataLen)?;
        let out = output
            .get_mut(..n)
            .ok_or(CryptoError::BufferTooSmall { needed: n })?;
        match (self.nonce, input) {
            (Some(nonce), input) if self.tag_len == 16 => {
                let data: &[u8] = match input {
                    Input::Shared(s) => s,
                    Input::Owned(o) => o,
                };
                let (ct, tag) = data.split_at_checked(n).ok_or(CryptoError::DataLen)?;
                let tag = <[u8; 16]>::try_from(tag).map_err(|_| CryptoError::DataLen)?;
                let buf = InOutBuf::new(ct, out).map_err(|_| CryptoError::DataLen)?;
                // aes-gcm compares the tag before it applies the keystream to `out`.
                self.aead
                    .decrypt_inout_detached(&Array::from(nonce), &self.aad, buf, &Array::from(tag))
                    .map_err(|_| CryptoError::Invalid)?;
            }
            (_, Input::Owned(data)) => {
                let (ct, tag) = data.split_at_mut_checked(n).ok_or(CryptoError::DataLen)?;
                let full = self.full_tag(ct)?;
                if !ct_eq(full.get(..self.tag_len).ok_or(CryptoError::Param)?, tag) {
                    return Err(CryptoError::Invalid);
                }
                let buf = InOutBuf::new(&*ct, out).map_err(|_| CryptoError::DataLen)?;
                self.keystream(&self.j0, buf)?;
            }
            // Callers copy into owned scratch whenever the fast path does not apply.
            (_, Input::Shared(_)) => return Err(CryptoError::Param),
        }
        Ok(n)
    }

    /// Full 16-byte tag over `ct` (which is left unchanged).
    fn full_tag(&self, ct: &mut [u8]) -> Result<Zeroizing<[u8; 16]>, CryptoError> {
        let mut t = self.ghash(&self.aad, ct)?;
        xor_in(&mut t, &self.tag_mask);
        Ok(t)
    }

    /// GHASH_H(pad(aad) || pad(data) || lengths) via the oracle; `data` ends as it began.
    fn ghash(&self, aad: &[u8], data: &mut [u8]) -> Result<Zeroizing<[u8; 16]>, CryptoError> {
        if data.len() as u64 > P_MAX {
            return Err(CryptoError::DataLen);
        }
        self.keystream(&ORACLE_J0, InOutBuf::from(&mut *data))?;
        let tag = self
            .aead
            .encrypt_inout_detached(&Array::from([0u8; 12]), aad, InOutBuf::from(data))
            .map_err(|_| CryptoError::DataLen)?;
        let mut t = Zeroizing::new(<[u8; 16]>::from(tag));
        xor_in(&mut t, &self.oracle_mask);
        Ok(t)
    }

    /// XORs the GCM keystream starting at inc32(j0) into `buf`.
    fn keystream(&self, j0: &[u8; 16], buf: InOutBuf<'_, '_, u8>) -> Result<(), CryptoError> {
        let mut start = *j0;
        let ctr = u32::from_be_bytes([j0[12], j0[13], j0[14], j0[15]]).wrapping_add(1);
        start[12..].copy_from_slice(&ctr.to_be_bytes());
        Ctr32::<A>::inner_iv_init(&self.raw, &Array::from(start))
            .try_apply_keystream_partial(buf)
            .map_err(|_| CryptoError::DataLen)
    }
}

fn j0_from_nonce(nonce: &[u8; 12]) -> [u8; 16] {
    let mut j0 = [0u8; 16];
    j0[..12].copy_from_slice(nonce);
    j0[15] = 1;
    j0
}

fn encrypt_block<A: AesCipher>(cipher: &A, block: &[u8; 16]) -> Zeroizing<[u8; 16]> {
    let mut out = Zeroizing::new(*block);
    cipher.encrypt_block(Array::cast_from_core_mut(&mut out));
    out
}

fn xor_in(acc: &mut [u8; 16], other: &[u8; 16]) {
    acc.iter_mut().zip(other).for_each(|(a, b)| *a ^= b);
}

impl<A: AesCipher> CipherOp for GcmOp<A> {
    fn oneshot_len(&self, input_len: usize) -> usize {
        self.out_len(input_len)
    }

    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.oneshot_inner(input, output)
    }

    fn update_len(&self, input_len: usize) -> usize {
        match self.dir {
            Direction::Encrypt => input_len,
            Direction::Decrypt => 0,
        }
    }

    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        if self.dir == Direction::Encrypt {
            let r = self.stream_mut().and_then(|st| st.update(input, output));
            return r;
        }
        let total = (self.buf.len() as u64).saturating_add(input.len() as u64);
        if total > self.max_input() {
            Err(CryptoError::DataLen)
        } else {
            append_secret(&mut self.buf, input).map(|()| 0)
        }
    }

    fn finish_len(&self) -> usize {
        match &self.stream {
            Some(st) => st.finish_len(),
            None => self.out_len(self.buf.len()),
        }
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        match self.stream.as_mut() {
            Some(st) => st.finish(output),
            None => self.finish_inner(output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::new_op;
    use crate::crypto::test_util::{hex, multipart, oneshot, random_chunks, Rng};
    use crate::crypto::{CryptoError, Direction, Mode};
    use aes_gcm::aead::{Aead, KeyInit, Payload};

    fn op(
        key: &[u8],
        iv: &[u8],
        aad: &[u8],
        tag_len: usize,
        dir: Direction,
    ) -> Box<dyn super::CipherOp> {
        let mode = Mode::Gcm { iv, aad, tag_len };
        new_op(key, &mode, dir).unwrap()
    }

    const K128: &str = "feffe9928665731c6d6a8f9467308308";
    const K192: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c";
    const K256: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
    const P64: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
    const P60: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
    const AAD: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const IV96: &str = "cafebabefacedbaddecaf888";
    const IV64: &str = "cafebabefacedbad";
    const IV480: &str = "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728\
                         c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b";

    /// (key, iv, aad, plaintext, ciphertext, tag): McGrew-Viega GCM spec test cases
    /// (as in SP 800-38D validation) plus two NIST CAVS extended-IV vectors.
    fn vectors() -> Vec<[String; 6]> {
        let z = |n: usize| "00".repeat(n);
        let v = |k: &str, iv: &str, a: &str, p: &str, c: &str, t: &str| {
            [k, iv, a, p, c, t].map(str::to_string)
        };
        vec![
            // Test case 1, 2: AES-128 zero key.
            v(
                &z(16),
                &z(12),
                "",
                "",
                "",
                "58e2fccefa7e3061367f1d57a4e7455a",
            ),
            v(
                &z(16),
                &z(12),
                "",
                &z(16),
                "0388dace60b6a392f328c2b971b2fe78",
                "ab6e47d42cec13bdf53a67b21257bddf",
            ),
            // Test case 3: no AAD, 4 whole blocks.
            v(
                K128,
                IV96,
                "",
                P64,
                "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
               21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
                "4d5c2af327cd64a62cf35abd2ba6fab4",
            ),
            // Test case 4: AAD, partial final block.
            v(
                K128,
                IV96,
                AAD,
                P60,
                "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
               21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
                "5bc94fbc3221a5db94fae95ae7121a47",
            ),
            // Test case 5: 64-bit IV.
            v(
                K128,
                IV64,
                AAD,
                P60,
                "61353b4c2806934a777ff51fa22a4755699b2a714fcdc6f83766e5f97b6c7423\
               73806900e49f24b22b097544d4896b424989b5e1ebac0f07c23f4598",
                "3612d2e79e3b0785561be14aaca2fccb",
            ),
            // Test case 6: 480-bit (60-byte) IV.
            v(
                K128,
                IV480,
                AAD,
                P60,
                "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca7\
               01e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5",
                "619cc5aefffe0bfa462af43c1699d050",
            ),
            // Test case 10: AES-192.
            v(
                K192,
                IV96,
                AAD,
                P60,
                "3980ca0b3c00e841eb06fac4872a2757859e1ceaa6efd984628593b40ca1e19c\
               7d773d00c144c525ac619d18c84a3f4718e2448b2fe324d9ccda2710",
                "2519498e80f1478f37ba55bd6d27618c",
            ),
            // Test case 13, 14: AES-256 zero key.
            v(
                &z(32),
                &z(12),
                "",
                "",
                "",
                "530f8afbc74536b9a963b4f1c4cb738b",
            ),
            v(
                &z(32),
                &z(12),
                "",
                &z(16),
                "cea7403d4d606b6e074ec5d3baf39d18",
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            // Test case 16: AES-256 with AAD.
            v(
                K256,
                IV96,
                AAD,
                P60,
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
               8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
            // Test case 17: AES-256, 64-bit IV.
            v(
                K256,
                IV64,
                AAD,
                P60,
                "c3762df1ca787d32ae47c13bf19844cbaf1ae14d0b976afac52ff7d79bba9de0\
               feb582d33934a4f0954cc2363bc73f7862ac430e64abe499f47c9b1f",
                "3a337dbf46a792c45e454913fe2ea8f2",
            ),
            // Test case 18: AES-256, 480-bit IV.
            v(
                K256,
                IV480,
                AAD,
                P60,
                "5a8def2f0c9e53f1f75d7853659e2a20eeb2b22aafde6419a058ab4f6f746bf4\
               0fc0c3b780f244452da3ebf1c5d82cdea2418997200ef82e44ae7e3f",
                "a44a8266ee1c8eb0c8b5d4cf5ae9f19a",
            ),
            // CAVS gcmEncryptExtIV128: 8-bit and 1024-bit IVs.
            v(
                "15b2d414826453f9e1c7dd0b69d8d1eb",
                "b6",
                "",
                "8cfa255530c6fbc19d51bd4aeb39c91b",
                "4822cb98bd5f5d921ee19285c9032375",
                "8a40670ebac98cf4e9cc1bf8f803167d",
            ),
            v(
                "71eebc49c8fb773b2224eaff3ad68714",
                "07e961e67784011f72faafd95b0eb64089c8de15ad685ec57e63d56e679d3e20\
               2b18b75fcbbec3185ffc41653bc2ac4ae6ae8be8c85636f353a9d19a86100d0b\
               d035cc6bdefcab4318ac7b1a08b819427ad8f6abc782466c6ebd4d6a0dd76e78\
               389b0a2a66506bb85f038ffc1da220c24f3817c7b2d02c5e8fc5e7e3be5074bc",
                "",
                "705da82292143d2c949dc4ba014f6396",
                "032363cf0828a03553478bec0f51f372",
                "c681b2c568feaa21900bc44b86aeb946",
            ),
        ]
    }

    #[test]
    fn known_answers_all_tag_lengths_and_splits() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for t in vectors() {
            let [k, iv, a, p, c, tag] = t.clone().map(|s| hex(&s));
            for tag_len in [16usize, 15, 13, 12, 8, 4] {
                let mut expect = c.clone();
                expect.extend_from_slice(&tag[..tag_len]);
                let enc = oneshot(&mut *op(&k, &iv, &a, tag_len, Direction::Encrypt), &p).unwrap();
                assert_eq!(enc, expect, "encrypt {t:?} tag_len {tag_len}");
                let dec =
                    oneshot(&mut *op(&k, &iv, &a, tag_len, Direction::Decrypt), &expect).unwrap();
                assert_eq!(dec, p);
                for _ in 0..4 {
                    let chunks = random_chunks(&mut rng, p.len());
                    let mut e = op(&k, &iv, &a, tag_len, Direction::Encrypt);
                    assert_eq!(multipart(&mut *e, &p, &chunks).unwrap(), expect);
                    let chunks = random_chunks(&mut rng, expect.len());
                    let mut d = op(&k, &iv, &a, tag_len, Direction::Decrypt);
                    assert_eq!(multipart(&mut *d, &expect, &chunks).unwrap(), p);
                }
            }
        }
    }

    /// Cross-check against aes-gcm's own compile-time nonce sizes (incl. 12-byte tags),
    /// over random message and AAD lengths.
    #[test]
    fn matches_aes_gcm_generic_nonce_sizes() {
        use aes::cipher::consts::{U1, U12, U16, U60, U8};
        use aes_gcm::AesGcm;
        fn check<N: aes::cipher::array::ArraySize, T: aes_gcm::TagSize>(
            rng: &mut Rng,
            tag_len: usize,
        ) where
            AesGcm<aes::Aes256, N, T>: KeyInit + Aead + aes_gcm::AeadCore<NonceSize = N>,
        {
            for _ in 0..20 {
                let key = rng.bytes(32);
                let iv = rng.bytes(N::USIZE);
                let (pl, al) = (rng.below(80), rng.below(40));
                let (msg, aad) = (rng.bytes(pl), rng.bytes(al));
                let reference = AesGcm::<aes::Aes256, N, T>::new_from_slice(&key)
                    .unwrap()
                    .encrypt(
                        aes::cipher::array::Array::<u8, N>::try_from(&iv[..])
                            .as_ref()
                            .unwrap(),
                        Payload {
                            msg: &msg,
                            aad: &aad,
                        },
                    )
                    .unwrap();
                let ours =
                    oneshot(&mut *op(&key, &iv, &aad, tag_len, Direction::Encrypt), &msg).unwrap();
                assert_eq!(ours, reference, "iv {} pt {pl} aad {al}", N::USIZE);
                let back = oneshot(
                    &mut *op(&key, &iv, &aad, tag_len, Direction::Decrypt),
                    &ours,
                )
                .unwrap();
                assert_eq!(back, msg);
            }
        }
        let mut rng = Rng(7);
        check::<U1, U16>(&mut rng, 16);
        check::<U8, U16>(&mut rng, 16);
        check::<U12, U16>(&mut rng, 16);
        check::<U16, U16>(&mut rng, 16);
        check::<U60, U16>(&mut rng, 16);
        check::<U12, U12>(&mut rng, 12);
        check::<U60, U12>(&mut rng, 12);
    }

    /// Every single-bit change of ciphertext, tag or AAD must fail, writing nothing,
    /// on both the fast path (96-bit IV, full tag) and the oracle path.
    #[test]
    fn tampering_is_rejected_and_nothing_is_written() {
        let key = hex(K128);
        let aad = hex(AAD);
        let msg = hex(P60);
        for (iv, tag_len) in [
            (hex(IV96), 16),
            (hex(IV96), 12),
            (hex(IV96), 4),
            (hex(IV480), 16),
            (hex(IV64), 8),
        ] {
            let ct = oneshot(&mut *op(&key, &iv, &aad, tag_len, Direction::Encrypt), &msg).unwrap();
            for bit in (0..ct.len() * 8).step_by(7).chain([ct.len() * 8 - 1]) {
                let mut bad = ct.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let mut out = vec![0xa5u8; ct.len()];
                let mut d = op(&key, &iv, &aad, tag_len, Direction::Decrypt);
                assert_eq!(d.oneshot(&bad, &mut out), Err(CryptoError::Invalid));
                assert!(out.iter().all(|&b| b == 0xa5), "output written on failure");
                // Multi-part: the failure surfaces at finish, still writing nothing.
                let mut d = op(&key, &iv, &aad, tag_len, Direction::Decrypt);
                assert_eq!(d.update(&bad, &mut []), Ok(0));
                assert_eq!(d.finish(&mut out), Err(CryptoError::Invalid));
                assert!(out.iter().all(|&b| b == 0xa5));
            }
            let mut other_aad = aad.clone();
            other_aad[0] ^= 1;
            let mut d = op(&key, &iv, &other_aad, tag_len, Direction::Decrypt);
            assert_eq!(oneshot(&mut *d, &ct), Err(CryptoError::Invalid));
            // Truncating a longer tag is not the same as a shorter tag_len.
            if tag_len > 4 {
                let mut d = op(&key, &iv, &aad, tag_len - 1, Direction::Decrypt);
                assert_eq!(oneshot(&mut *d, &ct), Err(CryptoError::Invalid));
            }
        }
    }

    #[test]
    fn buffer_too_small_changes_nothing() {
        let key = hex(K256);
        let aad = hex(AAD);
        let msg = hex(P60);
        for iv in [hex(IV96), hex(IV480)] {
            for tag_len in [16, 12] {
                let expect =
                    oneshot(&mut *op(&key, &iv, &aad, tag_len, Direction::Encrypt), &msg).unwrap();
                // One-shot encrypt and decrypt.
                let mut e = op(&key, &iv, &aad, tag_len, Direction::Encrypt);
                let mut small = vec![0u8; expect.len() - 1];
                let needed = expect.len();
                assert_eq!(
                    e.oneshot(&msg, &mut small),
                    Err(CryptoError::BufferTooSmall { needed })
                );
                assert_eq!(oneshot(&mut *e, &msg).unwrap(), expect);
                let mut d = op(&key, &iv, &aad, tag_len, Direction::Decrypt);
                let mut small = vec![0x11u8; msg.len() - 1];
                let needed = msg.len();
                assert_eq!(
                    d.oneshot(&expect, &mut small),
                    Err(CryptoError::BufferTooSmall { needed })
                );
                assert!(small.iter().all(|&b| b == 0x11));
                let mut exact = vec![0u8; msg.len()];
                assert_eq!(d.oneshot(&expect, &mut exact), Ok(msg.len()));
                assert_eq!(exact, msg);
                // Multi-part encryption streams: each update returns its
                // ciphertext (a short buffer changes nothing), the final
                // call the tag (retried after a short buffer).
                let mut e = op(&key, &iv, &aad, tag_len, Direction::Encrypt);
                let mut out = vec![0u8; expect.len()];
                assert_eq!(e.update_len(10), 10);
                assert_eq!(
                    e.update(&msg[..10], &mut out[..9]),
                    Err(CryptoError::BufferTooSmall { needed: 10 })
                );
                assert_eq!(e.update(&msg[..10], &mut out), Ok(10));
                let rest = msg.len() - 10;
                assert_eq!(e.update(&msg[10..], &mut out[10..]), Ok(rest));
                assert_eq!(e.finish_len(), tag_len);
                let mut small = vec![0u8; tag_len - 1];
                assert_eq!(
                    e.finish(&mut small),
                    Err(CryptoError::BufferTooSmall { needed: tag_len })
                );
                assert_eq!(e.finish(&mut out[msg.len()..]), Ok(tag_len));
                assert_eq!(out, expect);
                let mut d = op(&key, &iv, &aad, tag_len, Direction::Decrypt);
                d.update(&expect, &mut []).unwrap();
                assert_eq!(d.finish_len(), msg.len());
                let mut small = vec![0u8; msg.len() - 1];
                assert_eq!(
                    d.finish(&mut small),
                    Err(CryptoError::BufferTooSmall { needed: msg.len() })
                );
                let mut out = vec![0u8; msg.len()];
                assert_eq!(d.finish(&mut out), Ok(msg.len()));
                assert_eq!(out, msg);
            }
        }
    }

    #[test]
    fn short_input_and_bad_params() {
        let key = [7u8; 16];
        let iv = [1u8; 12];
        for tag_len in [4usize, 16] {
            let mut d = op(&key, &iv, b"", tag_len, Direction::Decrypt);
            assert_eq!(
                oneshot(&mut *d, &vec![0; tag_len - 1]),
                Err(CryptoError::DataLen)
            );
            let mut d = op(&key, &iv, b"", tag_len, Direction::Decrypt);
            d.update(&vec![0; tag_len - 1], &mut []).unwrap();
            assert_eq!(d.finish_len(), 0);
            assert_eq!(d.finish(&mut [0; 32]), Err(CryptoError::DataLen));
        }
        let bad = |iv: &[u8], tag_len: usize| {
            let mode = Mode::Gcm {
                iv,
                aad: &[],
                tag_len,
            };
            new_op(&key, &mode, Direction::Encrypt).err()
        };
        assert_eq!(bad(&iv, 3), Some(CryptoError::Param));
        assert_eq!(bad(&iv, 17), Some(CryptoError::Param));
        assert_eq!(bad(&iv, 0), Some(CryptoError::Param));
        assert_eq!(bad(&[], 16), Some(CryptoError::Param));
        assert_eq!(bad(&[0; 257], 16), Some(CryptoError::Param));
        assert_eq!(bad(&[0; 256], 16), None);
        assert_eq!(bad(&[0; 1], 4), None);
    }

    #[test]
    fn empty_message_is_tag_only() {
        let key = hex(K128);
        for iv in [hex(IV96), hex(IV64)] {
            let tag = oneshot(&mut *op(&key, &iv, b"hdr", 16, Direction::Encrypt), b"").unwrap();
            assert_eq!(tag.len(), 16);
            let mut e = op(&key, &iv, b"hdr", 16, Direction::Encrypt);
            assert_eq!(multipart(&mut *e, b"", &[]).unwrap(), tag);
            let pt = oneshot(&mut *op(&key, &iv, b"hdr", 16, Direction::Decrypt), &tag).unwrap();
            assert!(pt.is_empty());
        }
    }

    #[test]
    fn encrypt_op_cannot_be_reused() {
        // A second message under the same IV would reuse keystream.
        let mut e = op(&[1; 16], &[2; 12], b"", 16, Direction::Encrypt);
        assert!(oneshot(&mut *e, b"first").is_ok());
        assert_eq!(oneshot(&mut *e, b"second"), Err(CryptoError::Param));
    }
}
