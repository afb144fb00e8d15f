//! The SQLite engine's own tests: pragmas, file modes, the schema version,
//! secure deletion in the file and the WAL. What every engine must do is in
//! the store suite (`src/store/tests.rs`), run on this engine too.

use super::*;
use crate::store::Store;

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
fn schema_and_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let s = SqliteStore::open(&path).unwrap();
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
    SqliteStore::open(&path).unwrap();
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    match SqliteStore::open(&path) {
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
    let e = SqliteStore::open(&path).err().unwrap();
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert!(e.to_string().contains("deks.sqlite"), "{e}");
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
    let s = SqliteStore::open(&path).unwrap();
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
    let e = SqliteStore::open(&path).err().unwrap();
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
fn a_version_one_store_migrates() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("old.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    s.add_kek_version("kek", 1, "aes256", true).unwrap();
    assert_eq!(s.kek_versions("kek").unwrap().len(), 1);
    assert!(
        s.soft_delete(&[0; 16], 1).is_ok(),
        "version 3 columns exist"
    );
}

#[test]
fn the_store_handle_opens_sqlite_by_path() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("deks.sqlite");
    let s = Store::open(&path).unwrap();
    assert_eq!(s.engine_name(), ENGINE);
    assert_eq!(s.location().to_string(), path.display().to_string());
    assert!(path.is_file());
}

#[test]
fn find_is_answered_by_an_index() {
    let d = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&d.path().join("deks.sqlite")).unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = s
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        rows.join("; ")
    };
    for (sql, index) in [
        ("label = X'61'", "dek_label"),
        ("ckaid = X'61'", "dek_ckaid"),
        // The primary key of a table with rowids is an automatic index.
        (
            "id = X'00000000000000000000000000000000'",
            "sqlite_autoindex_dek_1",
        ),
    ] {
        let p = plan(&format!(
            "SELECT {ROW_COLUMNS} FROM dek WHERE {sql} AND deleted_at IS NULL ORDER BY id"
        ));
        assert!(
            p.contains(index) || p.contains("sqlite_autoindex_dek_1"),
            "{sql}: {p}"
        );
        assert!(!p.contains("SCAN dek"), "{sql}: {p}");
    }
}

#[test]
fn a_version_three_store_gains_the_find_indexes() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("v3.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.execute_batch(SCHEMA_V2).unwrap();
        c.execute_batch(SCHEMA_V3).unwrap();
        c.pragma_update(None, "user_version", 3).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let n: i64 = s
        .conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN ('dek_label', 'dek_ckaid')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2);
}
