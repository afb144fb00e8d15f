//! The one way this crate treats a poisoned lock: a panic in another thread
//! (caught at the C boundary) must not make every later call fail, and the
//! data behind our locks stays consistent at every await-free step, so the
//! guard is taken as it is.

use std::sync::{LockResult, PoisonError};

/// The guard, poisoned or not.
pub fn unpoisoned<G>(r: LockResult<G>) -> G {
    r.unwrap_or_else(PoisonError::into_inner)
}
