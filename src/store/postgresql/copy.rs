//! Whole rows in and out of a PostgreSQL store, for copying it into
//! another (see `store::copy`). A batch of rows goes in as one statement
//! (`unnest` over one array per column): one round trip, all or none.

use super::{
    dek_from, is_unique_violation, version_from, PostgresStore, LOCK, LOCK_CLASS, LOCK_KEK,
};
use crate::store::copy::{FullRow, GcmUsage, StoreCopy};
use crate::store::{gcm, KekVersionRow, StoreError};

const EXPORT_ROWS: &str =
    "SELECT id, label, ckaid, attrs, record, kek_label, kek_version, created, updated, generation,
            last_used, deleted_at, purge_after, gcm_print
     FROM dek WHERE id > $1 ORDER BY id LIMIT $2";
const IMPORT_ROWS: &str =
    "INSERT INTO dek (id, label, ckaid, attrs, record, kek_label, kek_version, created, updated,
                      generation, last_used, deleted_at, purge_after, gcm_print)
     SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bytea[],
                          $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
                          $11::int8[], $12::int8[], $13::int8[], $14::bytea[])";
// COLLATE "C": labels in byte order, as SQLite sorts them.
const EXPORT_VERSIONS: &str =
    "SELECT kek_label, version, kind, state, created, primary_since, retired
     FROM kek_version ORDER BY kek_label COLLATE \"C\", version";
const IMPORT_VERSION: &str =
    "INSERT INTO kek_version (kek_label, version, kind, state, created, primary_since, retired)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const EXPORT_GCM: &str =
    "SELECT print, reserved, updated FROM gcm_usage WHERE print > $1 ORDER BY print LIMIT $2";
const IMPORT_GCM: &str = "INSERT INTO gcm_usage (print, reserved, updated)
     SELECT * FROM unnest($1::bytea[], $2::int8[], $3::int8[])
     ON CONFLICT (print) DO UPDATE SET reserved = GREATEST(gcm_usage.reserved, excluded.reserved),
                                      updated = GREATEST(gcm_usage.updated, excluded.updated)";

/// bytea compares bytewise and an empty value sorts first: "after
/// nothing" is every row.
fn after_key(after: Option<&[u8; 16]>) -> &[u8] {
    after.map_or(&[], |a| &a[..])
}

fn print16(v: Vec<u8>) -> Result<gcm::Print, StoreError> {
    <[u8; 16]>::try_from(v.as_slice())
        .map_err(|_| StoreError::Data(format!("a GCM key print of {} bytes, not 16", v.len())))
}

impl StoreCopy for PostgresStore {
    fn export_rows(
        &self,
        after: Option<&[u8; 16]>,
        limit: u32,
    ) -> Result<Vec<FullRow>, StoreError> {
        self.query(EXPORT_ROWS, &[&after_key(after), &i64::from(limit)])?
            .iter()
            .map(|r| {
                Ok(FullRow {
                    row: dek_from(r)?,
                    last_used: r.try_get(10)?,
                    deleted_at: r.try_get(11)?,
                    purge_after: r.try_get(12)?,
                    gcm_print: r
                        .try_get::<_, Option<Vec<u8>>>(13)?
                        .map(print16)
                        .transpose()?,
                })
            })
            .collect()
    }

    fn import_rows(&self, rows: &[FullRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let bytes = |f: fn(&FullRow) -> &[u8]| rows.iter().map(f).collect::<Vec<&[u8]>>();
        let ints = |f: fn(&FullRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let opts = |f: fn(&FullRow) -> Option<i64>| rows.iter().map(f).collect::<Vec<_>>();
        let (ids, labels, ckaids) = (
            bytes(|r| &r.row.id),
            bytes(|r| &r.row.label),
            bytes(|r| &r.row.ckaid),
        );
        let (attrs, records) = (bytes(|r| &r.row.attrs), bytes(|r| &r.row.record));
        let kek_labels: Vec<&str> = rows.iter().map(|r| r.row.kek_label.as_str()).collect();
        let versions = ints(|r| i64::from(r.row.kek_version));
        let (created, updated) = (ints(|r| r.row.created), ints(|r| r.row.updated));
        let generations = ints(|r| r.row.generation);
        let last_used = opts(|r| r.last_used);
        let (deleted_at, purge_after) = (opts(|r| r.deleted_at), opts(|r| r.purge_after));
        let prints: Vec<Option<&[u8]>> = rows
            .iter()
            .map(|r| r.gcm_print.as_ref().map(|p| &p[..]))
            .collect();
        self.with(|c| {
            let st = c.prepare(IMPORT_ROWS)?;
            // One statement: all rows or none; in a transaction that
            // changes DEK rows, so the change feed stays in commit order.
            let mut tx = super::changing(c)?;
            match tx.execute(
                &st,
                &[
                    &ids,
                    &labels,
                    &ckaids,
                    &attrs,
                    &records,
                    &kek_labels,
                    &versions,
                    &created,
                    &updated,
                    &generations,
                    &last_used,
                    &deleted_at,
                    &purge_after,
                    &prints,
                ],
            ) {
                Err(e) if is_unique_violation(&e) => Err(StoreError::Duplicate),
                r => {
                    r?;
                    tx.commit()?;
                    Ok(())
                }
            }
        })
    }

    fn export_kek_versions(&self) -> Result<Vec<KekVersionRow>, StoreError> {
        self.query(EXPORT_VERSIONS, &[])?
            .iter()
            .map(version_from)
            .collect()
    }

    fn import_kek_versions(&self, rows: &[KekVersionRow]) -> Result<(), StoreError> {
        self.with(|c| {
            let lock = c.prepare(LOCK)?;
            let insert = c.prepare(IMPORT_VERSION)?;
            let mut tx = c.client.transaction()?;
            // As every change to KEK versions: one at a time.
            tx.execute(&lock, &[&LOCK_CLASS, &LOCK_KEK])?;
            for v in rows {
                let r = tx.execute(
                    &insert,
                    &[
                        &v.kek_label,
                        &i64::from(v.version),
                        &v.kind,
                        &v.state.as_str(),
                        &v.created,
                        &v.primary_since,
                        &v.retired,
                    ],
                );
                match r {
                    Err(e) if is_unique_violation(&e) => return Err(StoreError::Duplicate),
                    r => r?,
                };
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn export_gcm_usage(
        &self,
        after: Option<&gcm::Print>,
        limit: u32,
    ) -> Result<Vec<GcmUsage>, StoreError> {
        self.query(EXPORT_GCM, &[&after_key(after), &i64::from(limit)])?
            .iter()
            .map(|r| {
                Ok(GcmUsage {
                    print: print16(r.try_get(0)?)?,
                    reserved: gcm::from_sql(r.try_get(1)?)?,
                    updated: r.try_get(2)?,
                })
            })
            .collect()
    }

    fn import_gcm_usage(&self, rows: &[GcmUsage]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let prints: Vec<&[u8]> = rows.iter().map(|u| &u.print[..]).collect();
        let reserved = rows
            .iter()
            .map(|u| gcm::to_sql(u.reserved))
            .collect::<Result<Vec<i64>, _>>()?;
        let updated: Vec<i64> = rows.iter().map(|u| u.updated).collect();
        self.with(|c| {
            let st = c.prepare(IMPORT_GCM)?;
            c.client.execute(&st, &[&prints, &reserved, &updated])?;
            Ok(())
        })
    }
}
