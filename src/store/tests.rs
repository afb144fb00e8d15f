use super::*;
use std::sync::{Arc, Barrier};

fn row(n: u8) -> DekRow {
    let mut id = [0u8; 16];
    id[0] = n;
    id[15] = 0xA5;
    DekRow {
        id,
        label: format!("dek-{n}").into_bytes(),
        ckaid: vec![n, n],
        attrs: vec![1, 2, 3, n],
        record: vec![0x10 ^ n; 70],
        kek_label: "kek-main".into(),
        kek_version: 1,
        created: 1_700_000_000 + i64::from(n),
        updated: 1_700_000_000 + i64::from(n),
        generation: 0,
    }
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("deks.sqlite")
}

#[test]
fn crud() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&db(&dir)).unwrap();
    assert!(s.list().unwrap().is_empty());

    // Inserted out of order; list() is ordered by created, then id.
    for n in [3u8, 1, 2] {
        s.insert(&row(n)).unwrap();
    }
    assert_eq!(s.get(&row(2).id).unwrap(), Some(row(2)));
    assert_eq!(s.get(&[9u8; 16]).unwrap(), None);
    assert_eq!(s.list().unwrap(), vec![row(1), row(2), row(3)]);
    let ids: Vec<_> = s.list_ids_generations().unwrap();
    assert_eq!(ids, vec![(row(1).id, 0), (row(2).id, 0), (row(3).id, 0)]);

    // Empty label/ckaid round-trip as empty.
    let mut e = row(4);
    e.label.clear();
    e.ckaid.clear();
    s.insert(&e).unwrap();
    assert_eq!(s.get(&e.id).unwrap(), Some(e.clone()));

    assert!(s.delete(&row(2).id).unwrap());
    assert!(!s.delete(&row(2).id).unwrap());
    assert_eq!(s.get(&row(2).id).unwrap(), None);
    assert_eq!(s.list().unwrap().len(), 3);

    // touch_last_used: stored, monotonic, not a generation bump.
    let last_used = |s: &Store, id: &[u8; 16]| -> Option<i64> {
        s.conn
            .query_row(
                "SELECT last_used FROM dek WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(last_used(&s, &row(1).id), None);
    s.touch_last_used(&row(1).id, 500).unwrap();
    s.touch_last_used(&row(1).id, 400).unwrap();
    assert_eq!(last_used(&s, &row(1).id), Some(500));
    s.touch_last_used(&row(1).id, 600).unwrap();
    assert_eq!(last_used(&s, &row(1).id), Some(600));
    assert_eq!(s.get(&row(1).id).unwrap().unwrap().generation, 0);
    assert!(matches!(
        s.touch_last_used(&row(2).id, 1),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn schema_and_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let s = Store::open(&path).unwrap();
    let q = |p: &str| -> String {
        s.conn
            .query_row(&format!("PRAGMA {p}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
    };
    assert_eq!(q("user_version"), format!("Integer({SCHEMA_VERSION})"));
    assert_eq!(q("journal_mode"), "Text(\"wal\")");
    assert_eq!(q("secure_delete"), "Integer(1)");
    assert_eq!(q("synchronous"), "Integer(2)"); // FULL
    assert_eq!(q("busy_timeout"), "Integer(10000)");
    let idx: i64 = s
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'dek_kek'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(idx, 1);
    drop(s);

    // New file is owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Reopen is fine; a future schema version is refused with a clear error.
    Store::open(&path).unwrap();
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    match Store::open(&path) {
        Err(
            e @ StoreError::Schema {
                found, supported, ..
            },
        ) if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a future schema"),
    }
}

#[test]
fn not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let e = Store::open(&path).err().unwrap();
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert!(e.to_string().contains("deks.sqlite"), "{e}");
}

#[test]
fn duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&db(&dir)).unwrap();
    s.insert(&row(1)).unwrap();
    let mut again = row(1);
    again.record = vec![0xEE; 10];
    assert!(matches!(s.insert(&again), Err(StoreError::Duplicate)));
    assert_eq!(s.get(&row(1).id).unwrap(), Some(row(1)));
}

#[test]
fn update_generation_and_optimistic_check() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&db(&dir)).unwrap();
    let r = row(1);
    s.insert(&r).unwrap();

    let ok = s
        .update(&r.id, b"new", b"id2", b"attrs2", b"rec2", "kek-b", 7, None)
        .unwrap();
    assert!(ok);
    let got = s.get(&r.id).unwrap().unwrap();
    assert_eq!(got.generation, 1);
    assert_eq!(
        (
            got.label.as_slice(),
            got.ckaid.as_slice(),
            got.attrs.as_slice(),
            got.record.as_slice()
        ),
        (&b"new"[..], &b"id2"[..], &b"attrs2"[..], &b"rec2"[..])
    );
    assert_eq!((got.kek_label.as_str(), got.kek_version), ("kek-b", 7));
    assert_eq!(got.created, r.created);
    assert!(got.updated >= r.updated);

    // Stale expectation: no write.
    assert!(!s
        .update(&r.id, b"x", b"x", b"x", b"x", "x", 9, Some(0))
        .unwrap());
    assert_eq!(s.get(&r.id).unwrap().unwrap(), got);
    // Matching expectation: written, generation 2.
    assert!(s
        .update(&r.id, b"y", b"y", b"y", b"y", "kek-b", 8, Some(1))
        .unwrap());
    let got = s.get(&r.id).unwrap().unwrap();
    assert_eq!((got.generation, got.kek_version), (2, 8));
    assert_eq!(s.list_ids_generations().unwrap(), vec![(r.id, 2)]);

    assert!(matches!(
        s.update(&[0; 16], b"", b"", b"", b"", "k", 1, None),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.update(&[0; 16], b"", b"", b"", b"", "k", 1, Some(0)),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn two_stores_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&db(&dir)).unwrap();
    let b = Store::open(&db(&dir)).unwrap();
    a.insert(&row(1)).unwrap();
    assert_eq!(b.get(&row(1).id).unwrap(), Some(row(1)));
    b.update(&row(1).id, b"l", b"c", b"a", b"r", "kek-main", 2, Some(0))
        .unwrap();
    assert_eq!(a.list_ids_generations().unwrap(), vec![(row(1).id, 1)]);
    // a's view is stale now: its optimistic update must lose.
    assert!(!a
        .update(&row(1).id, b"l2", b"c", b"a", b"r", "kek-main", 2, Some(0))
        .unwrap());
    assert!(b.delete(&row(1).id).unwrap());
    assert_eq!(a.get(&row(1).id).unwrap(), None);
    assert!(matches!(
        a.insert(&row(2)).and_then(|_| b.insert(&row(2))),
        Err(StoreError::Duplicate)
    ));
}

#[test]
fn concurrent_writers_no_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(db(&dir));
    // Both threads also race to create the file and schema.
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2u8)
        .map(|t| {
            let path = Arc::clone(&path);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> Result<(), StoreError> {
                barrier.wait();
                let s = Store::open(&path)?;
                for i in 0..200u16 {
                    let mut r = row(0);
                    r.id[0] = t;
                    r.id[1..3].copy_from_slice(&i.to_be_bytes());
                    s.insert(&r)?;
                    // Interleave read-modify-writes too.
                    if i % 10 == 0 {
                        assert!(s.update(&r.id, b"u", b"", b"a", b"r", "kek-main", 2, Some(0))?);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let s = Store::open(&path).unwrap();
    let all = s.list_ids_generations().unwrap();
    assert_eq!(all.len(), 400);
    assert_eq!(all.iter().filter(|(_, g)| *g == 1).count(), 40);
}

fn file_contains(path: &Path, needle: &[u8]) -> bool {
    match std::fs::read(path) {
        Ok(data) => data.windows(needle.len()).any(|w| w == needle),
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

#[test]
fn secure_delete_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let wal = dir.path().join("deks.sqlite-wal");
    let marker: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5C).collect();
    let marker2: Vec<u8> = marker.iter().map(|b| b ^ 0xFF).collect();
    let s = Store::open(&path).unwrap();
    // The deleted row sits between live rows, so its cell is not simply
    // reused by the next write.
    for n in 0..10 {
        s.insert(&row(n)).unwrap();
    }
    let mut r = row(100);
    r.record = marker.clone();
    s.insert(&r).unwrap();
    for n in 10..20 {
        s.insert(&row(n)).unwrap();
    }
    let mut r2 = row(101);
    r2.record = marker2.clone();
    s.insert(&r2).unwrap();
    // Make sure both are in the main file, not only the WAL.
    assert!(s.checkpoint().unwrap());
    assert!(file_contains(&path, &marker));
    assert!(file_contains(&path, &marker2));

    assert!(s.delete(&r.id).unwrap());
    assert!(s.checkpoint().unwrap());
    for f in [&path, &wal] {
        assert!(
            !file_contains(f, &marker),
            "deleted record found in {}",
            f.display()
        );
    }
    // An update must not leave the old record behind either (re-wrap).
    assert!(s
        .update(&r2.id, b"", b"", b"a", &[0u8; 64], "kek-main", 2, None)
        .unwrap());
    assert!(s.checkpoint().unwrap());
    for f in [&path, &wal] {
        assert!(
            !file_contains(f, &marker2),
            "replaced record found in {}",
            f.display()
        );
    }
    assert_eq!(s.list().unwrap().len(), 21);
}

#[test]
fn missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("deks.sqlite");
    let e = Store::open(&path).err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Open { .. }));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("no-such-dir") && msg.contains("does not exist"),
        "{msg}"
    );
    assert!(!dir.path().join("no-such-dir").exists());
}

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Store>();
    assert_send::<StoreError>();
}

#[test]
fn many_openers_of_a_new_file() {
    // Schema creation and the WAL switch race when several connections
    // open a fresh file at once; none may fail.
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(db(&dir));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8u8)
            .map(|t| {
                let path = Arc::clone(&path);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || -> Result<(), StoreError> {
                    barrier.wait();
                    let s = Store::open(&path)?;
                    s.insert(&row(t))
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert_eq!(Store::open(&path).unwrap().list().unwrap().len(), 8);
    }
}

/// Re-wrapped records are written only under the current primary version,
/// each only if unchanged, and a batch walks the table in rowid order.
#[test]
fn replace_records_only_under_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&db(&dir)).unwrap();
    s.add_kek_version("kek-main", 1, "aes256", true).unwrap();
    for n in 1..=4 {
        s.insert(&row(n)).unwrap();
    }
    s.add_kek_version("kek-main", 2, "aes256", true).unwrap();
    let batch = s.rows_not_under("kek-main", 2, 0, 3).unwrap();
    assert_eq!(batch.len(), 3);
    assert!(batch.windows(2).all(|w| w[0].0 < w[1].0), "rowid order");
    let after = batch[2].0;
    assert_eq!(s.rows_not_under("kek-main", 2, after, 3).unwrap().len(), 1);

    let update = |r: &DekRow, v: u32| (r.id, r.generation, vec![0xEE; 70], v);
    let (a, b) = (&batch[0].1, &batch[1].1);
    // Under v2, the primary: written; a stale generation: skipped.
    assert_eq!(s.replace_records("kek-main", &[update(a, 2)]).unwrap(), 1);
    assert_eq!(s.replace_records("kek-main", &[update(a, 2)]).unwrap(), 0);
    // A rotation to v3 happened meanwhile: nothing goes under v2 any more.
    s.add_kek_version("kek-main", 3, "aes256", true).unwrap();
    assert_eq!(s.replace_records("kek-main", &[update(b, 2)]).unwrap(), 0);
    assert_eq!(s.get(&b.id).unwrap().unwrap().kek_version, 1);
    assert_eq!(s.replace_records("kek-main", &[update(b, 3)]).unwrap(), 1);
}
