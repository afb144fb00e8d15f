//! Whole rows in and out of a SQLite store, for copying it into another
//! (see `store::copy`).

use rusqlite::params;

use super::{is_pk_violation, row_to_dek, row_to_version, SqliteStore, ROW_COLUMNS};
use crate::store::copy::{FullRow, GcmUsage, StoreCopy};
use crate::store::{gcm, KekVersionRow, StoreError};

const EXTRA_COLUMNS: &str = "last_used, deleted_at, purge_after, gcm_print";

const EXPORT_VERSIONS: &str =
    "SELECT kek_label, version, kind, state, created, primary_since, retired
     FROM kek_version ORDER BY kek_label, version";
const IMPORT_VERSION: &str =
    "INSERT INTO kek_version (kek_label, version, kind, state, created, primary_since, retired)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const EXPORT_GCM: &str =
    "SELECT print, reserved, updated FROM gcm_usage WHERE print > ?1 ORDER BY print LIMIT ?2";
const IMPORT_GCM: &str = "INSERT INTO gcm_usage (print, reserved, updated) VALUES (?1, ?2, ?3)
     ON CONFLICT (print) DO UPDATE SET reserved = MAX(reserved, excluded.reserved),
                                      updated = MAX(updated, excluded.updated)";

/// Blobs compare bytewise and an empty one sorts first: "after nothing"
/// is every row.
fn after_key(after: Option<&[u8; 16]>) -> &[u8] {
    after.map_or(&[], |a| &a[..])
}

impl StoreCopy for SqliteStore {
    fn export_rows(
        &self,
        after: Option<&[u8; 16]>,
        limit: u32,
    ) -> Result<Vec<FullRow>, StoreError> {
        // By the primary key's index: a batch costs its rows, not the table.
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS}, {EXTRA_COLUMNS} FROM dek WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after_key(after), limit], |r| {
            Ok(FullRow {
                row: row_to_dek(r)?,
                last_used: r.get(10)?,
                deleted_at: r.get(11)?,
                purge_after: r.get(12)?,
                gcm_print: r.get(13)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn import_rows(&self, rows: &[FullRow]) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO dek ({ROW_COLUMNS}, {EXTRA_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ))?;
            for FullRow {
                row,
                last_used,
                deleted_at,
                purge_after,
                gcm_print,
            } in rows
            {
                let r = stmt.execute(params![
                    row.id,
                    row.label,
                    row.ckaid,
                    row.attrs,
                    row.record,
                    row.kek_label,
                    row.kek_version,
                    row.created,
                    row.updated,
                    row.generation,
                    last_used,
                    deleted_at,
                    purge_after,
                    gcm_print
                ]);
                match r {
                    Err(e) if is_pk_violation(&e) => return Err(StoreError::Duplicate),
                    r => r?,
                };
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn export_kek_versions(&self) -> Result<Vec<KekVersionRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(EXPORT_VERSIONS)?;
        let rows = stmt.query_map([], row_to_version)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn import_kek_versions(&self, rows: &[KekVersionRow]) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        for v in rows {
            let r = tx.execute(
                IMPORT_VERSION,
                params![
                    v.kek_label,
                    v.version,
                    v.kind,
                    v.state.as_str(),
                    v.created,
                    v.primary_since,
                    v.retired
                ],
            );
            match r {
                Err(e) if is_pk_violation(&e) => return Err(StoreError::Duplicate),
                r => r?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    fn export_gcm_usage(
        &self,
        after: Option<&gcm::Print>,
        limit: u32,
    ) -> Result<Vec<GcmUsage>, StoreError> {
        let mut stmt = self.conn.prepare_cached(EXPORT_GCM)?;
        let rows = stmt.query_map(params![after_key(after), limit], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?, r.get(2)?))
        })?;
        rows.map(|r| {
            let (print, reserved, updated) = r?;
            Ok(GcmUsage {
                print,
                reserved: gcm::from_sql(reserved)?,
                updated,
            })
        })
        .collect()
    }

    fn import_gcm_usage(&self, rows: &[GcmUsage]) -> Result<(), StoreError> {
        let tx = self.immediate()?;
        {
            let mut stmt = tx.prepare_cached(IMPORT_GCM)?;
            for u in rows {
                stmt.execute(params![u.print, gcm::to_sql(u.reserved)?, u.updated])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
