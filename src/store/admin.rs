//! What the operator tool (`hsm-envelope`) reads from the store: the DEK
//! listing with its last use (`StoreEngine::list_for_admin`), record counts
//! per KEK version and the soft-deleted count. Nothing here carries wrapped
//! records or attributes.

/// One DEK as `hsm-envelope dek list` shows it (no record, no attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DekListing {
    pub id: [u8; 16],
    /// CKA_LABEL (empty if none).
    pub label: Vec<u8>,
    /// CKA_ID (empty if none).
    pub ckaid: Vec<u8>,
    pub kek_label: String,
    pub kek_version: u32,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub updated: i64,
    /// Unix seconds; None if no use was ever recorded.
    pub last_used: Option<i64>,
    /// GCM invocations reserved for the DEK's key material (see `gcm`);
    /// None if none ever were (its rows are written as blocks are reserved,
    /// so this runs ahead of the encryptions done by at most a block per
    /// process).
    pub gcm_invocations: Option<u64>,
}
