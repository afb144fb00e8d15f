//! Whole-row export and import (`copy::StoreCopy`) on each engine, and
//! copies between engines (`copy::Copier`): everything the module needs
//! comes across, GCM counts never go down, a stopped copy resumes only on a
//! true prefix, and verification names what differs.

use super::*;
use crate::store::copy::{Copier, CopyError, FullRow, GcmUsage};

suite!(
    whole_rows_come_out_in_id_order_and_go_in_as_they_were,
    kek_versions_come_across_with_states_and_times,
    gcm_counts_are_raised_never_lowered,
    a_copy_is_verified_row_by_row,
    a_stopped_copy_resumes_only_on_a_true_prefix,
);

/// Another fresh store on the same engine as `f`.
fn another(f: &Fresh) -> Fresh {
    match f.location {
        Location::Sqlite(_) => sqlite(),
        Location::Postgres(_) => postgresql(),
    }
}

/// Every row of `s`, read `batch` at a time.
fn all_rows(s: &Store, batch: u32) -> Vec<FullRow> {
    let mut out: Vec<FullRow> = Vec::new();
    loop {
        let got = s.export_rows(out.last().map(|r| &r.row.id), batch).unwrap();
        assert!(got.len() <= batch as usize);
        let done = got.len() < batch as usize;
        out.extend(got);
        if done {
            return out;
        }
    }
}

/// Rows 1 to `n` (ids in a different order than `n`) with a use, a
/// deletion, a GCM print and an update among them.
fn filled(f: &Fresh, n: u8) -> Store {
    let s = f.open();
    for i in (1..=n).rev() {
        let mut r = row(i);
        r.id[1] = i.wrapping_mul(37);
        r.kek_version = 1 + u32::from(i % 2);
        s.insert(&r).unwrap();
    }
    let ids: Vec<[u8; 16]> = all_rows(&s, 100).iter().map(|r| r.row.id).collect();
    s.touch_last_used(&ids[0], 1_800_000_000).unwrap();
    assert!(s.soft_delete(&ids[1], 1_900_000_000).unwrap());
    s.reserve_gcm(&[0x33; 16], Some(&ids[2]), 77, 1 << 32, 5)
        .unwrap();
    let r = &all_rows(&s, 100)[3].row;
    assert!(s
        .update(
            &r.id,
            b"renamed",
            &r.ckaid,
            &r.attrs,
            &r.record,
            &r.kek_label,
            r.kek_version,
            Some(r.generation)
        )
        .unwrap());
    s
}

fn whole_rows_come_out_in_id_order_and_go_in_as_they_were(f: &Fresh) {
    let s = filled(f, 7);
    let rows = all_rows(&s, 2);
    assert_eq!(rows.len(), 7);
    assert!(rows.windows(2).all(|w| w[0].row.id < w[1].row.id));
    assert_eq!(rows[0].last_used, Some(1_800_000_000));
    assert_eq!(rows[1].purge_after, Some(1_900_000_000));
    assert!(rows[1].deleted_at.is_some());
    assert_eq!(rows[2].gcm_print, Some([0x33; 16]));
    assert_eq!(
        (rows[3].row.label.as_slice(), rows[3].row.generation),
        (&b"renamed"[..], 1)
    );
    assert_eq!(s.export_rows(Some(&rows[6].row.id), 5).unwrap(), vec![]);

    let g = another(f);
    let t = g.open();
    t.import_rows(&rows[..3]).unwrap();
    t.import_rows(&rows[3..]).unwrap();
    assert_eq!(all_rows(&t, 3), rows);
    // What the module reads of them is the same.
    assert_eq!(t.list().unwrap(), s.list().unwrap());
    assert_eq!(t.list_deleted().unwrap(), s.list_deleted().unwrap());
    assert_eq!(t.record_counts().unwrap(), s.record_counts().unwrap());
    assert_eq!(
        t.find(&DekQuery {
            label: Some(b"renamed".to_vec()),
            ..Default::default()
        })
        .unwrap(),
        vec![rows[3].row.clone()]
    );
    // All or none.
    let mut fresh = rows[0].clone();
    fresh.row.id = [0xEE; 16];
    assert!(matches!(
        t.import_rows(&[fresh.clone(), rows[4].clone()]),
        Err(StoreError::Duplicate)
    ));
    assert!(t.export_rows(Some(&[0xED; 16]), 5).unwrap().is_empty());
    t.import_rows(&[]).unwrap();
    // A recovered row is live again, with its record.
    assert!(t.recover(&rows[1].row.id).unwrap());
    assert_eq!(
        t.get(&rows[1].row.id).unwrap().unwrap().record,
        rows[1].row.record
    );
}

fn kek_versions_come_across_with_states_and_times(f: &Fresh) {
    let s = f.open();
    s.add_kek_version("kek", 1, "aes256", true).unwrap();
    s.add_kek_version("kek", 2, "rsa3072", true).unwrap();
    s.add_kek_version("kek", 3, "aes256", false).unwrap();
    s.mark_kek_destroyed("kek", 3).unwrap();
    s.add_kek_version("Other", 1, "aes256", true).unwrap();
    let versions = s.export_kek_versions().unwrap();
    assert_eq!(versions.len(), 4);
    // Labels in byte order: "Other" before "kek".
    assert_eq!(versions[0].kek_label, "Other");

    let g = another(f);
    let t = g.open();
    t.import_kek_versions(&versions).unwrap();
    assert_eq!(t.export_kek_versions().unwrap(), versions);
    assert_eq!(t.primary_kek("kek").unwrap(), s.primary_kek("kek").unwrap());
    assert_eq!(
        t.kek_versions("kek").unwrap(),
        s.kek_versions("kek").unwrap()
    );
    assert!(matches!(
        t.import_kek_versions(&versions[..1]),
        Err(StoreError::Duplicate)
    ));
    // The target's rows work as the source's did.
    t.add_kek_version("kek", 4, "aes256", true).unwrap();
    assert_eq!(t.primary_kek("kek").unwrap().unwrap().version, 4);
}

fn gcm_counts_are_raised_never_lowered(f: &Fresh) {
    let s = f.open();
    for (i, n) in [(1u8, 100u64), (2, 5), (3, 1 << 40)] {
        s.reserve_gcm(&[i; 16], None, n, u64::MAX >> 2, 10 + i64::from(i))
            .unwrap();
    }
    let usage = s.export_gcm_usage(None, 2).unwrap();
    assert_eq!(usage.len(), 2);
    let rest = s.export_gcm_usage(Some(&usage[1].print), 2).unwrap();
    assert_eq!(
        rest,
        vec![GcmUsage {
            print: [3; 16],
            reserved: 1 << 40,
            updated: 13
        }]
    );

    let g = another(f);
    let t = g.open();
    // The target already counted more for key 2.
    t.reserve_gcm(&[2; 16], None, 60, 1000, 1).unwrap();
    t.import_gcm_usage(&usage).unwrap();
    t.import_gcm_usage(&rest).unwrap();
    let got = t.export_gcm_usage(None, 10).unwrap();
    let reserved: Vec<u64> = got.iter().map(|u| u.reserved).collect();
    assert_eq!(reserved, vec![100, 60, 1 << 40]);
    // Reservations carry on after the copied count.
    let r = t.reserve_gcm(&[1; 16], None, 10, 1000, 20).unwrap();
    assert_eq!((r.start, r.granted), (100, 10));
    t.import_gcm_usage(&[]).unwrap();
}

/// A source with everything: KEK versions, rows (one deleted, one used,
/// one with a GCM print), GCM counts, purge protection.
fn full_source(f: &Fresh) -> Store {
    let s = filled(f, 9);
    s.add_kek_version("kek-main", 1, "aes256", true).unwrap();
    s.add_kek_version("kek-main", 2, "aes256", true).unwrap();
    s.reserve_gcm(&[0x44; 16], None, 12, 1 << 32, 7).unwrap();
    s.enable_purge_protection().unwrap();
    s
}

fn copy_all(c: &Copier<'_>) -> u64 {
    c.kek_versions().unwrap();
    let mut seen = Vec::new();
    let n = c.rows(None, &mut |k| seen.push(k)).unwrap();
    assert_eq!(seen.last(), Some(&n));
    c.gcm_usage().unwrap();
    c.purge_protection().unwrap();
    n
}

fn a_copy_is_verified_row_by_row(f: &Fresh) {
    let s = full_source(f);
    let g = another(f);
    let t = g.open();
    let c = Copier {
        from: &*s,
        to: &*t,
        batch: 4,
    };
    assert_eq!(copy_all(&c), 9);
    let mut pairs = 0;
    let v = c
        .verify(&mut |a, b| {
            assert_eq!(a, b);
            pairs += 1;
        })
        .unwrap();
    assert!(v.ok(), "{v:#?}");
    assert_eq!((pairs, v.rows_compared, v.row_differences), (9, 9, 0));
    assert_eq!((v.gcm_keys, v.gcm_kept, v.gcm_invocations), (2, 2, 89));
    assert_eq!(v.source.rows(), 9);
    assert_eq!((v.source.deleted, v.target.deleted), (1, 1));
    assert_eq!(v.target.kek_versions, 2);
    assert!(v.target.purge_protection);

    // The source changed after the copy: named, by id and column.
    let first = all_rows(&s, 100)[4].row.id;
    s.touch_last_used(&first, 1_950_000_000).unwrap();
    s.reserve_gcm(&[0x44; 16], None, 1, 1 << 32, 8).unwrap();
    let v = c.verify(&mut |_, _| {}).unwrap();
    assert!(!v.ok());
    assert_eq!(v.row_differences, 1);
    assert_eq!((v.gcm_keys, v.gcm_kept), (2, 1));
    let said = v.examples.join("; ");
    assert!(said.contains(&crate::hex::encode(&first)), "{said}");
    assert!(
        said.contains("last_used") && said.contains("GCM count"),
        "{said}"
    );
    // A row only on one side.
    s.insert(&row(200)).unwrap();
    let v = c.verify(&mut |_, _| {}).unwrap();
    assert_eq!(v.row_differences, 2);
    assert!(v.examples.join(";").contains("only in the source"));
}

fn a_stopped_copy_resumes_only_on_a_true_prefix(f: &Fresh) {
    let s = full_source(f);
    let rows = all_rows(&s, 100);
    let g = another(f);
    let t = g.open();
    let c = Copier {
        from: &*s,
        to: &*t,
        batch: 2,
    };
    assert_eq!(c.resume_point().unwrap(), None, "an empty target");
    // A copy stopped after four rows.
    c.kek_versions().unwrap();
    t.import_rows(&rows[..4]).unwrap();
    let after = c.resume_point().unwrap();
    assert_eq!(after, Some(rows[3].row.id));
    assert_eq!(c.kek_versions().unwrap(), 2, "already there: kept");
    assert_eq!(c.rows(after, &mut |_| {}).unwrap(), 5);
    c.gcm_usage().unwrap();
    c.purge_protection().unwrap();
    assert!(c.verify(&mut |_, _| {}).unwrap().ok());

    // Not a prefix: a gap, a changed row, or KEK versions of its own.
    for bad in 0..3 {
        let g = another(f);
        let t = g.open();
        let c = Copier {
            from: &*s,
            to: &*t,
            batch: 3,
        };
        let e = match bad {
            0 => {
                t.import_rows(&[rows[0].clone(), rows[2].clone()]).unwrap();
                c.resume_point().unwrap_err()
            }
            1 => {
                let mut changed = rows[1].clone();
                changed.row.record[0] ^= 1;
                t.import_rows(&[rows[0].clone(), changed]).unwrap();
                c.resume_point().unwrap_err()
            }
            _ => {
                t.add_kek_version("kek-main", 1, "aes256", true).unwrap();
                c.kek_versions().unwrap_err()
            }
        };
        let msg = e.to_string();
        assert!(matches!(e, CopyError::Mismatch(_)), "{msg}");
        let expected = ["only in the source", "differs (record)", "KEK version"][bad];
        assert!(msg.contains(expected), "{msg}");
    }
}

/// SQLite into PostgreSQL and back: the same rows, counts and flags.
#[test]
fn sqlite_to_postgresql_and_back() {
    let (a, b, c) = (sqlite(), postgresql(), sqlite());
    let s = full_source(&a);
    s.add_kek_version("Zed", 1, "aes256", true).unwrap();
    let (pg, back) = (b.open(), c.open());
    for (from, to) in [(&s, &pg), (&pg, &back)] {
        let copier = Copier {
            from: &**from,
            to: &**to,
            batch: 3,
        };
        assert_eq!(copy_all(&copier), 9);
        let v = copier.verify(&mut |_, _| {}).unwrap();
        assert!(v.ok(), "{v:#?}");
        assert_eq!(v.target.kek_versions, 3);
    }
    assert_eq!(all_rows(&back, 4), all_rows(&s, 5));
    assert_eq!(
        back.export_gcm_usage(None, 9).unwrap(),
        s.export_gcm_usage(None, 9).unwrap()
    );
    assert_eq!(back.list_for_admin().unwrap(), s.list_for_admin().unwrap());
}
