//! The raw AES-256-GCM libraries, called directly (no PKCS#11): the baselines.
//!
//! * aws-lc-rs `LessSafeKey`: encrypt is `seal_in_place_separate_tag` on a
//!   reused buffer (plus copying the 16-byte tag out, as C_Encrypt must);
//!   decrypt is `open_separate_gather` from the ciphertext into a separate
//!   buffer. That is the same `EVP_AEAD_CTX_open_gather` call `open_in_place`
//!   makes, minus the memcpy that repeating `open_in_place` on the same
//!   ciphertext would need (it consumes its input), so the baseline is the
//!   bare AEAD cost.
//! * RustCrypto `aes-gcm` 0.11 (`AeadInOut`): encrypt in place
//!   (`encrypt_inout_detached` on one buffer), decrypt out of place
//!   (`decrypt_inout_detached` with separate in and out buffers).
//!
//! Both encrypt with a fresh nonce per message (a counter); both decrypt one
//! fixed ciphertext (made with IV 0) over and over, checking its tag.

use aes_gcm::aead::array::Array;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::p11::Dir;
use crate::Res;

pub const TAG: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    AwsLc,
    AesGcm,
}

impl Lib {
    pub fn label(self) -> &'static str {
        match self {
            Lib::AwsLc => "aws-lc-rs",
            Lib::AesGcm => "aes-gcm",
        }
    }
}

/// The 12-byte IV for message `n` of thread `thread` (both big-endian), so
/// that no two encryptions under one key share an IV.
#[inline]
pub fn iv_for(thread: u32, n: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[..4].copy_from_slice(&thread.to_be_bytes());
    iv[4..].copy_from_slice(&n.to_be_bytes());
    iv
}

/// A key of one library.
pub enum Key {
    AwsLc(LessSafeKey),
    AesGcm(Box<Aes256Gcm>),
}

impl Key {
    pub fn new(lib: Lib, key: &[u8; 32]) -> Res<Key> {
        Ok(match lib {
            Lib::AwsLc => Key::AwsLc(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, key).map_err(|_| "aws-lc-rs: bad key")?,
            )),
            Lib::AesGcm => Key::AesGcm(Box::new(
                Aes256Gcm::new_from_slice(key).map_err(|_| "aes-gcm: bad key")?,
            )),
        })
    }

    /// ciphertext || tag of `pt` under `iv` (allocates; setup and checks only).
    pub fn seal(&self, iv: [u8; 12], pt: &[u8]) -> Res<Vec<u8>> {
        let mut out = pt.to_vec();
        let tag: [u8; TAG] = match self {
            Key::AwsLc(k) => {
                let t = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(iv),
                        Aad::empty(),
                        &mut out,
                    )
                    .map_err(|_| "aws-lc-rs: seal failed")?;
                t.as_ref().try_into().map_err(|_| "aws-lc-rs: tag length")?
            }
            Key::AesGcm(k) => k
                .encrypt_inout_detached(&Array::from(iv), &[], out.as_mut_slice().into())
                .map_err(|_| "aes-gcm: seal failed")?
                .into(),
        };
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Plaintext of ciphertext || tag (allocates; setup and checks only).
    pub fn open(&self, iv: [u8; 12], ct: &[u8]) -> Res<Vec<u8>> {
        let n = ct
            .len()
            .checked_sub(TAG)
            .ok_or("ciphertext shorter than the tag")?;
        let mut out = vec![0u8; n];
        self.open_into(iv, ct, &mut out)?;
        Ok(out)
    }

    fn open_into(&self, iv: [u8; 12], ct: &[u8], out: &mut [u8]) -> Res<()> {
        let (c, t) = ct.split_at(out.len());
        match self {
            Key::AwsLc(k) => k
                .open_separate_gather(Nonce::assume_unique_for_key(iv), Aad::empty(), c, t, out)
                .map_err(|_| "aws-lc-rs: tag check failed".to_string()),
            Key::AesGcm(k) => {
                let buf = InOutBuf::new(c, out).map_err(|_| "aes-gcm: buffer lengths")?;
                let tag: [u8; TAG] = t.try_into().map_err(|_| "aes-gcm: tag length")?;
                k.decrypt_inout_detached(&Array::from(iv), &[], buf, &Array::from(tag))
                    .map_err(|_| "aes-gcm: tag check failed".to_string())
            }
        }
    }
}

/// Thread `thread`'s worker: `dir` on messages of `size` bytes. `ct` is
/// `key.seal(iv_for(0, 0), ..)` of a `size`-byte message (decrypt input).
pub fn worker<'a>(
    key: &'a Key,
    thread: u32,
    dir: Dir,
    size: usize,
    ct: &'a [u8],
) -> impl FnMut() -> Res<()> + 'a {
    let mut buf = vec![0x5au8; size];
    let mut tag_out = [0u8; TAG];
    let mut n = 0u64;
    let fixed = iv_for(0, 0);
    move || {
        match dir {
            Dir::Enc => {
                n += 1;
                let iv = iv_for(thread, n);
                let tag: &[u8] = match key {
                    Key::AwsLc(k) => {
                        let t = k
                            .seal_in_place_separate_tag(
                                Nonce::assume_unique_for_key(iv),
                                Aad::empty(),
                                &mut buf,
                            )
                            .map_err(|_| "aws-lc-rs: seal failed")?;
                        tag_out.copy_from_slice(t.as_ref());
                        &tag_out
                    }
                    Key::AesGcm(k) => {
                        let t = k
                            .encrypt_inout_detached(
                                &Array::from(iv),
                                &[],
                                buf.as_mut_slice().into(),
                            )
                            .map_err(|_| "aes-gcm: seal failed")?;
                        tag_out.copy_from_slice(&t);
                        &tag_out
                    }
                };
                std::hint::black_box(tag);
            }
            Dir::Dec => key.open_into(fixed, ct, &mut buf)?,
        }
        std::hint::black_box(&mut buf);
        Ok(())
    }
}
