//! Unit tests of the writer and the verifier with a software MAC (the HSM
//! signer is tested in tests/audit.rs).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cryptoki_sys::{CKR_DEVICE_ERROR, CKR_OK, CKR_PIN_INCORRECT};
use sha2::{Digest, Sha256};

use super::verify::verify_reader;
use super::*;

/// A keyed hash standing in for HMAC on the HSM.
#[derive(Clone)]
struct SoftMac {
    key: u8,
    broken: Arc<AtomicBool>,
}

impl SoftMac {
    fn new(key: u8) -> Self {
        SoftMac {
            key,
            broken: Arc::new(AtomicBool::new(false)),
        }
    }
    fn mac(&self, msg: &[u8]) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update([self.key]);
        h.update(msg);
        h.finalize().to_vec()
    }
}

impl CheckpointSigner for SoftMac {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(Error::Rv(CKR_DEVICE_ERROR));
        }
        Ok(self.mac(msg))
    }
}

impl CheckpointVerifier for SoftMac {
    fn verify(&self, msg: &[u8], mac: &[u8]) -> Result<bool> {
        Ok(self.mac(msg) == mac)
    }
}

fn ctx() -> Context {
    Context {
        token: "tok".into(),
    }
}

fn open(path: &Path, every: u32, signer: Option<SoftMac>) -> Audit {
    Audit::open(
        path,
        ctx(),
        (every, Duration::from_secs(3600)),
        Duration::from_secs(3600),
        signer.map(|s| Box::new(s) as Box<dyn CheckpointSigner>),
    )
    .unwrap()
}

fn check(bytes: &[u8], key: u8) -> Report {
    verify_reader(bytes, &SoftMac::new(key)).unwrap()
}

/// For a test that moves the module clock: true in a child process that
/// runs only the test `name` (this binary again, started with
/// HSM_ENVELOPE_TEST_CLOCK=1), where the test body then runs; false in the
/// parent, which runs that child and asserts it passed. The clock cannot be
/// moved in the parent, which `cargo test` shares between tests.
fn in_clock_child(name: &str) -> bool {
    const CHILD: &str = "HSME_UNIT_CLOCK_CHILD";
    if std::env::var(CHILD).as_deref() == Ok(name) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, name)
        .env("HSM_ENVELOPE_TEST_CLOCK", "1")
        .env_remove("HSM_ENVELOPE_TEST_CLOCK_OFFSET_MS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in a child process: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

fn lines_of(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn json(line: &[u8]) -> serde_json::Value {
    serde_json::from_slice(line).unwrap()
}

/// 10 entries with a checkpoint every 3 lines, and a final flush:
/// lines 1-3, ckpt 4, 5-7, ckpt 8, 9-11, ckpt 12, 13, ckpt 14.
fn sample(path: &Path) -> Vec<Vec<u8>> {
    let a = open(path, 3, Some(SoftMac::new(1)));
    for i in 0..10u32 {
        let label = format!("dek-{i}");
        a.record(
            Entry::new(Op::DekCreate, CKR_OK)
                .key(&[i as u8; 16], label.as_bytes())
                .kek_version(1),
        );
    }
    a.flush();
    assert_eq!(
        a.stats(),
        Stats {
            lines: 14,
            checkpoints: 4,
            errors: 0,
            checkpoint_failures: 0
        }
    );
    lines_of(path)
}

fn bad_line(r: &Report) -> u64 {
    r.first_bad.as_ref().map_or(0, |b| b.line)
}

#[test]
fn a_written_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let lines = sample(&p);
    assert_eq!(lines.len(), 14);
    let r = verify(&p, &SoftMac::new(1)).unwrap();
    assert_eq!(
        r,
        Report {
            lines: 14,
            checkpoints: 4,
            first_bad: None,
            unauthenticated_tail: 0
        }
    );
    assert!(r.to_string().contains("intact"), "{r}");
    let first = json(&lines[0]);
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], "0".repeat(64));
    assert_eq!(first["token"], "tok");
    assert_eq!(first["label"], "dek-0");
    assert_eq!(first["key_id"], "00".repeat(16));
    assert_eq!(first["pid"], std::process::id());
    assert_eq!(json(&lines[3])["op"], "checkpoint");
    assert_eq!(json(&lines[13])["op"], "checkpoint");
    // Flushing again adds nothing: the last line is a checkpoint.
    let a = open(&p, 3, Some(SoftMac::new(1)));
    a.flush();
    assert_eq!(lines_of(&p).len(), 14);
    // A reopened log continues the chain.
    a.record(Entry::new(Op::Logout, CKR_OK));
    let r = verify(&p, &SoftMac::new(1)).unwrap();
    assert_eq!((r.lines, r.unauthenticated_tail, r.is_ok()), (15, 1, true));
}

#[test]
fn wrong_verifier_key_fails_at_the_first_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    sample(&p);
    let r = verify(&p, &SoftMac::new(2)).unwrap();
    assert_eq!(bad_line(&r), 4, "{r}");
    assert!(r.to_string().contains("HMAC"), "{r}");
}

#[test]
fn tampering_names_the_first_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let lines = sample(&p);
    let join = |ls: &[Vec<u8>]| ls.concat();
    let reason = |r: &Report| r.first_bad.clone().unwrap().reason;

    // One byte of line 6's label.
    let mut ls = lines.clone();
    let i = ls[5].windows(5).position(|w| w == b"dek-4").unwrap();
    ls[5][i + 4] = b'X';
    let r = check(&join(&ls), 1);
    assert_eq!(bad_line(&r), 6, "{r}");
    assert!(reason(&r).contains("altered"), "{r}");

    // One byte of line 6's prev.
    let mut ls = lines.clone();
    let i = ls[5].windows(8).position(|w| w == b"\"prev\":\"").unwrap() + 8;
    ls[5][i] = if ls[5][i] == b'0' { b'1' } else { b'0' };
    assert_eq!(bad_line(&check(&join(&ls), 1)), 6);

    // Line 6's sequence number.
    let s = String::from_utf8(lines[5].clone()).unwrap();
    let mut ls = lines.clone();
    ls[5] = s.replace("\"seq\":6,", "\"seq\":60,").into_bytes();
    let r = check(&join(&ls), 1);
    assert_eq!(bad_line(&r), 6, "{r}");
    assert!(reason(&r).contains("altered"), "{r}");

    // Line 6 made invalid JSON.
    let mut ls = lines.clone();
    ls[5][0] = b'[';
    assert_eq!(bad_line(&check(&join(&ls), 1)), 6);

    // Line 6 removed.
    let mut ls = lines.clone();
    ls.remove(5);
    let r = check(&join(&ls), 1);
    assert_eq!(bad_line(&r), 6, "{r}");
    assert!(reason(&r).contains("removed"), "{r}");

    // Line 1 removed.
    let r = check(&join(&lines[1..]), 1);
    assert_eq!(bad_line(&r), 1, "{r}");

    // Lines 6 and 7 swapped.
    let mut ls = lines.clone();
    ls.swap(5, 6);
    let r = check(&join(&ls), 1);
    assert_eq!(bad_line(&r), 6, "{r}");
    assert!(reason(&r).contains("wrong order"), "{r}");

    // Lines 2 and 9 swapped.
    let mut ls = lines.clone();
    ls.swap(1, 8);
    assert_eq!(bad_line(&check(&join(&ls), 1)), 2);

    // A copy of line 5 inserted after it.
    let mut ls = lines.clone();
    ls.insert(5, lines[4].clone());
    let r = check(&join(&ls), 1);
    assert_eq!(bad_line(&r), 6, "{r}");
    assert!(reason(&r).contains("inserted"), "{r}");

    // A well-formed forged line inserted as line 6 (right seq and prev).
    let forged = line::render(
        6,
        &line::line_hash(lines[4].strip_suffix(b"\n").unwrap()),
        &Stamp {
            unix: 1,
            pid: 1,
            uid: 0,
            token: "tok",
        },
        &Body {
            op: "dek_purge",
            ..Body::default()
        },
    )
    .unwrap();
    let mut ls = lines.clone();
    ls.insert(5, [forged.as_slice(), b"\n"].concat());
    let r = check(&join(&ls), 1);
    assert_eq!(bad_line(&r), 6, "{r}");
    assert!(reason(&r).contains("inserted"), "{r}");

    // A forged line inserted with a wrong prev.
    let mut ls = lines.clone();
    ls.insert(5, lines[0].clone());
    assert_eq!(bad_line(&check(&join(&ls), 1)), 6);

    // Cut mid-line 10.
    let mut ls = lines[..10].to_vec();
    ls[9].truncate(30);
    let r = check(&join(&ls), 1);
    assert_eq!(bad_line(&r), 10, "{r}");
    assert!(reason(&r).contains("incomplete"), "{r}");
    assert_eq!(r.lines, 10);

    // A checkpoint's MAC changed (line 8).
    let mut ls = lines.clone();
    let i = ls[7].windows(7).position(|w| w == b"\"mac\":\"").unwrap() + 7;
    ls[7][i] = if ls[7][i] == b'a' { b'b' } else { b'a' };
    let r = check(&join(&ls), 1);
    assert_eq!(bad_line(&r), 8, "{r}");
    assert!(reason(&r).contains("HMAC"), "{r}");

    // A checkpoint removed entirely: the next line breaks the chain.
    let mut ls = lines.clone();
    ls.remove(7);
    assert_eq!(bad_line(&check(&join(&ls), 1)), 8);

    // Dropping the tail after the last checkpoint is not detectable, but
    // shows up as unauthenticated lines; cutting the final checkpoint too.
    let r = check(&join(&lines[..13]), 1);
    assert_eq!((r.is_ok(), r.lines, r.unauthenticated_tail), (true, 13, 1));
}

#[test]
fn a_rechained_log_with_the_wrong_key_fails_and_without_checkpoints_is_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let lines = sample(&p);
    // Alter line 2, then recompute every prev and checkpoint MAC.
    let evil = SoftMac::new(9);
    let mut out = Vec::new();
    let mut prev = line::ZERO_HASH;
    let mut stripped = Vec::new();
    let mut sprev = line::ZERO_HASH;
    for (i, l) in lines.iter().enumerate() {
        let mut v = json(l);
        if i == 1 {
            v["result"] = "CKR_PIN_INCORRECT".into();
        }
        v["prev"] = crate::hex::encode(&prev).into();
        if v["op"] == "checkpoint" {
            v["mac"] = crate::hex::encode(&evil.mac(&checkpoint_message(i as u64, &prev))).into();
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        prev = line::line_hash(&bytes);
        out.extend_from_slice(&bytes);
        out.push(b'\n');
        // The same, dropping the checkpoints.
        if v["op"] != "checkpoint" {
            let mut w = v.clone();
            w["seq"] = (stripped.iter().filter(|&&b| b == b'\n').count() + 1).into();
            w["prev"] = crate::hex::encode(&sprev).into();
            let bytes = serde_json::to_vec(&w).unwrap();
            sprev = line::line_hash(&bytes);
            stripped.extend_from_slice(&bytes);
            stripped.push(b'\n');
        }
    }
    assert_eq!(
        bad_line(&check(&out, 9)),
        0,
        "consistent under the forger's key"
    );
    let r = check(&out, 1);
    assert_eq!(bad_line(&r), 4, "{r}");
    let r = check(&stripped, 1);
    assert_eq!(
        (r.is_ok(), r.checkpoints, r.unauthenticated_tail),
        (true, 0, 10)
    );
}

#[test]
fn use_is_counted_not_logged_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let a = open(&p, 100, Some(SoftMac::new(1)));
    for _ in 0..1000 {
        a.count_use(&[5; 16], b"hot", 2);
    }
    a.count_use(&[6; 16], b"cold", 2);
    assert!(
        !p.exists() || lines_of(&p).is_empty(),
        "nothing before the interval ends"
    );
    a.flush();
    let lines = lines_of(&p);
    assert_eq!(lines.len(), 3, "two dek_use lines and a checkpoint");
    let hot = json(&lines[0]);
    assert_eq!(hot["op"], "dek_use");
    assert_eq!(hot["count"], 1000);
    assert_eq!(hot["key_id"], "05".repeat(16));
    assert_eq!(hot["label"], "hot");
    assert_eq!(hot["kek_version"], 2);
    assert!(hot["since"].as_u64().unwrap() <= hot["unix"].as_u64().unwrap());
    assert_eq!(json(&lines[1])["count"], 1);
    assert!(verify(&p, &SoftMac::new(1)).unwrap().is_ok());
}

#[test]
fn use_counts_are_written_when_the_interval_passes() {
    if !in_clock_child("audit::tests::use_counts_are_written_when_the_interval_passes") {
        return;
    }
    let interval = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let a = Audit::open(&p, ctx(), (100, Duration::from_secs(3600)), interval, None).unwrap();
    for _ in 0..10 {
        a.count_use(&[1; 16], b"x", 1);
    }
    assert!(lines_of(&p).is_empty(), "written within the interval");
    assert!(crate::clock::advance(interval));
    a.count_use(&[1; 16], b"x", 1); // notices the interval is over
    let lines = lines_of(&p);
    assert_eq!(lines.len(), 1);
    assert_eq!(json(&lines[0])["count"], 11);
    drop(a); // nothing pending: nothing written
    assert_eq!(lines_of(&p).len(), 1);
}

#[test]
fn drop_writes_pending_counts_without_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let a = open(&p, 1, Some(SoftMac::new(1)));
    a.count_use(&[1; 16], b"x", 1);
    drop(a);
    let lines = lines_of(&p);
    assert_eq!(lines.len(), 1);
    assert_eq!(json(&lines[0])["op"], "dek_use");
}

#[test]
fn signer_failures_are_counted_and_a_later_checkpoint_covers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let signer = SoftMac::new(1);
    let a = open(&p, 2, Some(signer.clone()));
    signer.broken.store(true, Ordering::Relaxed);
    for _ in 0..5 {
        a.record(Entry::new(Op::Login, CKR_PIN_INCORRECT));
    }
    let s = a.stats();
    assert_eq!((s.lines, s.checkpoints, s.errors), (5, 0, 0));
    assert_eq!(s.checkpoint_failures, 1, "retried only after a pause");
    signer.broken.store(false, Ordering::Relaxed);
    a.flush();
    let r = verify(&p, &SoftMac::new(1)).unwrap();
    assert_eq!((r.lines, r.checkpoints, r.unauthenticated_tail), (6, 1, 0));
    assert_eq!(json(&lines_of(&p)[0])["result"], "CKR_PIN_INCORRECT");
}

#[test]
fn without_a_signer_everything_is_unauthenticated_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let a = open(&p, 1, None);
    a.record(Entry::new(Op::OutageStart, CKR_DEVICE_ERROR));
    a.record(Entry::new(Op::OutageEnd, CKR_OK).detail("back after 3 s"));
    a.flush();
    let r = verify(&p, &SoftMac::new(1)).unwrap();
    assert_eq!(
        (r.lines, r.checkpoints, r.unauthenticated_tail, r.is_ok()),
        (2, 0, 2, true)
    );
}

#[test]
fn appending_after_a_torn_line_keeps_logging_and_verify_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let a = open(&p, 100, None);
    a.record(Entry::new(Op::Login, CKR_OK));
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\":2,\"pr").unwrap();
    a.record(Entry::new(Op::Logout, CKR_OK));
    assert_eq!(a.stats().errors, 0);
    let lines = lines_of(&p);
    assert_eq!(lines.len(), 3);
    assert_eq!(json(&lines[2])["op"], "logout");
    let r = verify(&p, &SoftMac::new(1)).unwrap();
    assert_eq!(bad_line(&r), 2, "{r}");
}

#[test]
fn two_writers_on_one_file_keep_one_chain() {
    // Two Audit objects have two open file descriptions, so their flocks
    // exclude each other as two processes' would.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.log");
    let a = Arc::new(open(&p, 7, Some(SoftMac::new(1))));
    let b = Arc::new(open(&p, 5, Some(SoftMac::new(1))));
    let threads: Vec<_> = [a.clone(), b.clone(), a, b]
        .into_iter()
        .enumerate()
        .map(|(t, audit)| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    let d = format!("t{t}-{i}");
                    audit.record(Entry::new(Op::DekCreate, CKR_OK).detail(&d));
                }
                audit.flush();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = verify(&p, &SoftMac::new(1)).unwrap();
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.unauthenticated_tail, 0);
    let text = std::fs::read_to_string(&p).unwrap();
    for t in 0..4 {
        for i in 0..50 {
            assert_eq!(
                text.matches(&format!("\"t{t}-{i}\"")).count(),
                1,
                "t{t}-{i}"
            );
        }
    }
    assert_eq!(r.lines as usize - r.checkpoints as usize, 200);
}

#[test]
fn audit_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Audit>();
    shareable::<HsmMac>();
}

#[test]
fn op_names_round_trip() {
    for op in Op::ALL {
        assert_eq!(Op::from_name(op.name()), Some(op));
    }
    assert_eq!(Op::from_name("checkpoint"), None);
}

#[test]
fn open_fails_cleanly_on_a_bad_path() {
    let e = Audit::open(
        Path::new("/nonexistent-dir/audit.log"),
        ctx(),
        (1, Duration::from_secs(1)),
        Duration::from_secs(1),
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("audit_log") && e.contains("/nonexistent-dir"),
        "{e}"
    );
}

/// The audit log is created 0600 unless `audit_log_mode` says otherwise; an
/// existing file keeps its mode.
#[test]
fn a_new_audit_log_is_created_owner_only_unless_configured() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let p = dir.path().join("default.log");
    let a = open(&p, 10, None);
    a.record(Entry::new(Op::Login, CKR_OK));
    assert_eq!(mode(&p), 0o600);
    let q = dir.path().join("group.log");
    let cfg = crate::config::Config::from_toml(&format!(
        "audit_log = \"{}\"\naudit_log_mode = \"0640\"\n",
        q.display()
    ))
    .unwrap();
    let b = Audit::from_config(&cfg, None).unwrap().unwrap();
    b.record(Entry::new(Op::Login, CKR_OK));
    // umask may take bits away, never add them.
    assert_eq!(mode(&q) & !0o640, 0, "{:o}", mode(&q));
    assert_eq!(mode(&q) & 0o600, 0o600);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(a);
    let a = open(&p, 10, None);
    a.record(Entry::new(Op::Logout, CKR_OK));
    assert_eq!(mode(&p), 0o644);
}
