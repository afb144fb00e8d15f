//! AES-GCM on aws-lc-rs, whose assembly (AES-NI, VAES, AVX-512 on capable
//! CPUs) runs near the processor's limit. Used for 96-bit IVs and full 16-byte
//! tags with AES-128 and AES-256 (aws-lc-rs has no AES-192-GCM); other cases
//! go to the portable engines in `gcm.rs`.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use zeroize::{Zeroize, Zeroizing};

use super::{append_secret, CipherOp, CryptoError, Direction, SessionKey, SpareBuffer, Stage};

const TAG: usize = 16;
/// SP 800-38D's per-message plaintext limit (2^39 - 256 bits).
const P_MAX: u64 = (1 << 36) - 32;

/// The expanded aws-lc key (AWS-LC cleanses it when freed).
pub struct GcmKey(Option<LessSafeKey>);

impl GcmKey {
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let alg = match key.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            24 => return Ok(GcmKey(None)),
            _ => return Err(CryptoError::KeySize),
        };
        let k = UnboundKey::new(alg, key).map_err(|_| CryptoError::KeySize)?;
        Ok(GcmKey(Some(LessSafeKey::new(k))))
    }

    pub fn usable(&self) -> bool {
        self.0.is_some()
    }

    /// The aws-lc key, when there is one (AES-128 and AES-256).
    pub fn key(&self) -> Option<&LessSafeKey> {
        self.0.as_ref()
    }
}

pub struct GcmOp {
    key: SessionKey,
    nonce: [u8; 12],
    aad: Vec<u8>,
    dir: Direction,
    stage: Stage,
    /// Multi-part input, held until the final call (decryption must verify
    /// the tag before releasing anything).
    buf: Zeroizing<Vec<u8>>,
    /// Multi-part encryption streams (see `gcm_stream`); made by the first
    /// update, on the portable AES schedule (AES-NI where the CPU has it).
    stream: Option<Box<dyn CipherOp>>,
}

impl GcmOp {
    pub fn new(key: SessionKey, nonce: [u8; 12], aad: &[u8], dir: Direction) -> Self {
        GcmOp {
            key,
            nonce,
            aad: aad.to_vec(),
            dir,
            stage: Stage::Fresh,
            buf: Zeroizing::new(Vec::new()),
            stream: None,
        }
    }

    fn stream_mut(&mut self) -> Result<&mut Box<dyn CipherOp>, CryptoError> {
        if self.stream.is_none() {
            let mut j0 = [0u8; 16];
            j0[..12].copy_from_slice(&self.nonce);
            j0[15] = 1;
            self.stream = Some(self.key.schedule.gcm_stream(&j0, &self.aad, TAG)?);
        }
        self.stream.as_mut().ok_or(CryptoError::Param)
    }

    /// Use `spare` for multi-part input, unless input was already buffered.
    pub fn lend_buffer(&mut self, spare: SpareBuffer) -> Option<SpareBuffer> {
        if self.buf.capacity() != 0 {
            return Some(spare);
        }
        self.buf = spare.0;
        None
    }

    /// The buffer, with what this operation wrote zeroized. Bytes past the
    /// length were never written by anyone through it (growth moves to a
    /// fresh buffer, see `append_secret`), so wiping the length suffices
    /// and costs what was used, not what was reserved.
    pub fn reclaim_buffer(&mut self) -> Option<SpareBuffer> {
        if self.buf.capacity() == 0 {
            // Single-part: nothing was buffered, nothing to hand on.
            return None;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.as_mut_slice().zeroize();
        buf.clear();
        (buf.capacity() != 0 && buf.capacity() <= SpareBuffer::MAX_KEPT).then_some(SpareBuffer(buf))
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
    nonce: [u8; 12],
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
        self.stage.begin(true)?;
        let key = self.key.gcm.0.as_ref().ok_or(CryptoError::KeySize)?;
        let r = process(key, self.nonce, &self.aad, self.dir, input, output);
        self.stage.end(r, true)
    }

    fn update_len(&self, input_len: usize) -> usize {
        match self.dir {
            Direction::Encrypt => input_len,
            Direction::Decrypt => 0,
        }
    }

    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.stage.begin(false)?;
        if self.dir == Direction::Encrypt {
            let r = self.stream_mut().and_then(|st| st.update(input, output));
            return self.stage.end(r, false);
        }
        let r = append_secret(&mut self.buf, input).map(|_| 0);
        self.stage.end(r, false)
    }

    fn finish_len(&self) -> usize {
        match &self.stream {
            Some(st) => st.finish_len(),
            None => self.len_for(self.buf.len()),
        }
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        self.stage.begin(false)?;
        if let Some(st) = self.stream.as_mut() {
            let r = st.finish(output);
            return self.stage.end(r, true);
        }
        let key = self.key.gcm.0.as_ref().ok_or(CryptoError::KeySize)?;
        let r = process(key, self.nonce, &self.aad, self.dir, &self.buf, output);
        self.stage.end(r, true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{multipart, oneshot, random_chunks, Rng};
    use super::super::{new_op, new_prepared_op, Mode, PreparedKey, PreparedOp, SessionHold};
    use super::*;
    use crate::secret::SecretBytes;
    use std::sync::Arc;

    fn session_key(raw: &[u8]) -> SessionKey {
        SessionHold::new(Arc::new(
            PreparedKey::new(SecretBytes::from_slice(raw)).unwrap(),
        ))
    }

    /// An aws-lc operation (not a portable one) for `mode`.
    fn aws_op(key: &SessionKey, mode: &Mode, dir: Direction) -> PreparedOp {
        let op = new_prepared_op(key, mode, dir).unwrap();
        assert!(matches!(op, PreparedOp::AwsGcm(_)));
        op
    }

    /// aws-lc and the portable engine agree, both ways, for every size.
    #[test]
    fn agrees_with_the_portable_engine() {
        let mut rng = Rng(0x5eed);
        for key_len in [16usize, 32] {
            let raw = rng.bytes(key_len);
            let key = session_key(&raw);
            assert!(key.gcm.usable());
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
}
