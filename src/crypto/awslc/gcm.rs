//! AES-GCM on aws-lc-rs, whose assembly (AES-NI, VAES, AVX-512 on capable
//! CPUs) runs near the processor's limit: 96-bit IVs and full 128-bit tags
//! only (aws-lc-rs takes no other), with AES-128, -192 and -256 keys.
//!
//! Multi-part decryption holds the message until the final call (no
//! plaintext leaves before the tag checks). Multi-part encryption streams
//! on the RustCrypto engine in the default build (`gcm_stream`); the FIPS
//! build has no streaming GCM in the module's API, so it holds the message
//! too and seals it at the final call.
//!
//! `seal_random` is the FIPS module's approved GCM encryption (SP 800-38D
//! 8.2.2, IG C.H): the module draws the 96-bit IV from its own DRBG. An IV
//! chosen outside the module, even by this one, is not approved.

use std::sync::OnceLock;

use aws_lc_rs::aead::{
    Aad, LessSafeKey, Nonce, RandomizedNonceKey, UnboundKey, AES_128_GCM, AES_192_GCM, AES_256_GCM,
};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::gcm_message::Data;
use crate::crypto::{
    append_secret, CipherOp, CryptoError, Direction, PreparedKey, SessionKey, SpareBuffer,
};

const TAG: usize = 16;
const IV: usize = 12;
/// SP 800-38D's per-message plaintext limit (2^39 - 256 bits).
const P_MAX: u64 = (1 << 36) - 32;

/// The expanded aws-lc keys (AWS-LC cleanses them when freed).
pub struct GcmKey {
    key: LessSafeKey,
    /// The module's own-IV key, made on first use (`seal_random`);
    /// None for AES-192, which it does not take.
    random: OnceLock<Option<RandomizedNonceKey>>,
}

impl GcmKey {
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let alg = match key.len() {
            16 => &AES_128_GCM,
            24 => &AES_192_GCM,
            32 => &AES_256_GCM,
            _ => return Err(CryptoError::KeySize),
        };
        let k = UnboundKey::new(alg, key).map_err(|_| CryptoError::KeySize)?;
        Ok(GcmKey {
            key: LessSafeKey::new(k),
            random: OnceLock::new(),
        })
    }
}

/// `Param` for values no GCM takes, `Unsupported` for those only aws-lc-rs
/// does not (IVs other than 96 bits, tags other than 128 bits).
pub fn check_params(iv: &[u8], tag_len: usize) -> Result<(), CryptoError> {
    if iv.is_empty() || iv.len() > 256 || !(4..=TAG).contains(&tag_len) {
        return Err(CryptoError::Param);
    }
    if iv.len() != IV || tag_len != TAG {
        return Err(CryptoError::Unsupported);
    }
    Ok(())
}

pub struct GcmOp {
    key: SessionKey,
    nonce: [u8; IV],
    aad: Vec<u8>,
    dir: Direction,
    /// Multi-part input, held until the final call.
    buf: Zeroizing<Vec<u8>>,
    /// Multi-part encryption streams in the default build (see the module's
    /// text); made by the first update.
    #[cfg(not(feature = "fips"))]
    stream: Option<Box<dyn CipherOp>>,
}

impl GcmOp {
    // The C_EncryptInit path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn new(key: SessionKey, nonce: [u8; IV], aad: &[u8], dir: Direction) -> Self {
        GcmOp {
            key,
            nonce,
            aad: aad.to_vec(),
            dir,
            buf: Zeroizing::new(Vec::new()),
            #[cfg(not(feature = "fips"))]
            stream: None,
        }
    }

    /// Make this ended operation a fresh one for the next message under the
    /// same key in the same direction (see `PreparedOp::rearm`); false,
    /// changing nothing, for another key or direction.
    // The C_EncryptInit path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn rearm(&mut self, key: &SessionKey, nonce: [u8; IV], aad: &[u8], dir: Direction) -> bool {
        if !std::sync::Arc::ptr_eq(&self.key, key) || self.dir != dir {
            return false;
        }
        self.nonce = nonce;
        self.aad.clear();
        self.aad.extend_from_slice(aad);
        #[cfg(not(feature = "fips"))]
        if self.stream.is_some() {
            self.stream = None;
        }
        true
    }

    /// Whether multi-part encryption streams (else: held to the final call).
    fn streams(&self) -> bool {
        cfg!(not(feature = "fips")) && self.dir == Direction::Encrypt
    }

    #[cfg(not(feature = "fips"))]
    fn stream_mut(&mut self) -> Result<&mut Box<dyn CipherOp>, CryptoError> {
        if self.stream.is_none() {
            let mut j0 = [0u8; 16];
            j0[..IV].copy_from_slice(&self.nonce);
            j0[15] = 1;
            self.stream = Some(self.key.schedule.gcm_stream(&j0, &self.aad, TAG)?);
        }
        self.stream.as_mut().ok_or(CryptoError::Param)
    }

    #[cfg(not(feature = "fips"))]
    fn stream_ref(&self) -> Option<&dyn CipherOp> {
        self.stream.as_deref()
    }

    #[cfg(feature = "fips")]
    fn stream_ref(&self) -> Option<&dyn CipherOp> {
        None
    }

    /// Use `spare` for multi-part input, unless input was already buffered.
    pub fn lend_buffer(&mut self, spare: SpareBuffer) -> Option<SpareBuffer> {
        if self.buf.capacity() != 0 {
            return Some(spare);
        }
        self.buf = spare.0;
        None
    }

    /// The buffer, with what this operation wrote zeroized (see
    /// `wipe_buffer`), if there is one worth keeping.
    pub fn reclaim_buffer(&mut self) -> Option<SpareBuffer> {
        self.wipe_buffer();
        // Single-part (nothing was buffered), or too large: nothing to hand on.
        (self.buf.capacity() != 0).then(|| SpareBuffer(std::mem::take(&mut self.buf)))
    }

    /// Let go of what this ended operation holds of its message, to be
    /// kept for its next one (see `PreparedOp::keep`): the buffer wiped and
    /// kept (`wipe_buffer`); the stream (keystream, GHASH state) dropped;
    /// the AAD wiped.
    pub fn wipe(&mut self) {
        #[cfg(not(feature = "fips"))]
        if self.stream.is_some() {
            self.stream = None;
        }
        if !self.aad.is_empty() {
            self.aad.zeroize();
        }
        self.wipe_buffer();
    }

    /// What this operation wrote to its buffer zeroized, in place; a
    /// buffer larger than a session keeps (`SpareBuffer::MAX_KEPT`) freed.
    /// Bytes past the length were never written by anyone through it
    /// (growth moves to a fresh buffer, see `append_secret`), so wiping the
    /// length suffices and costs what was used, not what was reserved.
    fn wipe_buffer(&mut self) {
        if self.buf.capacity() == 0 {
            return;
        }
        self.buf.as_mut_slice().zeroize();
        self.buf.clear();
        if self.buf.capacity() > SpareBuffer::MAX_KEPT {
            self.buf = Zeroizing::new(Vec::new());
        }
    }

    fn len_for(&self, input_len: usize) -> usize {
        match self.dir {
            Direction::Encrypt => input_len.saturating_add(TAG),
            Direction::Decrypt => input_len.saturating_sub(TAG),
        }
    }
}

/// One whole message, straight between the caller's buffers.
fn process(
    key: &LessSafeKey,
    nonce: [u8; IV],
    aad: &[u8],
    dir: Direction,
    input: &[u8],
    output: &mut [u8],
) -> Result<usize, CryptoError> {
    let nonce = Nonce::assume_unique_for_key(nonce);
    match dir {
        Direction::Encrypt => {
            if input.len() as u64 > P_MAX {
                return Err(CryptoError::DataLen);
            }
            let need = input.len() + TAG;
            let out = output
                .get_mut(..need)
                .ok_or(CryptoError::BufferTooSmall { needed: need })?;
            let (ct, tag) = out.split_at_mut(input.len());
            key.seal_out_of_place_scatter(nonce, Aad::from(aad), input, ct, &[], tag)
                .map_err(|_| CryptoError::DataLen)?;
            Ok(need)
        }
        Direction::Decrypt => {
            let n = input.len().checked_sub(TAG).ok_or(CryptoError::DataLen)?;
            if n as u64 > P_MAX {
                return Err(CryptoError::DataLen);
            }
            let out = output
                .get_mut(..n)
                .ok_or(CryptoError::BufferTooSmall { needed: n })?;
            let (ct, tag) = input.split_at(n);
            if key
                .open_separate_gather(nonce, Aad::from(aad), ct, tag, out)
                .is_err()
            {
                // aws-lc may have written unverified plaintext: take it back.
                out.zeroize();
                return Err(CryptoError::Invalid);
            }
            Ok(n)
        }
    }
}

impl CipherOp for GcmOp {
    fn oneshot_len(&self, input_len: usize) -> usize {
        self.len_for(input_len)
    }

    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        process(
            &self.key.aws.gcm.key,
            self.nonce,
            &self.aad,
            self.dir,
            input,
            output,
        )
    }

    fn update_len(&self, input_len: usize) -> usize {
        if self.streams() {
            input_len
        } else {
            0
        }
    }

    #[cfg_attr(feature = "fips", allow(unused_variables))]
    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        #[cfg(not(feature = "fips"))]
        if self.streams() {
            let r = self.stream_mut().and_then(|st| st.update(input, output));
            return r;
        }
        // Held to the final call: nothing is written now.
        let limit = match self.dir {
            Direction::Encrypt => P_MAX,
            Direction::Decrypt => P_MAX + TAG as u64,
        };
        let total = (self.buf.len() as u64).saturating_add(input.len() as u64);
        if total > limit {
            Err(CryptoError::DataLen)
        } else {
            append_secret(&mut self.buf, input).map(|_| 0)
        }
    }

    fn finish_len(&self) -> usize {
        match self.stream_ref() {
            Some(st) => st.finish_len(),
            None => self.len_for(self.buf.len()),
        }
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        #[cfg(not(feature = "fips"))]
        if let Some(st) = self.stream.as_mut() {
            let r = st.finish(output);
            return r;
        }
        process(
            &self.key.aws.gcm.key,
            self.nonce,
            &self.aad,
            self.dir,
            &self.buf,
            output,
        )
    }
}

/// Encrypt one message with the caller's IV (PKCS#11 3.0 message
/// functions: the tag apart from the ciphertext), straight between the
/// caller's buffers. The caller has checked the lengths (`gcm_message`).
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn seal(
    key: &PreparedKey,
    iv: &[u8],
    aad: &[u8],
    data: Data<'_>,
    tag: &mut [u8],
) -> Result<(), CryptoError> {
    check_params(iv, tag.len())?;
    let nonce = Nonce::try_assume_unique_for_key(iv).map_err(|_| CryptoError::Unsupported)?;
    let full: &mut [u8; TAG] = tag.try_into().map_err(|_| CryptoError::Unsupported)?;
    let k = &key.aws.gcm.key;
    match data {
        Data::Apart { input, output } => {
            let out = output.get_mut(..input.len()).ok_or(CryptoError::DataLen)?;
            k.seal_out_of_place_scatter(nonce, Aad::from(aad), input, out, &[], full)
        }
        Data::InPlace(buf) => k.seal_in_place_scatter(nonce, Aad::from(aad), buf, &[], full),
    }
    .map_err(|_| CryptoError::DataLen)
}

/// Encrypt one message under an IV the module draws itself (the FIPS
/// module's approved GCM encryption), written to `iv` (12 bytes).
pub fn seal_random(
    key: &PreparedKey,
    iv: &mut [u8],
    aad: &[u8],
    data: Data<'_>,
    tag: &mut [u8],
) -> Result<(), CryptoError> {
    if iv.len() != IV || tag.len() != TAG {
        return Err(CryptoError::Unsupported);
    }
    let alg = match key.value().len() {
        16 => &AES_128_GCM,
        32 => &AES_256_GCM,
        _ => return Err(CryptoError::Unsupported),
    };
    let k = key
        .aws
        .gcm
        .random
        .get_or_init(|| RandomizedNonceKey::new(alg, key.value()).ok())
        .as_ref()
        .ok_or(CryptoError::KeySize)?;
    let buf: &mut [u8] = match data {
        Data::Apart { input, output } => {
            let out = output.get_mut(..input.len()).ok_or(CryptoError::DataLen)?;
            out.copy_from_slice(input);
            out
        }
        Data::InPlace(buf) => buf,
    };
    match k.seal_in_place_separate_tag(Aad::from(aad), buf) {
        Ok((nonce, made)) => {
            iv.copy_from_slice(nonce.as_ref());
            tag.copy_from_slice(made.as_ref());
            Ok(())
        }
        Err(_) => {
            buf.zeroize();
            Err(CryptoError::DataLen)
        }
    }
}

/// Decrypt and authenticate one message (tag apart). On a tag mismatch
/// nothing the module computed is left in the output: it is zeroized.
pub fn open(
    key: &PreparedKey,
    iv: &[u8],
    aad: &[u8],
    data: Data<'_>,
    tag: &[u8],
) -> Result<(), CryptoError> {
    check_params(iv, tag.len())?;
    let nonce = Nonce::try_assume_unique_for_key(iv).map_err(|_| CryptoError::Unsupported)?;
    let k = &key.aws.gcm.key;
    match data {
        Data::Apart { input, output } => {
            let out = output.get_mut(..input.len()).ok_or(CryptoError::DataLen)?;
            k.open_separate_gather(nonce, Aad::from(aad), input, tag, out)
                .map_err(|_| {
                    out.zeroize();
                    CryptoError::Invalid
                })
        }
        Data::InPlace(buf) => k
            .open_in_place_separate_tag(nonce, Aad::from(aad), tag, buf)
            .map(|_| ())
            .map_err(|_| {
                // The buffer may hold unverified plaintext now.
                buf.zeroize();
                CryptoError::Invalid
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::{multipart, oneshot, Rng};
    use crate::crypto::{Mode, PreparedKey, PreparedOp, SessionHold};
    use crate::secret::SecretBytes;
    use std::sync::Arc;

    fn session_key(raw: &[u8]) -> SessionKey {
        SessionHold::new(Arc::new(
            PreparedKey::new(SecretBytes::from_slice(raw)).unwrap(),
        ))
    }

    /// An aws-lc operation (not a portable one) for `mode`.
    fn aws_op(key: &SessionKey, mode: &Mode, dir: Direction) -> PreparedOp {
        let op = super::super::op(key, mode, dir).unwrap();
        assert!(matches!(op, PreparedOp::AwsGcm(_)));
        op
    }

    /// aws-lc and the portable engine agree, both ways, for every size.
    #[cfg(not(feature = "fips"))]
    #[test]
    fn agrees_with_the_portable_engine() {
        use crate::crypto::rustcrypto::new_op;
        use crate::crypto::test_util::random_chunks;
        let mut rng = Rng(0x5eed);
        for key_len in [16usize, 24, 32] {
            let raw = rng.bytes(key_len);
            let key = session_key(&raw);
            for size in [0usize, 1, 15, 16, 17, 255, 4096, 65_537] {
                let (iv, aad) = (rng.bytes(12), rng.bytes(size % 37));
                let mode = Mode::Gcm {
                    iv: &iv,
                    aad: &aad,
                    tag_len: 16,
                };
                let data = rng.bytes(size);
                let fast = oneshot(&mut aws_op(&key, &mode, Direction::Encrypt), &data).unwrap();
                let slow = oneshot(
                    &mut *new_op(&raw, &mode, Direction::Encrypt).unwrap(),
                    &data,
                )
                .unwrap();
                assert_eq!(fast, slow, "key {key_len} size {size}");
                let back = oneshot(&mut aws_op(&key, &mode, Direction::Decrypt), &slow).unwrap();
                assert_eq!(back, data);
                let chunks = random_chunks(&mut rng, size);
                let parts = multipart(&mut aws_op(&key, &mode, Direction::Encrypt), &data, &chunks)
                    .unwrap();
                assert_eq!(parts, fast);
            }
        }
    }

    /// NIST SP 800-38D / McGrew-Viega test case 16 (AES-256, with AAD).
    #[test]
    fn known_answer() {
        let hex = |s: &str| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>()
        };
        let key = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let iv = hex("cafebabefacedbaddecaf888");
        let pt = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let ct = hex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662");
        let tag = hex("76fc6ece0f4e1768cddf8853bb2d551b");
        let k = session_key(&key);
        let mode = Mode::Gcm {
            iv: &iv,
            aad: &aad,
            tag_len: 16,
        };
        let out = oneshot(&mut aws_op(&k, &mode, Direction::Encrypt), &pt).unwrap();
        assert_eq!(out, [ct, tag].concat());
    }

    #[test]
    fn tampering_releases_nothing() {
        let k = session_key(&[7; 32]);
        let mode = Mode::Gcm {
            iv: &[1; 12],
            aad: &[],
            tag_len: 16,
        };
        let mut ct = oneshot(&mut aws_op(&k, &mode, Direction::Encrypt), &[0x41; 64]).unwrap();
        ct[3] ^= 1;
        let mut out = [0u8; 64];
        let r = aws_op(&k, &mode, Direction::Decrypt).oneshot(&ct, &mut out);
        assert_eq!(r, Err(CryptoError::Invalid));
        assert_eq!(
            out, [0u8; 64],
            "no unverified plaintext left in the caller's buffer"
        );
    }

    #[test]
    fn short_buffer_keeps_the_operation() {
        let k = session_key(&[7; 16]);
        let mode = Mode::Gcm {
            iv: &[1; 12],
            aad: &[],
            tag_len: 16,
        };
        let mut op = aws_op(&k, &mode, Direction::Encrypt);
        let mut small = [0u8; 20];
        assert_eq!(
            op.oneshot(&[1; 5], &mut small),
            Err(CryptoError::BufferTooSmall { needed: 21 })
        );
        let mut ok = [0u8; 21];
        assert_eq!(op.oneshot(&[1; 5], &mut ok), Ok(21));
    }

    /// A buffer handed from one operation to the next holds nothing of the
    /// first, and the second gives the same bytes as with a fresh buffer.
    #[test]
    fn a_reclaimed_buffer_is_wiped_and_reusable() {
        let k = session_key(&[7; 32]);
        let mode = Mode::Gcm {
            iv: &[1; 12],
            aad: &[],
            tag_len: 16,
        };
        let mut rng = Rng(7);
        let long = rng.bytes(1000);
        // Decryption is what buffers (encryption streams).
        let sealed = oneshot(&mut aws_op(&k, &mode, Direction::Encrypt), &long).unwrap();
        let mut op = aws_op(&k, &mode, Direction::Decrypt);
        assert_eq!(multipart(&mut op, &sealed, &[100, 300]).unwrap(), long);
        let spare = op.reclaim_buffer().expect("kept");
        assert!(spare.0.is_empty());
        assert!(spare.0.capacity() >= long.len());
        // SAFETY: the first `long.len()` bytes of the allocation were
        // written (then wiped) by the operation.
        let used = unsafe { std::slice::from_raw_parts(spare.0.as_ptr(), long.len()) };
        assert!(
            used.iter().all(|b| *b == 0),
            "nothing of the message is left"
        );
        let short = rng.bytes(10);
        let sealed = oneshot(&mut aws_op(&k, &mode, Direction::Encrypt), &short).unwrap();
        let mut op = aws_op(&k, &mode, Direction::Decrypt);
        assert!(op.lend_buffer(spare).is_none(), "taken");
        assert_eq!(multipart(&mut op, &sealed, &[3]).unwrap(), short);
    }

    /// An ended operation kept for re-arming (`PreparedOp::keep`) holds
    /// nothing of its message, keeps its buffer, and re-armed decrypts the
    /// next message as a fresh operation would; it re-arms only for its own
    /// key and direction.
    #[test]
    fn a_kept_operation_is_wiped_and_re_armed() {
        let (k, other) = (session_key(&[7; 32]), session_key(&[7; 32]));
        fn mode(iv: &[u8]) -> Mode<'_> {
            Mode::Gcm {
                iv,
                aad: b"aad",
                tag_len: 16,
            }
        }
        let mut rng = Rng(9);
        let (first, second) = (rng.bytes(1000), rng.bytes(200));
        let seal = |iv: &[u8], pt: &[u8]| {
            oneshot(&mut aws_op(&k, &mode(iv), Direction::Encrypt), pt).unwrap()
        };
        let mut op = aws_op(&k, &mode(&[1; 12]), Direction::Decrypt);
        assert_eq!(
            multipart(&mut op, &seal(&[1; 12], &first), &[100, 300]).unwrap(),
            first
        );
        assert!(op.keep());
        let PreparedOp::AwsGcm(staged) = &mut op else {
            unreachable!("aws_op")
        };
        let buf = &staged.steps_mut().buf;
        assert!(buf.is_empty());
        assert!(buf.capacity() >= first.len(), "kept for the next message");
        // SAFETY: the first `first.len()` bytes of the allocation were
        // written (then wiped) by the operation.
        let used = unsafe { std::slice::from_raw_parts(buf.as_ptr(), first.len()) };
        assert!(
            used.iter().all(|b| *b == 0),
            "nothing of the message is left"
        );

        assert!(
            !op.rearm(&other, &mode(&[2; 12]), Direction::Decrypt),
            "another key"
        );
        assert!(
            !op.rearm(&k, &mode(&[2; 12]), Direction::Encrypt),
            "another direction"
        );
        assert!(
            !op.rearm(&k, &mode(&[2; 8]), Direction::Decrypt),
            "an IV aws-lc does not take"
        );
        assert!(op.rearm(&k, &mode(&[2; 12]), Direction::Decrypt));
        assert_eq!(
            multipart(&mut op, &seal(&[2; 12], &second), &[50]).unwrap(),
            second
        );

        // An encryption in parts (which streams in the default build) kept:
        // nothing of its stream or AAD stays; re-armed, it seals afresh.
        let mut op = aws_op(&k, &mode(&[3; 12]), Direction::Encrypt);
        assert_eq!(
            multipart(&mut op, &first, &[100, 300]).unwrap(),
            seal(&[3; 12], &first)
        );
        assert!(op.keep());
        let PreparedOp::AwsGcm(staged) = &mut op else {
            unreachable!("aws_op")
        };
        #[cfg(not(feature = "fips"))]
        assert!(staged.steps_mut().stream.is_none(), "stream dropped");
        assert!(staged.steps_mut().aad.is_empty(), "AAD wiped");
        assert!(op.rearm(&k, &mode(&[4; 12]), Direction::Encrypt));
        assert_eq!(
            multipart(&mut op, &second, &[50]).unwrap(),
            seal(&[4; 12], &second)
        );
    }
}
