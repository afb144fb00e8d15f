//! The store suite: every test here runs on each engine, through the
//! [`StoreEngine`] interface only (`sqlite::…` and `postgresql::…` in the
//! test names). An engine's own tests (SQLite's pragmas and file modes,
//! PostgreSQL's URLs) are beside it.
//!
//! PostgreSQL tests start a throwaway cluster with the shared helper
//! `tests/common/pg.rs` (one per test process; each test gets a new
//! database in it).

use super::*;
use std::sync::{Arc, Barrier};

#[path = "../../tests/common/pg.rs"]
mod pg;

/// A fresh, empty store on one engine, kept alive (its directory or
/// cluster) by `_keep` for as long as the test holds it.
struct Fresh {
    location: Location,
    _keep: Box<dyn std::any::Any>,
}

impl Fresh {
    fn open(&self) -> Store {
        Store::open_at(&self.location).unwrap()
    }
}

fn sqlite() -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    Fresh {
        location: Location::Sqlite(dir.path().join("deks.sqlite")),
        _keep: Box::new(dir),
    }
}

fn postgresql() -> Fresh {
    let cluster = pg::PgCluster::shared();
    let url = crate::store::postgresql::Url::parse(&cluster.create_database()).unwrap();
    Fresh {
        location: Location::Postgres(url),
        _keep: Box::new(cluster),
    }
}

/// `mod ENGINE { #[test] fn NAME() { NAME(&ENGINE()) } ... }` for every
/// test of the suite.
macro_rules! on_engine {
    ($engine:ident: $($name:ident),* $(,)?) => {
        mod $engine {
            $(
                #[test]
                fn $name() {
                    super::$name(&super::$engine());
                }
            )*
        }
    };
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        on_engine!(sqlite: $($name),*);
        on_engine!(postgresql: $($name),*);
    };
}

suite!(
    crud,
    engine_is_named,
    duplicate,
    update_generation_and_optimistic_check,
    two_stores_see_each_other,
    concurrent_writers_and_schema_creation,
    many_openers_of_a_new_store,
    replace_records_only_under_the_primary,
    bulk_insert_listing_and_counts,
    delete_recover_purge,
    without_protection_purge_needs_no_wait,
    versions_and_primary,
    leases_exclude_others_until_they_expire,
    lease_holders_on_two_sessions,
    find_by_label_ckaid_and_id,
    gcm_reservations_stop_at_the_limit_and_never_overlap,
    gcm_counts_are_listed_and_the_last_block_given_back,
    every_change_to_a_row_is_in_the_feed_and_uses_are_not,
    the_feed_is_read_in_pages_and_tells_a_reader_it_fell_behind,
    the_feed_follows_commit_order_with_concurrent_writers,
    pages_walk_every_live_row_in_id_order,
);

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

fn last_used(s: &Store, id: &[u8; 16]) -> Option<i64> {
    s.list_for_admin()
        .unwrap()
        .into_iter()
        .find(|l| &l.id == id)
        .unwrap_or_else(|| panic!("no live row {id:?}"))
        .last_used
}

fn crud(f: &Fresh) {
    let s = f.open();
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
    // Several in one transaction; a row that is gone is skipped.
    s.touch_many(&[(row(1).id, 700), (row(2).id, 1), (row(3).id, 650)])
        .unwrap();
    assert_eq!(last_used(&s, &row(1).id), Some(700));
    assert_eq!(last_used(&s, &row(3).id), Some(650));
    s.touch_many(&[(row(1).id, 10)]).unwrap();
    assert_eq!(last_used(&s, &row(1).id), Some(700), "never backwards");

    // The largest KEK version and extreme times round-trip.
    let mut big = row(5);
    big.kek_version = u32::MAX;
    big.created = i64::MIN;
    big.updated = i64::MAX;
    s.insert(&big).unwrap();
    assert_eq!(s.get(&big.id).unwrap(), Some(big));
}

fn find_by_label_ckaid_and_id(f: &Fresh) {
    let s = f.open();
    let labelled = |n: u8, label: &[u8], ckaid: &[u8]| {
        let mut r = row(n);
        r.label = label.to_vec();
        r.ckaid = ckaid.to_vec();
        r
    };
    let rows = [
        labelled(1, b"a", b"x"),
        labelled(2, b"a", b"y"),
        labelled(3, b"b", b"x"),
        labelled(4, b"", b""),
        labelled(5, b"a", b"x"),
    ];
    for r in &rows {
        s.insert(r).unwrap();
    }
    // A deleted row is not found.
    assert!(s.soft_delete(&rows[4].id, 1).unwrap());
    let q = |id: Option<[u8; 16]>, label: Option<&[u8]>, ckaid: Option<&[u8]>| {
        let query = DekQuery {
            id,
            label: label.map(<[u8]>::to_vec),
            ckaid: ckaid.map(<[u8]>::to_vec),
        };
        s.find(&query)
            .unwrap()
            .into_iter()
            .map(|r| r.id[0])
            .collect::<Vec<_>>()
    };
    assert_eq!(q(None, Some(b"a"), None), [1, 2]);
    assert_eq!(q(None, None, Some(b"x")), [1, 3]);
    assert_eq!(q(None, Some(b"a"), Some(b"x")), [1]);
    assert_eq!(q(None, Some(b"c"), None), [0u8; 0]);
    assert_eq!(q(None, Some(b""), None), [4], "no label is the empty label");
    assert_eq!(q(None, None, Some(b"")), [4]);
    assert_eq!(q(Some(rows[2].id), None, None), [3]);
    assert_eq!(q(Some(rows[2].id), Some(b"b"), Some(b"x")), [3]);
    assert_eq!(q(Some(rows[2].id), Some(b"a"), None), [0u8; 0]);
    assert_eq!(q(Some(rows[4].id), None, None), [0u8; 0], "deleted");
    assert_eq!(
        q(None, None, None),
        [0u8; 0],
        "an empty query finds nothing"
    );
    // Whole rows come back, and follow updates.
    assert_eq!(
        s.find(&DekQuery {
            ckaid: Some(b"y".to_vec()),
            ..Default::default()
        })
        .unwrap(),
        vec![rows[1].clone()]
    );
    s.update(&rows[1].id, b"b", b"y", b"a", b"r", "kek-main", 1, None)
        .unwrap();
    assert_eq!(q(None, Some(b"a"), None), [1]);
    assert_eq!(q(None, Some(b"b"), None), [2, 3]);
}

fn engine_is_named(f: &Fresh) {
    let s = f.open();
    assert_eq!(s.engine_name(), f.location.engine_name());
    assert_eq!(s.location(), &f.location);
    // Reopening a current store is fine.
    drop(s);
    f.open();
}

fn duplicate(f: &Fresh) {
    let s = f.open();
    s.insert(&row(1)).unwrap();
    let mut again = row(1);
    again.record = vec![0xEE; 10];
    assert!(matches!(s.insert(&again), Err(StoreError::Duplicate)));
    assert_eq!(s.get(&row(1).id).unwrap(), Some(row(1)));
    // The session is still usable after the refused insert.
    s.insert(&row(2)).unwrap();
}

fn update_generation_and_optimistic_check(f: &Fresh) {
    let s = f.open();
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

fn two_stores_see_each_other(f: &Fresh) {
    let a = f.open();
    let b = f.open();
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

/// Two writers on their own sessions, which also race to create the store
/// and its schema: no error, no lost update.
fn concurrent_writers_and_schema_creation(f: &Fresh) {
    let location = Arc::new(f.location.clone());
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2u8)
        .map(|t| {
            let location = Arc::clone(&location);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> Result<(), StoreError> {
                barrier.wait();
                let s = Store::open_at(&location)?;
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
    let s = f.open();
    let all = s.list_ids_generations().unwrap();
    assert_eq!(all.len(), 400);
    assert_eq!(all.iter().filter(|(_, g)| *g == 1).count(), 40);
}

/// Schema creation races when several sessions open a new store at once;
/// none may fail. Ten new stores, eight sessions each.
fn many_openers_of_a_new_store(f: &Fresh) {
    let mut fresh = Vec::new();
    for round in 0..10 {
        // The first round uses the store given; the others new ones of the
        // same engine.
        let next = match (round, &f.location) {
            (0, _) => None,
            (_, Location::Sqlite(_)) => Some(sqlite()),
            (_, Location::Postgres(_)) => Some(postgresql()),
        };
        let location = Arc::new(next.as_ref().map_or(&f.location, |n| &n.location).clone());
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8u8)
            .map(|t| {
                let location = Arc::clone(&location);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || -> Result<(), StoreError> {
                    barrier.wait();
                    let s = Store::open_at(&location)?;
                    s.insert(&row(t))
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert_eq!(Store::open_at(&location).unwrap().list().unwrap().len(), 8);
        fresh.extend(next);
    }
}

/// Re-wrapped records are written only under the current primary version,
/// each only if unchanged, and a batch walks the rows in position order.
fn replace_records_only_under_the_primary(f: &Fresh) {
    let s = f.open();
    s.add_kek_version("kek-main", 1, "aes256", true).unwrap();
    for n in 1..=4 {
        s.insert(&row(n)).unwrap();
    }
    s.add_kek_version("kek-main", 2, "aes256", true).unwrap();
    let batch = s.rows_not_under("kek-main", 2, 0, 3).unwrap();
    assert_eq!(batch.len(), 3);
    assert!(batch.windows(2).all(|w| w[0].0 < w[1].0), "position order");
    let after = batch[2].0;
    assert_eq!(s.rows_not_under("kek-main", 2, after, 3).unwrap().len(), 1);
    assert!(s.rows_not_under("other", 2, 0, 3).unwrap().is_empty());

    let update = |r: &DekRow, v: u32| (r.id, r.generation, vec![0xEE; 70], v);
    let (a, b) = (&batch[0].1, &batch[1].1);
    // Under v2, the primary: written; a stale generation: skipped.
    assert_eq!(s.replace_records("kek-main", &[update(a, 2)]).unwrap(), 1);
    assert_eq!(s.replace_records("kek-main", &[update(a, 2)]).unwrap(), 0);
    assert_eq!(s.count_not_under("kek-main", 2).unwrap(), 3);
    assert_eq!(s.count_under("kek-main", 2).unwrap(), 1);
    // A rotation to v3 happened meanwhile: nothing goes under v2 any more.
    s.add_kek_version("kek-main", 3, "aes256", true).unwrap();
    assert_eq!(s.replace_records("kek-main", &[update(b, 2)]).unwrap(), 0);
    assert_eq!(s.get(&b.id).unwrap().unwrap().kek_version, 1);
    assert_eq!(s.replace_records("kek-main", &[update(b, 3)]).unwrap(), 1);
    let got = s.get(&b.id).unwrap().unwrap();
    assert_eq!((got.kek_version, got.generation), (3, 1));
    assert_eq!(got.record, vec![0xEE; 70]);
    // A record may move to another label (one KEK -> a set of HSMs).
    s.add_kek_version("kek-main#any-of", 1, "main:3,b:1", true)
        .unwrap();
    assert_eq!(
        s.replace_records("kek-main#any-of", &[update(&got, 1)])
            .unwrap(),
        1
    );
    let moved = s.get(&b.id).unwrap().unwrap();
    assert_eq!(
        (moved.kek_label.as_str(), moved.kek_version),
        ("kek-main#any-of", 1)
    );
    assert_eq!(s.count_under("kek-main#any-of", 1).unwrap(), 1);
}

fn admin_row(id: u8, version: u32) -> DekRow {
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

fn bulk_insert_listing_and_counts(f: &Fresh) {
    let s = f.open();
    s.insert_many(&[admin_row(1, 1), admin_row(2, 1), admin_row(3, 2)])
        .unwrap();
    assert!(matches!(
        s.insert_many(&[admin_row(4, 1), admin_row(1, 1)]),
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

fn deleted_row(id: u8) -> DekRow {
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

fn delete_recover_purge(f: &Fresh) {
    let s = f.open();
    s.insert(&deleted_row(1)).unwrap();
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
    assert!(!s.recover(&[1; 16]).unwrap(), "not deleted any more");
    let back = s.get(&[1; 16]).unwrap().unwrap();
    assert_eq!((back.record, back.generation), (vec![2; 40], 2));
    assert_eq!(
        s.purge(&[1; 16], 5000).unwrap(),
        Err(PurgeRefusal::NotDeleted)
    );
    s.soft_delete(&[1; 16], 1000).unwrap();
    s.enable_purge_protection().unwrap();
    assert!(s.purge_protection().unwrap());
    assert_eq!(
        s.purge(&[1; 16], 999).unwrap(),
        Err(PurgeRefusal::Retained { purge_after: 1000 })
    );
    assert_eq!(s.purge(&[1; 16], 1000).unwrap(), Ok(()));
    assert!(s.list_deleted().unwrap().is_empty());
    assert_eq!(s.count_under("kek", 1).unwrap(), 0);
    // Purge protection is in the store: another session sees it.
    assert!(f.open().purge_protection().unwrap());
}

fn without_protection_purge_needs_no_wait(f: &Fresh) {
    let s = f.open();
    s.insert(&deleted_row(2)).unwrap();
    s.soft_delete(&[2; 16], i64::MAX).unwrap();
    assert!(!s.purge_protection().unwrap());
    assert_eq!(s.purge(&[2; 16], 0).unwrap(), Ok(()));
    assert_eq!(s.purge(&[2; 16], 0).unwrap(), Err(PurgeRefusal::NotDeleted));
}

fn versions_and_primary(f: &Fresh) {
    let s = f.open();
    assert!(s.primary_kek("kek").unwrap().is_none());
    s.add_kek_version("kek", 1, "aes256", true).unwrap();
    s.add_kek_version("kek", 2, "rsa3072", true).unwrap();
    let v = s.kek_versions("kek").unwrap();
    assert_eq!(
        v.iter().map(|r| r.state).collect::<Vec<_>>(),
        [KekState::DecryptOnly, KekState::Primary]
    );
    assert_eq!(v[1].kind, "rsa3072");
    assert!(v[0].retired.is_some() && v[1].retired.is_none());
    assert!(v[1].primary_since.is_some());
    assert!(matches!(
        s.add_kek_version("kek", 2, "aes256", false),
        Err(StoreError::Duplicate)
    ));
    // The refused version changed nothing.
    assert_eq!(s.primary_kek("kek").unwrap().unwrap().version, 2);
    s.add_kek_version("kek", 3, "aes256", false).unwrap();
    assert_eq!(s.primary_kek("kek").unwrap().unwrap().version, 2);
    s.set_primary_kek("kek", 1).unwrap();
    assert_eq!(s.primary_kek("kek").unwrap().unwrap().version, 1);
    s.set_primary_kek("kek", 1).unwrap();
    s.mark_kek_destroyed("kek", 2).unwrap();
    assert_eq!(s.kek_versions("kek").unwrap()[1].state, KekState::Destroyed);
    assert!(matches!(
        s.set_primary_kek("kek", 2),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.set_primary_kek("kek", 9),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.mark_kek_destroyed("kek", 9),
        Err(StoreError::NotFound)
    ));
    assert!(s.primary_kek("other").unwrap().is_none());
}

fn leases_exclude_others_until_they_expire(f: &Fresh) {
    let s = f.open();
    assert!(s.take_lease("rotate", "a", 60).unwrap());
    assert!(!s.take_lease("rotate", "b", 60).unwrap());
    assert!(
        s.take_lease("rotate", "a", 60).unwrap(),
        "re-entrant for its holder"
    );
    s.release_lease("rotate", "b").unwrap();
    assert!(
        !s.take_lease("rotate", "b", 60).unwrap(),
        "only its holder releases a lease"
    );
    s.release_lease("rotate", "a").unwrap();
    assert!(s.take_lease("rotate", "b", -1).unwrap());
    assert!(
        s.take_lease("rotate", "a", 60).unwrap(),
        "an expired lease is free"
    );
}

/// Holders on their own sessions (two processes, two hosts) race for one
/// lease: exactly one wins each round.
fn lease_holders_on_two_sessions(f: &Fresh) {
    let location = Arc::new(f.location.clone());
    f.open();
    for round in 0..20 {
        let name = format!("lease-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let winners: usize = ["a", "b"]
            .into_iter()
            .map(|holder| {
                let (location, barrier, name) =
                    (Arc::clone(&location), Arc::clone(&barrier), name.clone());
                std::thread::spawn(move || {
                    let s = Store::open_at(&location).unwrap();
                    barrier.wait();
                    s.take_lease(&name, holder, 60).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum();
        assert_eq!(winners, 1, "round {round}");
    }
}

/// Four sessions reserve GCM invocation blocks of one key at once: the
/// blocks never overlap, cover 0..limit exactly, and stop at the limit;
/// another key has its own count.
fn gcm_reservations_stop_at_the_limit_and_never_overlap(f: &Fresh) {
    const LIMIT: u64 = 1000;
    let print = [7u8; 16];
    let location = Arc::new(f.location.clone());
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let location = Arc::clone(&location);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> Result<Vec<(u64, u64)>, StoreError> {
                let s = Store::open_at(&location)?;
                barrier.wait();
                let mut got = Vec::new();
                loop {
                    let r = s.reserve_gcm(&print, None, 7 + t * 10, LIMIT, 1)?;
                    if r.granted == 0 {
                        return Ok(got);
                    }
                    got.push((r.start, r.granted));
                }
            })
        })
        .collect();
    let mut blocks: Vec<(u64, u64)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap().unwrap())
        .collect();
    blocks.sort();
    let mut next = 0;
    for (start, n) in &blocks {
        assert_eq!(*start, next, "{blocks:?}");
        next += n;
    }
    assert_eq!(next, LIMIT);
    let s = f.open();
    let r = s.reserve_gcm(&print, None, 5, LIMIT, 2).unwrap();
    assert_eq!(
        r,
        gcm::Reservation {
            start: LIMIT,
            granted: 0
        }
    );
    // A higher limit (another process's configuration) grants more.
    let r = s.reserve_gcm(&print, None, 5, LIMIT + 3, 2).unwrap();
    assert_eq!(
        r,
        gcm::Reservation {
            start: LIMIT,
            granted: 3
        }
    );
    let r = s.reserve_gcm(&[8; 16], None, 5, LIMIT, 2).unwrap();
    assert_eq!(
        r,
        gcm::Reservation {
            start: 0,
            granted: 5
        }
    );
}

/// A DEK that reserved shows its key's count in the listing (a copy of
/// the same key material, too, once it reserved); the unused end of the
/// last block can be given back, an earlier one cannot.
fn gcm_counts_are_listed_and_the_last_block_given_back(f: &Fresh) {
    let s = f.open();
    s.insert(&row(1)).unwrap();
    s.insert(&row(2)).unwrap();
    let count = |s: &Store, n: u8| {
        s.list_for_admin()
            .unwrap()
            .into_iter()
            .find(|l| l.id == row(n).id)
            .unwrap()
            .gcm_invocations
    };
    assert_eq!(count(&s, 1), None);
    let print = [3u8; 16];
    let a = s
        .reserve_gcm(&print, Some(&row(1).id), 100, 1 << 32, 5)
        .unwrap();
    assert_eq!(
        a,
        gcm::Reservation {
            start: 0,
            granted: 100
        }
    );
    assert_eq!((count(&s, 1), count(&s, 2)), (Some(100), None));
    let b = s
        .reserve_gcm(&print, Some(&row(2).id), 50, 1 << 32, 6)
        .unwrap();
    assert_eq!(b.start, 100);
    assert_eq!((count(&s, 1), count(&s, 2)), (Some(150), Some(150)));
    // a's block is not the last one: it stays reserved.
    assert!(!s.return_gcm(&print, 40, 100, 7).unwrap());
    assert!(s.return_gcm(&print, 120, 150, 7).unwrap());
    assert_eq!(count(&s, 1), Some(120));
    assert_eq!(
        s.reserve_gcm(&print, None, 10, 1 << 32, 8).unwrap().start,
        120
    );
    // A soft-deleted DEK is not listed; its count stays with the key.
    assert!(s.soft_delete(&row(2).id, 0).unwrap());
    assert_eq!(count(&s, 1), Some(130));
}

/// The ids the feed names after `after`, and the position reached.
fn changed(s: &Store, after: i64) -> (Vec<[u8; 16]>, i64) {
    match s.changes_since(after, 1000).unwrap() {
        Changes::Since { ids, upto } => (ids, upto),
        gap => panic!("a gap after {after}: {gap:?}"),
    }
}

/// Made, changed, soft-deleted, recovered, re-wrapped, purged and deleted:
/// each is one change of its row, in order, seen from another session.
/// Uses (`last_used`) and GCM reservations are not changes.
fn every_change_to_a_row_is_in_the_feed_and_uses_are_not(f: &Fresh) {
    let s = f.open();
    let other = f.open();
    assert_eq!(s.change_position().unwrap(), 0);
    assert_eq!(changed(&other, 0), (vec![], 0));
    s.add_kek_version("kek-main", 1, "aes256", true).unwrap();
    s.insert_many(&[row(1), row(2)]).unwrap();
    s.insert(&row(3)).unwrap();
    let (ids, p) = changed(&other, 0);
    assert_eq!(ids, vec![row(1).id, row(2).id, row(3).id]);
    assert_eq!(p, s.change_position().unwrap());

    s.touch_last_used(&row(1).id, 5).unwrap();
    s.reserve_gcm(&[7; 16], Some(&row(1).id), 10, 1 << 32, 5)
        .unwrap();
    assert_eq!(changed(&other, p), (vec![], p), "uses are not changes");

    s.update(&row(1).id, b"l", b"c", b"a", b"r", "kek-main", 1, None)
        .unwrap();
    s.soft_delete(&row(2).id, 0).unwrap();
    s.recover(&row(2).id).unwrap();
    s.add_kek_version("kek-main", 2, "aes256", true).unwrap();
    s.replace_records("kek-main", &[(row(3).id, 0, vec![1; 70], 2)])
        .unwrap();
    s.soft_delete(&row(3).id, 0).unwrap();
    assert_eq!(s.purge(&row(3).id, 1).unwrap(), Ok(()));
    s.delete(&row(1).id).unwrap();
    let (ids, q) = changed(&other, p);
    let (r1, r2, r3) = (row(1).id, row(2).id, row(3).id);
    assert_eq!(ids, vec![r1, r2, r2, r3, r3, r3, r1]);
    assert_eq!(q, other.change_position().unwrap());
    assert!(q > p);
}

/// A reader takes the feed a page at a time; once the changes it has not
/// read are pruned (or the store is not the one its position came from),
/// it is told it fell behind, with the position to carry on from.
fn the_feed_is_read_in_pages_and_tells_a_reader_it_fell_behind(f: &Fresh) {
    let s = f.open();
    for n in 1..=5 {
        s.insert(&row(n)).unwrap();
    }
    let end = s.change_position().unwrap();
    let Changes::Since { ids, upto } = s.changes_since(0, 2).unwrap() else {
        panic!("gap");
    };
    assert_eq!(ids, vec![row(1).id, row(2).id]);
    let (rest, last) = changed(&s, upto);
    assert_eq!(rest, vec![row(3).id, row(4).id, row(5).id]);
    assert_eq!(last, end);

    s.prune_changes(upto).unwrap();
    assert_eq!(
        changed(&s, upto).0.len(),
        3,
        "the reader at the prune point"
    );
    assert_eq!(
        s.changes_since(upto - 1, 10).unwrap(),
        Changes::Gap { upto: end },
        "a reader behind the prune point"
    );
    assert_eq!(
        s.changes_since(end + 10, 10).unwrap(),
        Changes::Gap { upto: end },
        "a position this store never reached"
    );
    // Everything pruned: the position stays where it was, and grows on.
    s.prune_changes(end).unwrap();
    assert_eq!(s.change_position().unwrap(), end);
    assert_eq!(changed(&s, end), (vec![], end));
    s.prune_changes(1).unwrap();
    assert_eq!(s.change_position().unwrap(), end, "a prune never goes back");
    s.insert(&row(6)).unwrap();
    assert_eq!(changed(&s, end).0, vec![row(6).id]);
}

/// Writers on several sessions at once, and a reader taking the feed as it
/// grows: the reader sees every change exactly once (a position it has
/// read past is never filled in later).
fn the_feed_follows_commit_order_with_concurrent_writers(f: &Fresh) {
    let location = Arc::new(f.location.clone());
    f.open();
    let writers: Vec<_> = (0..3u8)
        .map(|t| {
            let location = Arc::clone(&location);
            std::thread::spawn(move || {
                let s = Store::open_at(&location).unwrap();
                for i in 0..150u16 {
                    let mut r = row(0);
                    r.id[0] = t;
                    r.id[1..3].copy_from_slice(&i.to_be_bytes());
                    s.insert(&r).unwrap();
                    if i % 3 == 0 {
                        s.update(&r.id, b"u", b"", b"a", b"r", "kek-main", 1, None)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    let reader = f.open();
    let mut seen = Vec::new();
    let mut at = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        let (ids, upto) = changed(&reader, at);
        seen.extend(ids);
        at = upto;
    }
    for w in writers {
        w.join().unwrap();
    }
    seen.extend(changed(&reader, at).0);
    assert_eq!(seen.len(), 3 * (150 + 50));
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), 3 * 150);
}

/// `list_page` walks the live rows in id order, a page at a time.
fn pages_walk_every_live_row_in_id_order(f: &Fresh) {
    let s = f.open();
    let rows: Vec<DekRow> = (1..=7).rev().map(row).collect();
    s.insert_many(&rows).unwrap();
    s.soft_delete(&row(4).id, 0).unwrap();
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = s.list_page(after.as_ref(), 3).unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        walked.extend(page.into_iter().map(|r| r.id[0]));
    }
    assert_eq!(walked, vec![1, 2, 3, 5, 6, 7]);
}

/// PostgreSQL only: a server restarted under an open store. The call that
/// meets the dropped session fails with a store error; the next one opens a
/// new session and finds everything as it was.
#[test]
fn postgresql_a_restarted_server_is_reconnected() {
    let f = postgresql();
    let s = f.open();
    s.insert(&row(1)).unwrap();
    let cluster = pg::PgCluster::shared();
    cluster.stop_server();
    let e = s.get(&row(1).id).unwrap_err();
    assert!(matches!(e, StoreError::Postgres(_)), "{e:?}");
    // While it is down, every call fails (a new session cannot be made).
    assert!(s.get(&row(1).id).is_err());
    cluster.start_server();
    assert_eq!(s.get(&row(1).id).unwrap(), Some(row(1)));
    s.insert(&row(2)).unwrap();
    assert_eq!(s.list().unwrap().len(), 2);
}

/// PostgreSQL only: a version 1 database (as the first release of this
/// engine made it) migrates to the current version, and a database from a
/// newer build is refused, naming both versions and never the password.
#[test]
fn postgresql_the_schema_migrates_forward_and_refuses_the_future() {
    let cluster = pg::PgCluster::shared();
    let url = cluster.create_database();
    {
        let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        c.batch_execute("CREATE TABLE meta (key text PRIMARY KEY, value bigint)")
            .unwrap();
        c.batch_execute(super::postgresql::tests::SCHEMA_V1_FOR_TESTS)
            .unwrap();
        c.batch_execute("INSERT INTO meta VALUES ('schema_version', 1)")
            .unwrap();
    }
    let location = Location::Postgres(crate::store::postgresql::Url::parse(&url).unwrap());
    let s = Store::open_at(&location).unwrap();
    s.insert(&row(1)).unwrap();
    let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    let indexes: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('dek_label', 'dek_ckaid')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(indexes, 2);
    let version: i64 = c
        .query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, crate::store::postgresql::SCHEMA_VERSION);

    c.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'schema_version'",
        &[],
    )
    .unwrap();
    match Store::open_at(&location) {
        Err(
            e @ StoreError::Schema {
                found, supported, ..
            },
        ) => {
            assert_eq!((found, supported), (version + 1, version));
            assert!(e.to_string().contains(&location.to_string()), "{e}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened a future schema"),
    }
}

/// PostgreSQL only: a search by label or CKA_ID walks its index even right
/// after a bulk insert, before autovacuum has gathered statistics (the
/// index on deleted rows must not look attractive for live ones).
#[test]
fn postgresql_find_walks_the_label_and_ckaid_indexes() {
    let cluster = pg::PgCluster::shared();
    let url = cluster.create_database();
    let s = Store::open_at(&Location::Postgres(
        crate::store::postgresql::Url::parse(&url).unwrap(),
    ))
    .unwrap();
    let rows: Vec<DekRow> = (0..5000u32)
        .map(|i| {
            let mut r = row(0);
            r.id[..4].copy_from_slice(&i.to_be_bytes());
            r.label = format!("dek-{i}").into_bytes();
            r.ckaid = i.to_be_bytes().to_vec();
            r
        })
        .collect();
    s.insert_many(&rows).unwrap();
    let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    for (column, index) in [("label", "dek_label"), ("ckaid", "dek_ckaid")] {
        let plan: Vec<String> = c
            .query(
                &format!(
                    "EXPLAIN SELECT id FROM dek WHERE {column} = '\\x00'::bytea \
                     AND deleted_at IS NULL ORDER BY id"
                ),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{plan}");
        assert!(
            !plan.contains("dek_deleted") && !plan.contains("Seq Scan"),
            "{plan}"
        );
    }
}

mod copy;
/// The PostgreSQL engine over TLS (a build with TLS only).
#[cfg(feature = "aws-lc")]
mod tls;
