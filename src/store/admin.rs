//! Store queries for the operator tool (`hsm-envelope`) and the re-wrap
//! benchmark: the DEK listing with its last use, record counts per KEK
//! version, and a bulk insert in one transaction. Nothing here reads or
//! returns wrapped records or attributes it does not need.

use super::{DekRow, Store, StoreError};

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
}

impl Store {
    /// Every live (not soft-deleted) DEK row for a listing, ordered by
    /// `created`, then `id`.
    pub fn list_for_admin(&self) -> Result<Vec<DekListing>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, label, ckaid, kek_label, kek_version, created, updated, last_used
             FROM dek WHERE deleted_at IS NULL ORDER BY created, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DekListing {
                id: r.get(0)?,
                label: r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                ckaid: r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                kek_label: r.get(3)?,
                kek_version: r.get(4)?,
                created: r.get(5)?,
                updated: r.get(6)?,
                last_used: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// How many records each (KEK label, KEK version) holds, soft-deleted
    /// ones included, ordered by label and version. Labels other than the
    /// configured one show records this configuration cannot open.
    pub fn record_counts(&self) -> Result<Vec<(String, u32, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT kek_label, kek_version, count(*) FROM dek
             GROUP BY kek_label, kek_version ORDER BY kek_label, kek_version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// How many rows are soft-deleted (still recoverable, still records).
    pub fn deleted_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM dek WHERE deleted_at IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Insert several new rows in one transaction (all or none), as
    /// [`Store::insert`] does one. `Duplicate` if any id exists.
    pub fn insert_many(&self, rows: &[DekRow]) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        for row in rows {
            super::insert_row(&tx, row)?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u8, version: u32) -> DekRow {
        DekRow {
            id: [id; 16],
            label: b"l".to_vec(),
            ckaid: vec![id],
            attrs: vec![1],
            record: vec![2],
            kek_label: "kek".into(),
            kek_version: version,
            created: i64::from(id),
            updated: i64::from(id),
            generation: 0,
        }
    }

    #[test]
    fn bulk_insert_listing_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.db")).unwrap();
        s.insert_many(&[row(1, 1), row(2, 1), row(3, 2)]).unwrap();
        assert!(matches!(
            s.insert_many(&[row(4, 1), row(1, 1)]),
            Err(StoreError::Duplicate)
        ));
        assert!(s.get(&[4; 16]).unwrap().is_none(), "all or none");
        s.touch_last_used(&[2; 16], 1234).unwrap();
        let l = s.list_for_admin().unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].ckaid, vec![1]);
        assert_eq!(l[1].last_used, Some(1234));
        assert_eq!(l[2].last_used, None);
        assert_eq!(s.deleted_count().unwrap(), 0);
        // A soft-deleted row is not listed, but is still a record.
        assert!(s.soft_delete(&[3; 16], 99).unwrap());
        assert_eq!(s.list_for_admin().unwrap().len(), 2);
        assert_eq!(s.deleted_count().unwrap(), 1);
        assert_eq!(
            s.record_counts().unwrap(),
            vec![("kek".to_string(), 1, 2), ("kek".to_string(), 2, 1)]
        );
    }
}
