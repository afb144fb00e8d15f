//! Recoverable deletion in the store. Destroying a token DEK marks its row
//! deleted with a purge date; the record stays (so the DEK can be recovered
//! and the KEK version it needs is not destroyed) until it is purged.
//! Purge protection, once on, is recorded in the store and never turns off.

/// A deleted row, as listings show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedRow {
    pub id: [u8; 16],
    pub label: Vec<u8>,
    pub kek_version: u32,
    pub deleted_at: i64,
    pub purge_after: i64,
}

/// Why a purge did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurgeRefusal {
    NotDeleted,
    /// Purge protection is on and the retention period has not ended.
    Retained {
        purge_after: i64,
    },
}
