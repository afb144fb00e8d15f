//! Recoverable deletion of token DEKs: destroy marks the row deleted for the
//! retention period; recover brings it back with its attributes (old
//! ciphertexts decrypt again); purge removes it for good, only once
//! retention has passed or when purge protection is off.

use cryptoki_sys::CKR_OK;

use super::service::Envelope;
use crate::audit::{Entry, Op};
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::store::deletion::PurgeRefusal;
use crate::store::{DeletedRow, Store};

/// Make the store's purge protection agree with the configuration: switch
/// it on when asked; refuse a configuration that asks for it off once it is on.
pub fn apply_purge_protection(store: &Store, wanted: Option<bool>) -> Result<()> {
    match (wanted, store.purge_protection()?) {
        (Some(true), false) => {
            store.enable_purge_protection()?;
            crate::log_info!("purge protection switched on for {}", store.location());
            Ok(())
        }
        (Some(false), true) => Err(Error::config(format!(
            "key `purge_protection`: the store {} has purge protection on, and it cannot be turned off; remove the key or set it to true",
            store.location()
        ))),
        _ => Ok(()),
    }
}

impl Envelope {
    /// Soft-delete a token DEK: purgeable after the retention period.
    pub fn soft_delete(&self, id: &[u8; 16]) -> Result<bool> {
        let purge_after =
            crate::clock::unix_secs().saturating_add(self.settings.retention.as_secs() as i64);
        let done = self.with_store(|st| Ok(st.soft_delete(id, purge_after)?))?;
        self.cache.remove(id);
        if done {
            crate::log_info!(
                "DEK {} deleted; recoverable until {}",
                hex(id),
                crate::clock::rfc3339(purge_after)
            );
            self.log(
                Entry::new(Op::DekDestroy, CKR_OK)
                    .key(id, &[])
                    .detail("recoverable"),
            );
        }
        Ok(done)
    }

    pub fn deleted(&self) -> Result<Vec<DeletedRow>> {
        self.with_store(|st| Ok(st.list_deleted()?))
    }

    pub fn recover(&self, id: &[u8; 16]) -> Result<()> {
        if !self.with_store(|st| Ok(st.recover(id)?))? {
            return Err(Error::admin(format!("no deleted DEK {}", hex(id))));
        }
        crate::log_info!("DEK {} recovered", hex(id));
        self.log(Entry::new(Op::DekRecover, CKR_OK).key(id, &[]));
        Ok(())
    }

    /// Purge a deleted DEK at time `now` (unix seconds).
    pub fn purge(&self, id: &[u8; 16], now: i64) -> Result<()> {
        match self.with_store(|st| Ok(st.purge(id, now)?))? {
            Ok(()) => {
                crate::log_info!("DEK {} purged", hex(id));
                self.log(Entry::new(Op::DekPurge, CKR_OK).key(id, &[]));
                Ok(())
            }
            Err(PurgeRefusal::NotDeleted) => {
                Err(Error::admin(format!("no deleted DEK {}", hex(id))))
            }
            Err(PurgeRefusal::Retained { purge_after }) => Err(Error::admin(format!(
                "purge protection is on: DEK {} may be purged from {} on",
                hex(id),
                crate::clock::rfc3339(purge_after)
            ))),
        }
    }
}
