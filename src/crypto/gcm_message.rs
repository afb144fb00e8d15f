//! One whole AES-GCM message with its tag apart from the ciphertext, as the
//! PKCS#11 3.0 message functions carry them (`C_EncryptMessage` writes the
//! tag to the caller's `pTag`, `C_DecryptMessage` reads it from there).
//!
//! 96-bit IVs with full tags run on aws-lc-rs straight between the
//! caller's buffers, with no allocation. In the default build everything
//! else (other IV lengths, truncated tags; the portable build: all) runs on
//! the RustCrypto engine through a zeroized scratch copy; the FIPS build
//! refuses it (`CryptoError::Unsupported`).

#[cfg(not(feature = "fips"))]
use zeroize::{Zeroize, Zeroizing};

#[cfg(feature = "aws-lc")]
use super::awslc;
use super::provider::{self, Provider};
use super::{CryptoError, PreparedKey};
#[cfg(not(feature = "fips"))]
use super::{Direction, Mode};

/// The message's data: input and output apart, or one buffer transformed in
/// place (the same pointer for both, which PKCS#11 allows).
pub enum Data<'a> {
    Apart {
        input: &'a [u8],
        output: &'a mut [u8],
    },
    InPlace(&'a mut [u8]),
}

impl Data<'_> {
    /// The same buffers, for one more try (a provider that declined).
    fn reborrow(&mut self) -> Data<'_> {
        match self {
            Data::Apart { input, output } => Data::Apart {
                input,
                output: &mut output[..],
            },
            Data::InPlace(b) => Data::InPlace(&mut b[..]),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::Apart { input, .. } => input.len(),
            Data::InPlace(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SP 800-38D's per-message plaintext limit (2^39 - 256 bits).
const P_MAX: u64 = (1 << 36) - 32;
const FULL_TAG: usize = 16;

fn check(iv: &[u8], data: &Data<'_>, tag_len: usize) -> Result<(), CryptoError> {
    if iv.is_empty() || iv.len() > 256 || !(4..=FULL_TAG).contains(&tag_len) {
        return Err(CryptoError::Param);
    }
    if data.len() as u64 > P_MAX {
        return Err(CryptoError::DataLen);
    }
    if let Data::Apart { input, output } = data {
        if output.len() < input.len() {
            return Err(CryptoError::BufferTooSmall {
                needed: input.len(),
            });
        }
    }
    Ok(())
}

/// Encrypt one message with `key`, writing the ciphertext over the output
/// (its first `input.len()` bytes) and the tag to `tag` (4 to 16 bytes).
/// `BufferTooSmall` (output shorter than input) changes nothing.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn seal(
    key: &PreparedKey,
    iv: &[u8],
    aad: &[u8],
    mut data: Data<'_>,
    tag: &mut [u8],
) -> Result<(), CryptoError> {
    check(iv, &data, tag.len())?;
    provider::first(|p| match p {
        #[cfg(feature = "aws-lc")]
        Provider::AwsLc => awslc::gcm::seal(key, iv, aad, data.reborrow(), tag),
        #[cfg(not(feature = "fips"))]
        Provider::RustCrypto => portable(key, iv, aad, data.reborrow(), tag, Direction::Encrypt),
    })
}

/// Encrypt one message under a 96-bit IV that AWS-LC's module draws from
/// its own generator and writes to `iv`: the FIPS module's approved AES-GCM
/// encryption (`fips_mode`). 128-bit tags, AES-128 and AES-256 only.
#[cfg(feature = "aws-lc")]
pub fn seal_module_iv(
    key: &PreparedKey,
    iv: &mut [u8],
    aad: &[u8],
    data: Data<'_>,
    tag: &mut [u8],
) -> Result<(), CryptoError> {
    check(iv, &data, tag.len())?;
    awslc::gcm::seal_random(key, iv, aad, data, tag)
}

/// Decrypt and authenticate one message whose tag is `tag` (4 to 16
/// bytes). On a tag mismatch (`Invalid`) nothing the module computed is
/// left in the output: it is zeroized.
pub fn open(
    key: &PreparedKey,
    iv: &[u8],
    aad: &[u8],
    mut data: Data<'_>,
    tag: &[u8],
) -> Result<(), CryptoError> {
    check(iv, &data, tag.len())?;
    provider::first(|p| match p {
        #[cfg(feature = "aws-lc")]
        Provider::AwsLc => awslc::gcm::open(key, iv, aad, data.reborrow(), tag),
        #[cfg(not(feature = "fips"))]
        Provider::RustCrypto => {
            let mut tag_copy = [0u8; FULL_TAG];
            let t = tag_copy.get_mut(..tag.len()).ok_or(CryptoError::Param)?;
            t.copy_from_slice(tag);
            portable(key, iv, aad, data.reborrow(), t, Direction::Decrypt)
        }
    })
}

#[cfg(not(feature = "fips"))]
/// The RustCrypto engine, through a zeroized scratch buffer: its one-shot
/// call takes and gives ciphertext || tag.
fn portable(
    key: &PreparedKey,
    iv: &[u8],
    aad: &[u8],
    data: Data<'_>,
    tag: &mut [u8],
    dir: Direction,
) -> Result<(), CryptoError> {
    let tag_len = tag.len();
    let mode = Mode::Gcm { iv, aad, tag_len };
    let mut op = key.schedule.op(&mode, dir)?;
    let n = data.len();
    // Encryption: input, then room for ciphertext || tag.
    // Decryption: ciphertext || tag.
    let need = match dir {
        Direction::Encrypt => n + n + tag_len,
        Direction::Decrypt => n + tag_len,
    };
    let mut scratch: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
    scratch
        .try_reserve_exact(need)
        .map_err(|_| CryptoError::DataLen)?;
    let out: &mut [u8] = match data {
        Data::Apart { input, output } => {
            scratch.extend_from_slice(input);
            output.get_mut(..n).ok_or(CryptoError::DataLen)?
        }
        Data::InPlace(buf) => {
            scratch.extend_from_slice(buf);
            buf
        }
    };
    match dir {
        Direction::Encrypt => {
            scratch.resize(need, 0);
            let (input, sealed) = scratch.split_at_mut(n);
            if op.oneshot(input, sealed)? != n + tag_len {
                return Err(CryptoError::Param);
            }
            let (ct, t) = sealed.split_at(n);
            out.copy_from_slice(ct);
            tag.copy_from_slice(t);
            Ok(())
        }
        Direction::Decrypt => {
            scratch.extend_from_slice(tag);
            op.oneshot(&scratch, out).map(|_| ()).inspect_err(|_| {
                out.zeroize();
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Rng;
    use super::*;
    use crate::secret::SecretBytes;
    use aes_gcm::aead::{AeadInOut, KeyInit};

    fn key(raw: &[u8]) -> PreparedKey {
        PreparedKey::new(SecretBytes::from_slice(raw)).unwrap()
    }

    /// RustCrypto's AES-256-GCM (96-bit nonce, full tag) as the reference.
    fn reference_seal(raw: &[u8], iv: &[u8], aad: &[u8], pt: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let c = aes_gcm::Aes256Gcm::new_from_slice(raw).unwrap();
        let mut buf = pt.to_vec();
        let tag = c
            .encrypt_inout_detached(iv.try_into().unwrap(), aad, buf.as_mut_slice().into())
            .unwrap();
        (buf, tag.to_vec())
    }

    #[test]
    fn agrees_with_the_reference_apart_and_in_place() {
        let mut rng = Rng(0x6d657373);
        for size in [0usize, 1, 15, 16, 17, 64, 1000, 4096] {
            let raw = rng.bytes(32);
            let k = key(&raw);
            let (iv, aad, pt) = (rng.bytes(12), rng.bytes(size % 29), rng.bytes(size));
            let (want_ct, want_tag) = reference_seal(&raw, &iv, &aad, &pt);

            let mut ct = vec![0u8; size + 3];
            let mut tag = [0u8; 16];
            let data = Data::Apart {
                input: &pt,
                output: &mut ct,
            };
            seal(&k, &iv, &aad, data, &mut tag).unwrap();
            assert_eq!((&ct[..size], &tag[..]), (&want_ct[..], &want_tag[..]));

            let mut inplace = pt.clone();
            let mut tag2 = [0u8; 16];
            seal(&k, &iv, &aad, Data::InPlace(&mut inplace), &mut tag2).unwrap();
            assert_eq!((inplace.as_slice(), tag2), (&want_ct[..], tag));

            let mut back = vec![0u8; size];
            let data = Data::Apart {
                input: &want_ct,
                output: &mut back,
            };
            open(&k, &iv, &aad, data, &want_tag).unwrap();
            assert_eq!(back, pt);
            open(&k, &iv, &aad, Data::InPlace(&mut inplace), &tag).unwrap();
            assert_eq!(inplace, pt);
        }
    }

    /// Other IV lengths and truncated tags take the portable engine; both
    /// engines agree, and a truncated tag is the full tag's leading bytes.
    /// (The FIPS build refuses them: `kat::fips_build_refuses_...`.)
    #[cfg(not(feature = "fips"))]
    #[test]
    fn long_ivs_and_short_tags_round_trip() {
        let mut rng = Rng(0x1234);
        for (key_len, iv_len, tag_len) in [(32, 16, 16), (32, 12, 12), (24, 12, 16), (16, 1, 4)] {
            let raw = rng.bytes(key_len);
            let k = key(&raw);
            let (iv, aad, pt) = (rng.bytes(iv_len), rng.bytes(5), rng.bytes(100));
            let mut ct = vec![0u8; 100];
            let mut tag = vec![0u8; tag_len];
            let data = Data::Apart {
                input: &pt,
                output: &mut ct,
            };
            seal(&k, &iv, &aad, data, &mut tag).unwrap();
            // The same through the legacy one-shot engine, ciphertext || tag.
            let mode = Mode::Gcm {
                iv: &iv,
                aad: &aad,
                tag_len,
            };
            let mut op = super::super::new_op(&raw, &mode, Direction::Encrypt).unwrap();
            let mut joined = vec![0u8; 100 + tag_len];
            op.oneshot(&pt, &mut joined).unwrap();
            assert_eq!(
                [ct.clone(), tag.clone()].concat(),
                joined,
                "{key_len}/{iv_len}/{tag_len}"
            );

            let mut inplace = ct.clone();
            open(&k, &iv, &aad, Data::InPlace(&mut inplace), &tag).unwrap();
            assert_eq!(inplace, pt);
            let mut bad = tag.clone();
            bad[0] ^= 1;
            let mut out = vec![0u8; 100];
            let data = Data::Apart {
                input: &ct,
                output: &mut out,
            };
            assert_eq!(open(&k, &iv, &aad, data, &bad), Err(CryptoError::Invalid));
            assert!(out.iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn a_wrong_tag_leaves_no_plaintext() {
        let k = key(&[7; 32]);
        let pt = [0x41u8; 64];
        let mut ct = [0u8; 64];
        let mut tag = [0u8; 16];
        let data = Data::Apart {
            input: &pt,
            output: &mut ct,
        };
        seal(&k, &[1; 12], b"", data, &mut tag).unwrap();
        tag[15] ^= 0x80;
        let mut out = [0u8; 64];
        let data = Data::Apart {
            input: &ct,
            output: &mut out,
        };
        assert_eq!(
            open(&k, &[1; 12], b"", data, &tag),
            Err(CryptoError::Invalid)
        );
        assert_eq!(out, [0u8; 64]);
        let mut inplace = ct;
        assert_eq!(
            open(&k, &[1; 12], b"", Data::InPlace(&mut inplace), &tag),
            Err(CryptoError::Invalid)
        );
        assert_eq!(inplace, [0u8; 64]);
    }

    #[test]
    fn bad_sizes_are_refused_before_anything_is_written() {
        let k = key(&[7; 16]);
        let mut tag = [0u8; 16];
        let mut out = [9u8; 3];
        let data = Data::Apart {
            input: &[1; 4],
            output: &mut out,
        };
        assert_eq!(
            seal(&k, &[1; 12], b"", data, &mut tag),
            Err(CryptoError::BufferTooSmall { needed: 4 })
        );
        assert_eq!(out, [9; 3]);
        for (iv_len, tag_len) in [(0usize, 16usize), (257, 16), (12, 3), (12, 17)] {
            let iv = vec![0u8; iv_len];
            let mut t = vec![0u8; tag_len];
            let mut o = [0u8; 4];
            let data = Data::Apart {
                input: &[1; 4],
                output: &mut o,
            };
            assert_eq!(seal(&k, &iv, b"", data, &mut t), Err(CryptoError::Param));
        }
    }
}
