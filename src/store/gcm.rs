//! GCM invocation numbers in the store (issue 12): how many of each key
//! material's AES-GCM invocations have been handed out, across every
//! process and host sharing the store.
//!
//! A key material is named by its print (`crypto::KeyPrint`, a one-way
//! fingerprint of the value), so DEKs holding the same value (a copy, a
//! re-import) share one count. Processes reserve *blocks* of numbers here,
//! one transaction per block, and hand them out from memory; a process
//! that dies loses at most the rest of its block. A DEK row that reserved
//! carries the print (`gcm_print`), so that listings can show its count.

/// A key material's fingerprint (16 bytes; see `crypto::KeyPrint`).
pub type Print = [u8; 16];

/// What [`super::StoreEngine::reserve_gcm`] granted: the numbers
/// `start..start + granted` are the caller's alone. `granted` is 0 once the
/// limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub start: u64,
    pub granted: u64,
}

impl Reservation {
    /// How many of `n` wanted numbers a key that has `reserved` of `limit`
    /// may still be granted, starting where.
    pub fn grant(reserved: u64, n: u64, limit: u64) -> Reservation {
        Reservation {
            start: reserved,
            granted: n.min(limit.saturating_sub(reserved)),
        }
    }
}

/// Numbers are kept as SQL integers (i64); a count beyond is refused.
pub(crate) fn to_sql(n: u64) -> Result<i64, super::StoreError> {
    i64::try_from(n).map_err(|_| super::StoreError::Data(format!("GCM count {n} out of range")))
}

/// A stored count as a number.
pub(crate) fn from_sql(n: i64) -> Result<u64, super::StoreError> {
    u64::try_from(n).map_err(|_| super::StoreError::Data(format!("GCM count {n} out of range")))
}
