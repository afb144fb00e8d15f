//! Software AES (GCM, ECB, CBC, CBC-PAD, CTR, CMAC, key wrap) behind one
//! small interface, with the providers behind it chosen at build time
//! (`provider`): aws-lc-rs (AWS-LC's FIPS module in the FIPS build) and
//! RustCrypto.
//!
//! Every operation follows PKCS#11 call rules: `BufferTooSmall` never changes state
//! (the caller retries), any other error or a successful `oneshot`/`finish` ends the
//! operation, and a finished operation refuses further work (an encrypt op must never
//! reuse its IV).

// Safe code only; one test reads freed-then-wiped capacity.
#![cfg_attr(not(test), forbid(unsafe_code))]

#[cfg(feature = "aws-lc")]
mod awslc;
mod check_value;
mod cmac_mac;
pub mod gcm_iv;
pub mod gcm_message;
#[cfg(test)]
mod kat;
pub mod key_wrap;
mod prepared;
pub mod provider;
#[cfg(not(feature = "fips"))]
mod rustcrypto;

pub use check_value::check_value;
pub use cmac_mac::CmacOp;
pub use prepared::{
    new_prepared_op, KeyPrint, PreparedKey, PreparedOp, SessionHold, SessionKey, SpareBuffer,
};

pub use provider::{module_state, ModuleState, FIPS_BUILD};

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::secret::SecretBytes;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// State is unchanged when this is returned; the caller may retry.
    #[error("output buffer too small, {needed} bytes needed")]
    BufferTooSmall { needed: usize },
    /// Key not 16, 24 or 32 bytes.
    #[error("bad key length")]
    KeySize,
    /// IV, tag length or counter width invalid, or the operation was already finished.
    #[error("bad mechanism parameter")]
    Param,
    /// Input length not acceptable (CBC-PAD decrypt not a multiple of 16, CTR counter
    /// would wrap, GCM input shorter than the tag, message too large to buffer).
    #[error("data length out of range")]
    DataLen,
    /// GCM tag mismatch or bad CBC padding.
    #[error("encrypted data invalid")]
    Invalid,
    /// Valid for the mechanism, but beyond what the provider's API offers
    /// (aws-lc-rs: a GCM IV other than 96 bits, a tag other than 128 bits,
    /// AES-192 key wrap). The default build passes it to the next provider;
    /// the FIPS build refuses it (see `provider`).
    #[error("not offered by the FIPS module's API")]
    Unsupported,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

/// IV and AAD are public values, so the derived Debug reveals nothing secret.
/// They are borrowed (from the caller's mechanism parameters, for the length
/// of C_EncryptInit): an operation copies what it keeps, and parsing a
/// mechanism allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode<'a> {
    /// `tag_len` in bytes (4..=16); `iv` 1..=256 bytes (12 is the fast path).
    Gcm {
        iv: &'a [u8],
        aad: &'a [u8],
        tag_len: usize,
    },
    /// CKM_AES_ECB: whole blocks only.
    Ecb,
    /// CKM_AES_CBC: CBC without padding, whole blocks only.
    Cbc { iv: [u8; 16] },
    /// CKM_AES_CBC_PAD: CBC with PKCS#7 padding.
    CbcPad { iv: [u8; 16] },
    /// CKM_AES_CTR: the low `counter_bits` (1..=128) bits of `iv` are a big-endian counter.
    Ctr { iv: [u8; 16], counter_bits: usize },
}

/// One cipher operation (one C_EncryptInit..Final or C_DecryptInit..Final). Send, not Sync.
pub trait CipherOp: Send {
    /// Upper bound of the output of `oneshot` for `input_len` bytes (used for length queries; must be >= the real output).
    fn oneshot_len(&self, input_len: usize) -> usize;
    /// Whole-message operation. If `output.len()` is smaller than the real output, return BufferTooSmall{needed: real or upper bound} and change nothing (the caller retries with a larger buffer). Returns bytes written.
    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError>;
    /// EXACT output length `update(input)` would produce now (no side effects).
    fn update_len(&self, input_len: usize) -> usize;
    /// Multi-part step; BufferTooSmall leaves state unchanged.
    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError>;
    /// Upper bound of what `finish` writes (no side effects).
    fn finish_len(&self) -> usize;
    /// Final step; BufferTooSmall leaves state unchanged (caller may retry finish).
    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError>;
}

/// An operation on a raw key (16, 24 or 32 bytes), from the first
/// provider that can do it (key derivation by encryption, tests).
pub fn new_op(key: &[u8], mode: &Mode, dir: Direction) -> Result<Box<dyn CipherOp>, CryptoError> {
    let key = prepare(key)?;
    new_prepared_op(&key, mode, dir).map(|op| Box::new(op) as Box<dyn CipherOp>)
}

/// An operation on a raw key by provider `p` (the known-answer tests).
#[cfg(test)]
pub fn new_op_with(
    p: provider::Provider,
    key: &[u8],
    mode: &Mode,
    dir: Direction,
) -> Result<Box<dyn CipherOp>, CryptoError> {
    let key = prepare(key)?;
    prepared::op_with(p, &key, mode, dir).map(|op| Box::new(op) as Box<dyn CipherOp>)
}

fn prepare(key: &[u8]) -> Result<SessionKey, CryptoError> {
    let prepared = PreparedKey::new(SecretBytes::from_slice(key))?;
    Ok(SessionHold::new(Arc::new(prepared)))
}

/// Where an operation is in its PKCS#11 life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Fresh,
    Streaming,
    Done,
}

impl Stage {
    /// Refuses work on a finished op, and `oneshot` after `update` (PKCS#11 forbids mixing).
    fn begin(self, oneshot: bool) -> Result<(), CryptoError> {
        match (self, oneshot) {
            (Stage::Done, _) | (Stage::Streaming, true) => Err(CryptoError::Param),
            _ => Ok(()),
        }
    }

    /// Records the outcome: BufferTooSmall keeps the stage, other errors and `last` end the op.
    fn end<T>(&mut self, r: Result<T, CryptoError>, last: bool) -> Result<T, CryptoError> {
        match &r {
            Ok(_) if !last => *self = Stage::Streaming,
            Err(CryptoError::BufferTooSmall { .. }) => {}
            _ => *self = Stage::Done,
        }
        r
    }
}

/// An operation with the PKCS#11 call rules (`Stage`) around it: `S` does
/// the mode's work, each provider's the same way, and these rules are
/// written once: no work after the end, no `oneshot` after `update`, and
/// any outcome but `BufferTooSmall` of a last step ends the operation.
pub struct Staged<S> {
    steps: S,
    stage: Stage,
}

impl<S> Staged<S> {
    // The C_EncryptInit path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub(crate) fn new(steps: S) -> Self {
        Staged {
            steps,
            stage: Stage::Fresh,
        }
    }

    /// A fresh operation again, if `f` can make the one inside ready for
    /// another message (see `PreparedOp::rearm`).
    // The C_EncryptInit path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    #[cfg(feature = "aws-lc")]
    pub(crate) fn rearm(&mut self, f: impl FnOnce(&mut S) -> bool) -> bool {
        let ok = f(&mut self.steps);
        if ok {
            self.stage = Stage::Fresh;
        }
        ok
    }

    /// The operation inside (for what is not a step: buffers).
    #[cfg(feature = "aws-lc")]
    pub(crate) fn steps_mut(&mut self) -> &mut S {
        &mut self.steps
    }
}

impl<S: CipherOp> CipherOp for Staged<S> {
    fn oneshot_len(&self, input_len: usize) -> usize {
        self.steps.oneshot_len(input_len)
    }

    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.stage.begin(true)?;
        let r = self.steps.oneshot(input, output);
        self.stage.end(r, true)
    }

    fn update_len(&self, input_len: usize) -> usize {
        self.steps.update_len(input_len)
    }

    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        self.stage.begin(false)?;
        let r = self.steps.update(input, output);
        self.stage.end(r, false)
    }

    fn finish_len(&self) -> usize {
        self.steps.finish_len()
    }

    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        self.stage.begin(false)?;
        let r = self.steps.finish(output);
        self.stage.end(r, true)
    }
}

/// ECB and CBC without padding, whichever provider runs them: a one-shot
/// takes whole blocks only and needs room for all of them before `feed`
/// runs; a final step leaves nothing pending.
pub(crate) mod whole_blocks {
    use super::CryptoError;

    const BS: usize = 16;

    pub(crate) fn oneshot(
        input: &[u8],
        output: &mut [u8],
        feed: impl FnOnce(&[u8], &mut [u8]) -> Result<usize, CryptoError>,
    ) -> Result<usize, CryptoError> {
        if !input.len().is_multiple_of(BS) {
            Err(CryptoError::DataLen)
        } else if output.len() < input.len() {
            Err(CryptoError::BufferTooSmall {
                needed: input.len(),
            })
        } else {
            feed(input, output)
        }
    }

    pub(crate) fn finish(pending_len: usize) -> Result<usize, CryptoError> {
        if pending_len == 0 {
            Ok(0)
        } else {
            Err(CryptoError::DataLen)
        }
    }
}

/// Appends to a secret buffer without leaving stale copies behind: `Vec` growth would free
/// the old allocation unwiped, so we grow into a fresh buffer and let the old one zeroize.
/// Allocation failure is reported (DataLen) instead of aborting, with `buf` unchanged.
fn append_secret(buf: &mut Zeroizing<Vec<u8>>, data: &[u8]) -> Result<(), CryptoError> {
    let need = buf
        .len()
        .checked_add(data.len())
        .ok_or(CryptoError::DataLen)?;
    if need > buf.capacity() {
        let mut grown: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::new());
        let doubled = need.max(buf.capacity().saturating_mul(2)).max(64);
        if grown.try_reserve_exact(doubled).is_err() {
            grown
                .try_reserve_exact(need)
                .map_err(|_| CryptoError::DataLen)?;
        }
        grown.extend_from_slice(buf);
        *buf = grown;
    }
    buf.extend_from_slice(data);
    Ok(())
}

/// Constant-time equality (no early exit on the first differing byte).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    core::hint::black_box(diff) == 0
}

/// Helpers shared by the mode tests: hex decoding, a tiny PRNG, and drivers that run
/// an op through the same length-query-then-call sequence a PKCS#11 caller uses.
#[cfg(test)]
mod test_util {
    use super::{CipherOp, CryptoError};

    pub fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    /// xorshift64*: deterministic, dependency-free randomness for split points and data.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % (n as u64)) as usize
        }
        pub fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    pub fn oneshot(op: &mut dyn CipherOp, input: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; op.oneshot_len(input.len())];
        let n = op.oneshot(input, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Feeds `input` in the given chunk sizes (the last chunk takes the rest), checking
    /// that update_len is exact and finish stays within finish_len.
    pub fn multipart(
        op: &mut dyn CipherOp,
        input: &[u8],
        chunks: &[usize],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut res = Vec::new();
        let mut rest = input;
        for &c in chunks {
            let (now, later) = rest.split_at(c.min(rest.len()));
            rest = later;
            let mut out = vec![0u8; op.update_len(now.len())];
            let n = op.update(now, &mut out)?;
            assert_eq!(n, out.len(), "update_len must be exact");
            res.extend_from_slice(&out);
        }
        let mut out = vec![0u8; op.update_len(rest.len())];
        let n = op.update(rest, &mut out)?;
        assert_eq!(n, out.len(), "update_len must be exact");
        res.extend_from_slice(&out);
        let mut out = vec![0u8; op.finish_len()];
        let n = op.finish(&mut out)?;
        res.extend_from_slice(&out[..n]);
        Ok(res)
    }

    /// Random chunk sizes summing to at most `len`.
    pub fn random_chunks(rng: &mut Rng, len: usize) -> Vec<usize> {
        let mut v = Vec::new();
        let mut left = len;
        while left > 0 && rng.below(4) != 0 {
            let c = rng.below(left + 1);
            v.push(c);
            left -= c;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_key_sizes() {
        let mode = Mode::CbcPad { iv: [0; 16] };
        for len in [0usize, 1, 15, 17, 23, 25, 31, 33, 64] {
            let r = new_op(&vec![0u8; len], &mode, Direction::Encrypt);
            assert_eq!(r.err(), Some(CryptoError::KeySize), "len {len}");
        }
        for len in [16usize, 24, 32] {
            assert!(new_op(&vec![0u8; len], &mode, Direction::Encrypt).is_ok());
        }
    }

    #[test]
    fn append_secret_grows_and_keeps_data() {
        let mut b = Zeroizing::new(Vec::new());
        let mut expect = Vec::new();
        for i in 0..200u8 {
            let chunk = vec![i; usize::from(i % 7)];
            append_secret(&mut b, &chunk).unwrap();
            expect.extend_from_slice(&chunk);
        }
        assert_eq!(*b, expect);
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn finished_op_refuses_more_work() {
        let mode = Mode::Ctr {
            iv: [0; 16],
            counter_bits: 32,
        };
        let mut op = new_op(&[0; 16], &mode, Direction::Encrypt).unwrap();
        let mut out = [0u8; 4];
        assert_eq!(op.oneshot(b"abcd", &mut out), Ok(4));
        assert_eq!(op.oneshot(b"abcd", &mut out), Err(CryptoError::Param));
        assert_eq!(op.update(b"abcd", &mut out), Err(CryptoError::Param));
        assert_eq!(op.finish(&mut out), Err(CryptoError::Param));
    }

    /// The call rules hold for every mode of every provider of the build
    /// (`Staged` wraps each operation they hand out).
    #[test]
    fn every_providers_modes_keep_the_call_rules() {
        let modes = [
            Mode::Gcm {
                iv: &[1; 12],
                aad: b"",
                tag_len: 16,
            },
            Mode::Ecb,
            Mode::Cbc { iv: [2; 16] },
            Mode::CbcPad { iv: [3; 16] },
            Mode::Ctr {
                iv: [4; 16],
                counter_bits: 32,
            },
        ];
        for p in provider::Provider::ALL {
            for mode in &modes {
                let what = format!("{} {mode:?}", p.name());
                let new = || new_op_with(*p, &[7; 32], mode, Direction::Encrypt).unwrap();
                let mut out = [0u8; 64];
                let mut op = new();
                assert!(op.oneshot(&[5; 16], &mut out).is_ok(), "{what}");
                assert_eq!(
                    op.oneshot(&[5; 16], &mut out),
                    Err(CryptoError::Param),
                    "{what}"
                );
                assert_eq!(
                    op.update(&[5; 16], &mut out),
                    Err(CryptoError::Param),
                    "{what}"
                );
                assert_eq!(op.finish(&mut out), Err(CryptoError::Param), "{what}");
                let mut op = new();
                assert!(op.update(&[5; 16], &mut out).is_ok(), "{what}");
                assert_eq!(
                    op.oneshot(&[5; 16], &mut out),
                    Err(CryptoError::Param),
                    "{what}"
                );
                assert!(op.finish(&mut out).is_ok(), "{what}");
                assert_eq!(
                    op.update(&[5; 16], &mut out),
                    Err(CryptoError::Param),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn oneshot_after_update_is_refused() {
        let mode = Mode::Ctr {
            iv: [0; 16],
            counter_bits: 32,
        };
        let mut op = new_op(&[0; 16], &mode, Direction::Encrypt).unwrap();
        let mut out = [0u8; 4];
        assert_eq!(op.update(b"ab", &mut out), Ok(2));
        assert_eq!(op.oneshot(b"ab", &mut out), Err(CryptoError::Param));
    }
}
