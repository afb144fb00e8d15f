//! What the hot path works with: a DEK's key prepared once (value and key
//! schedules), a session's hold on it, the operation built on it (inline,
//! not boxed, for AES-GCM on aws-lc), and the multi-part buffer that ended
//! operations hand on to the next. Which provider makes an operation is
//! `provider::first`'s choice.

use std::sync::Arc;

use zeroize::Zeroizing;

#[cfg(feature = "aws-lc")]
use super::awslc;
use super::provider::{self, Provider};
#[cfg(not(feature = "fips"))]
use super::rustcrypto::Schedule;
use super::{CipherOp, CryptoError, Direction, Mode};
use crate::secret::SecretBytes;

/// A DEK's value with its key schedules, built once when the DEK enters the
/// key cache so that no operation re-expands the key.
pub struct PreparedKey {
    value: SecretBytes,
    #[cfg(not(feature = "fips"))]
    pub(super) schedule: Schedule,
    #[cfg(feature = "aws-lc")]
    pub(super) aws: awslc::Keys,
    print: KeyPrint,
}

/// A one-way fingerprint of a key's value: the first 16 bytes of SHA-256
/// over a domain string and the value. It names key material (two DEKs
/// holding the same value have the same print) without revealing it, as a
/// key check value does, and is what GCM invocations are counted by.
pub type KeyPrint = [u8; 16];

const PRINT_DOMAIN: &[u8] = b"hsm-envelope key print v1\0";

impl PreparedKey {
    pub fn new(value: SecretBytes) -> Result<Self, CryptoError> {
        // Kept long: into a shared locked arena (see `SecretBytes::packed`);
        // the buffer it came in goes back to its pool.
        let value = SecretBytes::packed(value.as_slice());
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(PRINT_DOMAIN)
            .chain_update(value.as_slice())
            .finalize();
        let mut print = [0u8; 16];
        print.copy_from_slice(&digest[..16]);
        Ok(PreparedKey {
            #[cfg(not(feature = "fips"))]
            schedule: Schedule::new(value.as_slice())?,
            #[cfg(feature = "aws-lc")]
            aws: awslc::Keys::new(value.as_slice())?,
            value,
            print,
        })
    }

    /// The key bytes (for wrapping and for CKA_VALUE of extractable keys).
    pub fn value(&self) -> &[u8] {
        self.value.as_slice()
    }

    /// The key's fingerprint (see [`KeyPrint`]).
    pub fn print(&self) -> &KeyPrint {
        &self.print
    }
}

/// A session's own reference to a cached key: operations clone the outer
/// `Arc`, whose count only that session touches, instead of the cache's,
/// which every thread using the DEK would write (see `token::remembered`).
pub type SessionKey = Arc<SessionHold>;

/// The cache's `Arc` as one session holds it. Aligned to whole cache lines
/// (128 bytes: x86 fetches lines in pairs) so that the outer count, written
/// on every operation, never shares a line with another session's.
#[repr(align(128))]
pub struct SessionHold(Arc<PreparedKey>);

impl SessionHold {
    pub fn new(key: Arc<PreparedKey>) -> SessionKey {
        Arc::new(SessionHold(key))
    }
}

impl std::ops::Deref for SessionHold {
    type Target = PreparedKey;
    fn deref(&self) -> &PreparedKey {
        &self.0
    }
}

/// A multi-part buffer that ended operations hand back for the next one,
/// so a session does not allocate (and, for large messages, page-fault in)
/// a fresh buffer and regrow it for every message. What an operation wrote
/// is zeroized before the buffer is handed back; it holds no data.
pub struct SpareBuffer(
    // Only the aws-lc operation buffers in a way worth keeping.
    #[cfg_attr(not(feature = "aws-lc"), allow(dead_code))] pub(super) Zeroizing<Vec<u8>>,
);

impl SpareBuffer {
    /// Larger buffers are freed (after zeroizing), not kept by the session:
    /// this bounds what an idle session holds. 2 MiB fits a 1 MiB message
    /// with its tag (the buffer grows by doubling).
    pub const MAX_KEPT: usize = 2 << 20;
}

/// An operation on a cached key. The aws-lc AES-GCM operation is held
/// inline, so the common case allocates nothing; the others are boxed.
pub enum PreparedOp {
    #[cfg(feature = "aws-lc")]
    AwsGcm(super::Staged<awslc::gcm::GcmOp>),
    Boxed(Box<dyn CipherOp>),
}

/// Calls the operation inside with static dispatch for the inline case.
macro_rules! each {
    ($self:ident, $op:ident => $call:expr) => {
        match $self {
            #[cfg(feature = "aws-lc")]
            PreparedOp::AwsGcm($op) => $call,
            PreparedOp::Boxed($op) => $call,
        }
    };
}

impl PreparedOp {
    /// Give the operation a buffer for multi-part input; an operation that
    /// keeps its own hands it back.
    pub fn lend_buffer(&mut self, spare: SpareBuffer) -> Option<SpareBuffer> {
        match self {
            #[cfg(feature = "aws-lc")]
            PreparedOp::AwsGcm(op) => op.steps_mut().lend_buffer(spare),
            PreparedOp::Boxed(_) => Some(spare),
        }
    }

    /// Make this ended operation ready for the next message: true when it
    /// then is exactly what `new_prepared_op(key, mode, dir)` would build,
    /// false (and unchanged) when one must be built. A session encrypting
    /// message after message under one key so re-uses one operation, with
    /// no key reference taken and dropped and no operation moved per
    /// message. Only the inline aws-lc AES-GCM operation re-arms; it is
    /// also the first provider's choice for what it re-arms for.
    // The C_EncryptInit path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    pub fn rearm(&mut self, key: &SessionKey, mode: &Mode, dir: Direction) -> bool {
        match self {
            #[cfg(feature = "aws-lc")]
            PreparedOp::AwsGcm(op) => awslc::rearm(op, key, mode, dir),
            PreparedOp::Boxed(_) => {
                let _ = (key, mode, dir);
                false
            }
        }
    }

    /// Ready an ended operation to be kept for `rearm`: what it holds of
    /// its message wiped or dropped, its buffer kept. False for an
    /// operation that does not re-arm, which the caller drops (after
    /// `reclaim_buffer`).
    pub fn keep(&mut self) -> bool {
        match self {
            #[cfg(feature = "aws-lc")]
            PreparedOp::AwsGcm(op) => {
                op.steps_mut().wipe();
                true
            }
            PreparedOp::Boxed(_) => false,
        }
    }

    /// Take back the multi-part buffer of an ended operation, wiped, if it
    /// is worth keeping.
    pub fn reclaim_buffer(&mut self) -> Option<SpareBuffer> {
        match self {
            #[cfg(feature = "aws-lc")]
            PreparedOp::AwsGcm(op) => op.steps_mut().reclaim_buffer(),
            PreparedOp::Boxed(_) => None,
        }
    }
}

impl CipherOp for PreparedOp {
    fn oneshot_len(&self, input_len: usize) -> usize {
        each!(self, op => op.oneshot_len(input_len))
    }
    fn oneshot(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        each!(self, op => op.oneshot(input, output))
    }
    fn update_len(&self, input_len: usize) -> usize {
        each!(self, op => op.update_len(input_len))
    }
    fn update(&mut self, input: &[u8], output: &mut [u8]) -> Result<usize, CryptoError> {
        each!(self, op => op.update(input, output))
    }
    fn finish_len(&self) -> usize {
        each!(self, op => op.finish_len())
    }
    fn finish(&mut self, output: &mut [u8]) -> Result<usize, CryptoError> {
        each!(self, op => op.finish(output))
    }
}

/// An operation on a cached key, from the first provider that can do it.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn new_prepared_op(
    key: &SessionKey,
    mode: &Mode,
    dir: Direction,
) -> Result<PreparedOp, CryptoError> {
    provider::first(|p| op_with(p, key, mode, dir))
}

/// An operation on a cached key by provider `p`.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub(super) fn op_with(
    p: Provider,
    key: &SessionKey,
    mode: &Mode,
    dir: Direction,
) -> Result<PreparedOp, CryptoError> {
    match p {
        #[cfg(feature = "aws-lc")]
        Provider::AwsLc => awslc::op(key, mode, dir),
        #[cfg(not(feature = "fips"))]
        Provider::RustCrypto => key.schedule.op(mode, dir).map(PreparedOp::Boxed),
    }
}
