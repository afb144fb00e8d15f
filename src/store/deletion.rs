//! Recoverable deletion in the store. Destroying a token DEK marks its row
//! deleted with a purge date; the record stays (so the DEK can be recovered
//! and the KEK version it needs is not destroyed) until it is purged.
//! Purge protection, once on, is recorded in the store and never turns off.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};
use crate::clock::unix_secs as now_secs;

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

const PROTECTION_KEY: &str = "purge_protection";

impl Store {
    /// Mark a live row deleted, purgeable from `purge_after` on. `Ok(false)`
    /// if there is no such live row.
    pub fn soft_delete(&self, id: &[u8; 16], purge_after: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE dek SET deleted_at = ?2, purge_after = ?3, updated = ?2, generation = generation + 1
             WHERE id = ?1 AND deleted_at IS NULL",
            params![id, now_secs(), purge_after],
        )?;
        Ok(n > 0)
    }

    /// Bring a deleted row back, attributes and record unchanged.
    pub fn recover(&self, id: &[u8; 16]) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE dek SET deleted_at = NULL, purge_after = NULL, updated = ?2, generation = generation + 1
             WHERE id = ?1 AND deleted_at IS NOT NULL",
            params![id, now_secs()],
        )?;
        Ok(n > 0)
    }

    pub fn list_deleted(&self) -> Result<Vec<DeletedRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, label, kek_version, deleted_at, purge_after FROM dek
             WHERE deleted_at IS NOT NULL ORDER BY deleted_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeletedRow {
                id: r.get(0)?,
                label: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                kek_version: r.get(2)?,
                deleted_at: r.get(3)?,
                purge_after: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Remove a deleted row for good, if its retention has passed at `now`
    /// or purge protection is off. The bytes are overwritten in the file
    /// (secure_delete) and the WAL is checkpointed so no copy lingers there.
    pub fn purge(&self, id: &[u8; 16], now: i64) -> Result<Result<(), PurgeRefusal>, StoreError> {
        let tx = self.immediate()?;
        let purge_after: Option<Option<i64>> = tx
            .query_row(
                "SELECT purge_after FROM dek WHERE id = ?1 AND deleted_at IS NOT NULL",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(purge_after) = purge_after.flatten() else {
            return Ok(Err(PurgeRefusal::NotDeleted));
        };
        let protected: bool = tx
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![PROTECTION_KEY],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|v| v != 0);
        if protected && now < purge_after {
            return Ok(Err(PurgeRefusal::Retained { purge_after }));
        }
        tx.execute("DELETE FROM dek WHERE id = ?1", params![id])?;
        tx.commit()?;
        self.checkpoint()?;
        Ok(Ok(()))
    }

    /// Whether purge protection is on for this store.
    pub fn purge_protection(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![PROTECTION_KEY],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|v| v != 0))
    }

    /// Switch purge protection on, for good.
    pub fn enable_purge_protection(&self) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, 1) ON CONFLICT (key) DO UPDATE SET value = 1",
            params![PROTECTION_KEY],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DekRow;

    fn row(id: u8) -> DekRow {
        DekRow {
            id: [id; 16],
            label: b"l".to_vec(),
            ckaid: vec![],
            attrs: vec![1],
            record: vec![2; 40],
            kek_label: "kek".into(),
            kek_version: 1,
            created: 1,
            updated: 1,
            generation: 0,
        }
    }

    #[test]
    fn delete_recover_purge() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.db")).unwrap();
        s.insert(&row(1)).unwrap();
        assert!(s.soft_delete(&[1; 16], 1000).unwrap());
        assert!(!s.soft_delete(&[1; 16], 1000).unwrap(), "already deleted");
        assert!(
            s.get(&[1; 16]).unwrap().is_none(),
            "deleted rows are not live"
        );
        assert!(s.list_ids_generations().unwrap().is_empty());
        assert_eq!(
            s.count_under("kek", 1).unwrap(),
            1,
            "a deleted row still needs its KEK"
        );
        assert_eq!(s.list_deleted().unwrap()[0].purge_after, 1000);
        assert!(s.recover(&[1; 16]).unwrap());
        assert!(s.get(&[1; 16]).unwrap().is_some());
        assert_eq!(
            s.purge(&[1; 16], 5000).unwrap(),
            Err(PurgeRefusal::NotDeleted)
        );
        s.soft_delete(&[1; 16], 1000).unwrap();
        s.enable_purge_protection().unwrap();
        assert_eq!(
            s.purge(&[1; 16], 999).unwrap(),
            Err(PurgeRefusal::Retained { purge_after: 1000 })
        );
        assert_eq!(s.purge(&[1; 16], 1000).unwrap(), Ok(()));
        assert!(s.list_deleted().unwrap().is_empty());
        assert_eq!(s.count_under("kek", 1).unwrap(), 0);
    }

    #[test]
    fn without_protection_purge_needs_no_wait() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.db")).unwrap();
        s.insert(&row(2)).unwrap();
        s.soft_delete(&[2; 16], i64::MAX).unwrap();
        assert!(!s.purge_protection().unwrap());
        assert_eq!(s.purge(&[2; 16], 0).unwrap(), Ok(()));
    }
}
