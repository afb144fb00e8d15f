//! KEK version metadata and leases in the store. The KEK objects live on the
//! HSM; here is what every process must agree on: which version is primary,
//! which are decrypt-only or destroyed, and who holds a lease to rotate.

use rusqlite::{params, OptionalExtension};

use super::{DekRow, Store, StoreError, ROW_COLUMNS};
use crate::clock::unix_secs as now_secs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekState {
    /// New DEKs wrap under it. Exactly one per KEK label.
    Primary,
    /// Opens existing records only.
    DecryptOnly,
    /// Gone from the HSM.
    Destroyed,
}

impl KekState {
    pub fn as_str(self) -> &'static str {
        match self {
            KekState::Primary => "primary",
            KekState::DecryptOnly => "decrypt-only",
            KekState::Destroyed => "destroyed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "primary" => KekState::Primary,
            "decrypt-only" => KekState::DecryptOnly,
            "destroyed" => KekState::Destroyed,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KekVersionRow {
    pub kek_label: String,
    pub version: u32,
    /// "aes256", "rsa2048", "rsa3072".
    pub kind: String,
    pub state: KekState,
    pub created: i64,
    pub primary_since: Option<i64>,
    pub retired: Option<i64>,
}

fn row_to_version(r: &rusqlite::Row<'_>) -> rusqlite::Result<KekVersionRow> {
    let state: String = r.get(3)?;
    Ok(KekVersionRow {
        kek_label: r.get(0)?,
        version: r.get(1)?,
        kind: r.get(2)?,
        state: KekState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                "unknown KEK state".into(),
            )
        })?,
        created: r.get(4)?,
        primary_since: r.get(5)?,
        retired: r.get(6)?,
    })
}

const VERSION_COLUMNS: &str = "kek_label, version, kind, state, created, primary_since, retired";

impl Store {
    /// Every version of the KEK `label`, oldest first.
    pub fn kek_versions(&self, label: &str) -> Result<Vec<KekVersionRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM kek_version WHERE kek_label = ?1 ORDER BY version"
        ))?;
        let rows = stmt.query_map(params![label], row_to_version)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The primary version of `label`, if any.
    pub fn primary_kek(&self, label: &str) -> Result<Option<KekVersionRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM kek_version WHERE kek_label = ?1 AND state = 'primary'"
            ))?
            .query_row(params![label], row_to_version)
            .optional()?)
    }

    /// Record a new version. With `make_primary`, it becomes the primary and
    /// the old primary turns decrypt-only, in one transaction. `Duplicate`
    /// if the version exists.
    pub fn add_kek_version(
        &self,
        label: &str,
        version: u32,
        kind: &str,
        make_primary: bool,
    ) -> Result<(), StoreError> {
        let now = now_secs();
        let tx = self.immediate()?;
        if make_primary {
            tx.execute(
                "UPDATE kek_version SET state = 'decrypt-only', retired = ?2 WHERE kek_label = ?1 AND state = 'primary'",
                params![label, now],
            )?;
        }
        let state = if make_primary {
            KekState::Primary
        } else {
            KekState::DecryptOnly
        };
        let r = tx.execute(
            "INSERT INTO kek_version (kek_label, version, kind, state, created, primary_since, retired)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
            params![label, version, kind, state.as_str(), now, make_primary.then_some(now)],
        );
        match r {
            Err(e) if super::is_pk_violation(&e) => return Err(StoreError::Duplicate),
            r => r?,
        };
        tx.commit()?;
        Ok(())
    }

    /// Make an existing, not destroyed version the primary.
    pub fn set_primary_kek(&self, label: &str, version: u32) -> Result<(), StoreError> {
        let now = now_secs();
        let tx = self.immediate()?;
        let state: Option<String> = tx
            .query_row(
                "SELECT state FROM kek_version WHERE kek_label = ?1 AND version = ?2",
                params![label, version],
                |r| r.get(0),
            )
            .optional()?;
        match state.as_deref() {
            None | Some("destroyed") => return Err(StoreError::NotFound),
            Some("primary") => return Ok(()),
            _ => {}
        }
        tx.execute(
            "UPDATE kek_version SET state = 'decrypt-only', retired = ?2 WHERE kek_label = ?1 AND state = 'primary'",
            params![label, now],
        )?;
        tx.execute(
            "UPDATE kek_version SET state = 'primary', primary_since = ?3, retired = NULL WHERE kek_label = ?1 AND version = ?2",
            params![label, version, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn mark_kek_destroyed(&self, label: &str, version: u32) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE kek_version SET state = 'destroyed', retired = coalesce(retired, ?3) WHERE kek_label = ?1 AND version = ?2",
            params![label, version, now_secs()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// How many records (all rows: soft-deleted ones are rows too) are
    /// wrapped under this version.
    pub fn count_under(&self, label: &str, version: u32) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM dek WHERE kek_label = ?1 AND kek_version = ?2",
            params![label, version],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// How many records of `label` are not under `version`.
    pub fn count_not_under(&self, label: &str, version: u32) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM dek WHERE kek_label = ?1 AND kek_version != ?2",
            params![label, version],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Up to `limit` rows of `label` not under `version`, in table order
    /// after position `after` (a rowid; 0 to start), each with its position,
    /// for batched, resumable re-wrapping. Table order, not id order: ids
    /// are random, so a batch in id order would touch a page per row, where
    /// in table order it reads and rewrites a few neighbouring pages.
    /// (Rowids only change under VACUUM; a row missed that way is left for
    /// the next run, which `rewrap` says.)
    pub fn rows_not_under(
        &self,
        label: &str,
        version: u32,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, DekRow)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS}, rowid FROM dek WHERE +kek_label = ?1 AND kek_version != ?2 AND rowid > ?3 ORDER BY rowid LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![label, version, after, limit], |r| {
            Ok((r.get(10)?, super::row_to_dek(r)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Replace the records of several rows of KEK `label` in one
    /// transaction; each only if its generation is still the one read (else
    /// someone changed it meanwhile) and if the version it now names is
    /// still the primary one (else a rotation happened meanwhile, and the
    /// version may be on its way to being destroyed). Returns how many were
    /// written.
    pub fn replace_records(
        &self,
        label: &str,
        updates: &[([u8; 16], i64, Vec<u8>, u32)],
    ) -> Result<usize, StoreError> {
        let now = now_secs();
        let tx = self.immediate()?;
        let primary: Option<u32> = tx
            .query_row(
                "SELECT version FROM kek_version WHERE kek_label = ?1 AND state = 'primary'",
                params![label],
                |r| r.get(0),
            )
            .optional()?;
        let mut written = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE dek SET record = ?3, kek_version = ?4, updated = ?5, generation = generation + 1
                 WHERE id = ?1 AND generation = ?2",
            )?;
            for (id, generation, record, version) in updates {
                if primary != Some(*version) {
                    continue;
                }
                written += stmt.execute(params![id, generation, record, version, now])?;
            }
        }
        tx.commit()?;
        Ok(written)
    }

    /// Take the lease `name` for `ttl_secs`, if it is free or expired (or
    /// already ours). Returns whether we hold it.
    pub fn take_lease(&self, name: &str, holder: &str, ttl_secs: i64) -> Result<bool, StoreError> {
        let now = now_secs();
        let tx = self.immediate()?;
        let current: Option<(String, i64)> = tx
            .query_row(
                "SELECT holder, expires FROM lease WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((h, expires)) = current {
            if h != holder && expires > now {
                return Ok(false);
            }
        }
        tx.execute(
            "INSERT INTO lease (name, holder, expires) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires",
            params![name, holder, now.saturating_add(ttl_secs)],
        )?;
        tx.commit()?;
        Ok(true)
    }

    pub fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM lease WHERE name = ?1 AND holder = ?2",
            params![name, holder],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("s.db")).unwrap();
        (d, s)
    }

    #[test]
    fn versions_and_primary() {
        let (_d, s) = store();
        assert!(s.primary_kek("kek").unwrap().is_none());
        s.add_kek_version("kek", 1, "aes256", true).unwrap();
        s.add_kek_version("kek", 2, "aes256", true).unwrap();
        let v = s.kek_versions("kek").unwrap();
        assert_eq!(
            v.iter().map(|r| r.state).collect::<Vec<_>>(),
            [KekState::DecryptOnly, KekState::Primary]
        );
        assert!(matches!(
            s.add_kek_version("kek", 2, "aes256", false),
            Err(StoreError::Duplicate)
        ));
        s.set_primary_kek("kek", 1).unwrap();
        assert_eq!(s.primary_kek("kek").unwrap().unwrap().version, 1);
        s.mark_kek_destroyed("kek", 2).unwrap();
        assert!(matches!(
            s.set_primary_kek("kek", 2),
            Err(StoreError::NotFound)
        ));
        assert!(s.primary_kek("other").unwrap().is_none());
    }

    #[test]
    fn leases_exclude_others_until_they_expire() {
        let (_d, s) = store();
        assert!(s.take_lease("rotate", "a", 60).unwrap());
        assert!(!s.take_lease("rotate", "b", 60).unwrap());
        assert!(
            s.take_lease("rotate", "a", 60).unwrap(),
            "re-entrant for its holder"
        );
        s.release_lease("rotate", "a").unwrap();
        assert!(s.take_lease("rotate", "b", -1).unwrap());
        assert!(
            s.take_lease("rotate", "a", 60).unwrap(),
            "an expired lease is free"
        );
    }

    #[test]
    fn a_version_one_store_migrates() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("old.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(super::super::SCHEMA_V1).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = Store::open(&path).unwrap();
        s.add_kek_version("kek", 1, "aes256", true).unwrap();
        assert_eq!(s.kek_versions("kek").unwrap().len(), 1);
    }
}
