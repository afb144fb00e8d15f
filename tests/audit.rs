//! The tamper-evident audit log (src/audit) with its checkpoints signed on
//! SoftHSM2 by the `audit-hmac` key that softhsm-config/new-token.sh makes.
//! The library is driven directly (the PKCS#11 hooks are tested with the
//! module). Each test runs in its own process (cargo nextest) with its own
//! token.

mod common;

use hsm_envelope::hex::encode as hex;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::{CKR_OK, CKR_PIN_INCORRECT, CKR_USER_NOT_LOGGED_IN};
use hsm_envelope::audit::{
    self, checkpoint_message, hsm, Audit, CheckpointSigner, CheckpointVerifier, Context, Entry,
    HsmMac, Op, Report,
};

const HMAC_LABEL: &str = "audit-hmac";

/// SoftHSM2 loaded directly, and a logged-in session on the test token.
fn hsm_session() -> (Pkcs11, Session) {
    let p = init_pkcs11(&softhsm_module_path());
    let s = user_session(&p, token_slot(&p));
    (p, s)
}

/// Another session on the token; logs in unless the application already is
/// (the login belongs to the application, not the session).
fn session(p: &Pkcs11) -> Session {
    let s = p.open_rw_session(token_slot(p)).unwrap();
    match s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => s,
        Err(e) => panic!("C_Login: {e}"),
    }
}

/// An HMAC signer/verifier on its own session.
fn mac(p: &Pkcs11, label: &str) -> HsmMac {
    HsmMac::from_session(session(p), label)
}

fn open(path: &Path, every: u32, signer: HsmMac) -> Audit {
    Audit::open(
        path,
        Context {
            token: TOKEN_LABEL.into(),
        },
        (every, Duration::from_secs(300)),
        Duration::from_secs(60),
        Some(Box::new(signer)),
    )
    .expect("Audit::open")
}

fn lines_of(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn json(line: &[u8]) -> serde_json::Value {
    serde_json::from_slice(line)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// Writes a log of every kind of entry with a checkpoint every 4 lines.
fn write_sample(path: &Path, p: &Pkcs11) -> Vec<Vec<u8>> {
    let a = open(path, 4, mac(p, HMAC_LABEL));
    let id = [0x42u8; 16];
    a.record(Entry::new(Op::Login, CKR_OK));
    a.record(Entry::new(Op::Login, CKR_PIN_INCORRECT));
    a.record(Entry::new(Op::KekCreate, CKR_OK).kek_version(1));
    a.record(
        Entry::new(Op::DekCreate, CKR_OK)
            .key(&id, "payroll \"2024\"\n".as_bytes())
            .kek_version(1),
    );
    a.record(
        Entry::new(Op::KekRotate, CKR_OK)
            .kek_version(2)
            .detail("1 -> 2"),
    );
    a.record(Entry::new(Op::KekSetPrimary, CKR_OK).kek_version(2));
    a.record(Entry::new(Op::KekImport, CKR_OK).kek_version(3));
    a.record(Entry::new(Op::Rewrap, CKR_OK).kek_version(2).count(17));
    a.record(
        Entry::new(Op::DekDestroy, CKR_OK)
            .key(&id, b"payroll")
            .kek_version(2),
    );
    a.record(
        Entry::new(Op::DekRecover, CKR_OK)
            .key(&id, b"payroll")
            .kek_version(2),
    );
    a.record(Entry::new(Op::Revoked, CKR_OK).kek_version(1));
    a.record(Entry::new(Op::OutageStart, cryptoki_sys::CKR_DEVICE_ERROR));
    a.record(Entry::new(Op::OutageEnd, CKR_OK));
    a.record(Entry::new(Op::KekDestroyVersion, CKR_OK).kek_version(1));
    a.record(Entry::new(Op::DekPurge, CKR_OK).key(&id, b"payroll"));
    a.record(
        Entry::new(
            Op::GcmLimit,
            hsm_envelope::vendor::CKR_HSME_INVOCATION_LIMIT,
        )
        .key(&id, b"payroll")
        .kek_version(2)
        .count(1000),
    );
    for _ in 0..3 {
        a.count_use(&id, b"payroll", 2);
    }
    // Several HSMs (any-of, all-of): which took part, counted.
    a.count_unwrap("hsms=main,b");
    a.record(Entry::new(Op::Logout, CKR_OK));
    a.flush();
    let s = a.stats();
    assert_eq!((s.errors, s.checkpoint_failures), (0, 0), "{s:?}");
    lines_of(path)
}

fn verify_with_hsm(path: &Path, p: &Pkcs11) -> Report {
    audit::verify(path, &mac(p, HMAC_LABEL)).expect("verify")
}

/// Writes `lines` to a new file beside `path` and verifies it.
fn verify_lines(path: &Path, name: &str, lines: &[Vec<u8>], p: &Pkcs11) -> Report {
    let q = path.with_file_name(name);
    std::fs::write(&q, lines.concat()).unwrap();
    verify_with_hsm(&q, p)
}

fn first_bad(r: &Report) -> (u64, String) {
    let bad = r
        .first_bad
        .clone()
        .unwrap_or_else(|| panic!("expected a bad line: {r}"));
    (bad.line, bad.reason)
}

fn log_path(t: &TestToken) -> PathBuf {
    t.path().join("audit.log")
}

#[test]
fn the_hmac_key_is_on_the_token_sensitive_and_signs() {
    let _t = TestToken::new();
    let (_p, s) = hsm_session();
    let key = hsm::find_key(&s, HMAC_LABEL).expect("audit-hmac key");
    let wanted = [
        AttributeType::Class,
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Id,
        AttributeType::Token,
        AttributeType::Private,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::AlwaysSensitive,
        AttributeType::NeverExtractable,
        AttributeType::Sign,
        AttributeType::Verify,
    ];
    let attrs = s.get_attributes(key, &wanted).unwrap();
    assert_eq!(attrs.len(), wanted.len(), "{attrs:?}");
    for a in &attrs {
        match a {
            Attribute::Class(c) => assert_eq!(*c, ObjectClass::SECRET_KEY),
            Attribute::KeyType(k) => assert_eq!(*k, KeyType::GENERIC_SECRET),
            Attribute::ValueLen(n) => assert_eq!(u64::from(*n), 32),
            Attribute::Id(id) => assert_eq!(id.as_slice(), &[0x02]),
            Attribute::Extractable(b) => assert!(!*b, "CKA_EXTRACTABLE"),
            Attribute::Token(b)
            | Attribute::Private(b)
            | Attribute::Sensitive(b)
            | Attribute::AlwaysSensitive(b)
            | Attribute::NeverExtractable(b)
            | Attribute::Sign(b)
            | Attribute::Verify(b) => assert!(*b, "{a:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let info = s.get_attribute_info(key, &[AttributeType::Value]).unwrap();
    assert!(
        matches!(info.as_slice(), [AttributeInfo::Sensitive]),
        "{info:?}"
    );
    // Exactly one key labelled kek is still there (new-token.sh's check).
    let keks = s
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(keks.len(), 1);

    // HMAC-SHA256 on the HSM: 32 bytes, deterministic, key-dependent.
    let m = HsmMac::from_session(s, HMAC_LABEL);
    let a = m.sign(b"message").unwrap();
    assert_eq!(a.len(), 32);
    assert_eq!(a, m.sign(b"message").unwrap());
    assert_ne!(a, m.sign(b"messagf").unwrap());
    assert!(m.verify(b"message", &a).unwrap());
    assert!(!m.verify(b"messagf", &a).unwrap());
    assert!(!m.verify(b"message", &a[..31]).unwrap());
}

#[test]
fn a_log_with_hsm_checkpoints_verifies() {
    let t = TestToken::new();
    let (p, _s) = hsm_session();
    let path = log_path(&t);
    let lines = write_sample(&path, &p);
    let r = verify_with_hsm(&path, &p);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.lines as usize, lines.len());
    assert!(r.checkpoints >= 4, "{r}");
    assert_eq!(r.unauthenticated_tail, 0, "flush ends with a checkpoint");

    // The line format.
    let mut prev = "0".repeat(64);
    let mut ops = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        assert!(l.ends_with(b"\n") && !l[..l.len() - 1].contains(&b'\n'));
        let v = json(l);
        assert_eq!(v["seq"], i as u64 + 1);
        assert_eq!(v["prev"], prev.as_str());
        prev = sha256_hex(&l[..l.len() - 1]);
        let time = v["time"].as_str().unwrap();
        assert!(
            time.len() == 20 && time.ends_with('Z') && &time[10..11] == "T",
            "{time}"
        );
        assert!(v["unix"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["uid"], unsafe { libc::getuid() });
        assert_eq!(v["token"], TOKEN_LABEL);
        ops.push(v["op"].as_str().unwrap().to_string());
        if v["op"] == "checkpoint" {
            assert_eq!(v["mac"].as_str().unwrap().len(), 64);
        }
    }
    for op in Op::ALL {
        assert!(ops.iter().any(|o| o == op.name()), "no {} line", op.name());
    }
    let dek = lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["op"] == "dek_create")
        .unwrap();
    assert_eq!(dek["key_id"], "42".repeat(16));
    assert_eq!(
        dek["label"], "payroll \"2024\"\n",
        "labels are escaped, not mangled"
    );
    assert_eq!(dek["kek_version"], 1);
    assert_eq!(dek["result"], "ok");
    let failed = lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["op"] == "login")
        .unwrap();
    assert_eq!(failed["result"], "ok");
    let failed = lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["result"] == "CKR_PIN_INCORRECT")
        .expect("a failed login names its CKR_ code");
    assert_eq!(failed["op"], "login");

    // The checkpoint MAC is HMAC-SHA256 on the HSM over the chain head.
    let last = json(lines.last().unwrap());
    assert_eq!(last["op"], "checkpoint");
    let head: [u8; 32] = (0..32)
        .map(|i| u8::from_str_radix(&last["prev"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let msg = checkpoint_message(lines.len() as u64 - 1, &head);
    assert_eq!(
        hex(&mac(&p, HMAC_LABEL).sign(&msg).unwrap()),
        last["mac"].as_str().unwrap()
    );
}

#[test]
fn edits_removals_swaps_insertions_and_truncation_name_the_first_bad_line() {
    let t = TestToken::new();
    let (p, _s) = hsm_session();
    let path = log_path(&t);
    let lines = write_sample(&path, &p);
    assert!(lines.len() >= 16);
    // Line 3 (1-based) is a plain entry with its successor a plain entry.
    assert_ne!(json(&lines[2])["op"], "checkpoint");

    // One byte of line 3 changed ("kek_create" -> "kek_creatf" would not
    // parse; change a digit of its time instead).
    let mut ls = lines.clone();
    let i = ls[2].windows(7).position(|w| w == b"\"unix\":").unwrap() + 7;
    ls[2][i] = if ls[2][i] == b'1' { b'2' } else { b'1' };
    let r = verify_lines(&path, "edited.log", &ls, &p);
    let (line, why) = first_bad(&r);
    assert_eq!(line, 3, "{r}");
    assert!(why.contains("altered"), "{r}");

    // Line 6 deleted.
    let mut ls = lines.clone();
    ls.remove(5);
    let r = verify_lines(&path, "deleted.log", &ls, &p);
    assert_eq!(first_bad(&r).0, 6, "{r}");
    assert!(first_bad(&r).1.contains("removed"), "{r}");

    // Lines 2 and 3 swapped.
    let mut ls = lines.clone();
    ls.swap(1, 2);
    let r = verify_lines(&path, "swapped.log", &ls, &p);
    assert_eq!(first_bad(&r).0, 2, "{r}");
    assert!(first_bad(&r).1.contains("order"), "{r}");

    // A line inserted at 7 (a copy of line 1).
    let mut ls = lines.clone();
    ls.insert(6, lines[0].clone());
    let r = verify_lines(&path, "inserted.log", &ls, &p);
    assert_eq!(first_bad(&r).0, 7, "{r}");
    assert!(first_bad(&r).1.contains("inserted"), "{r}");

    // Truncated in the middle of line 9.
    let mut bytes = lines[..8].concat();
    bytes.extend_from_slice(&lines[8][..lines[8].len() / 2]);
    let q = path.with_file_name("truncated.log");
    std::fs::write(&q, &bytes).unwrap();
    let r = verify_with_hsm(&q, &p);
    assert_eq!(first_bad(&r).0, 9, "{r}");
    assert!(first_bad(&r).1.contains("incomplete"), "{r}");
    assert_eq!(r.lines, 9);

    // The original still verifies.
    assert!(verify_with_hsm(&path, &p).is_ok());
}

#[test]
fn forged_checkpoints_fail() {
    let t = TestToken::new();
    let (p, s) = hsm_session();
    let path = log_path(&t);
    let lines = write_sample(&path, &p);
    let ckpt = lines
        .iter()
        .position(|l| json(l)["op"] == "checkpoint")
        .unwrap();

    // A checkpoint whose MAC was changed.
    let mut ls = lines.clone();
    let text = String::from_utf8(ls[ckpt].clone()).unwrap();
    let m = json(&ls[ckpt])["mac"].as_str().unwrap().to_string();
    let flipped: String = m
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 10 {
                if c == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                c
            }
        })
        .collect();
    ls[ckpt] = text.replace(&m, &flipped).into_bytes();
    let r = verify_lines(&path, "mac.log", &ls, &p);
    assert_eq!(first_bad(&r).0, ckpt as u64 + 1, "{r}");
    assert!(first_bad(&r).1.contains("HMAC"), "{r}");

    // The log rewritten (a failed login turned into a success) and the
    // whole chain recomputed, checkpoints signed with another key on the
    // same HSM: consistent under that key, rejected under the audit key.
    assert!(
        hsm::ensure_key(&s, "forger").unwrap(),
        "made the forger's key"
    );
    let forger = mac(&p, "forger");
    let mut prev = [0u8; 32];
    let mut forged = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let mut v = json(l);
        if v["result"] == "CKR_PIN_INCORRECT" {
            v["result"] = "ok".into();
        }
        v["prev"] = hex(&prev).into();
        if v["op"] == "checkpoint" {
            let msg = checkpoint_message(i as u64, &prev);
            v["mac"] = hex(&forger.sign(&msg).unwrap()).into();
        }
        let bytes = serde_json::to_vec(&v).unwrap();
        use sha2::Digest;
        prev = sha2::Sha256::digest(&bytes).into();
        forged.push([bytes.as_slice(), b"\n"].concat());
    }
    let q = path.with_file_name("forged.log");
    std::fs::write(&q, forged.concat()).unwrap();
    assert!(
        audit::verify(&q, &forger).unwrap().is_ok(),
        "the forgery is self-consistent"
    );
    let r = verify_with_hsm(&q, &p);
    assert_eq!(first_bad(&r).0, ckpt as u64 + 1, "{r}");
    assert!(first_bad(&r).1.contains("HMAC"), "{r}");
}

#[test]
fn dek_use_is_logged_as_one_count_per_dek() {
    let t = TestToken::new();
    let (p, _s) = hsm_session();
    let path = log_path(&t);
    let a = open(&path, 100, mac(&p, HMAC_LABEL));
    let id = [7u8; 16];
    for _ in 0..1000 {
        a.count_use(&id, b"busy", 3);
    }
    assert!(lines_of(&path).is_empty(), "no line per call");
    a.flush();
    let lines = lines_of(&path);
    assert_eq!(lines.len(), 2, "one dek_use line and a checkpoint");
    let v = json(&lines[0]);
    assert_eq!(v["op"], "dek_use");
    assert_eq!(v["count"], 1000);
    assert_eq!(v["key_id"], hex(&id));
    assert_eq!(v["label"], "busy");
    assert_eq!(v["kek_version"], 3);
    assert_eq!(json(&lines[1])["op"], "checkpoint");
    // Nothing pending: another flush adds nothing.
    a.flush();
    assert_eq!(lines_of(&path).len(), 2);
    assert!(verify_with_hsm(&path, &p).is_ok());
}

const PER_WRITER: usize = 60;

/// The child side of [`processes_append_concurrently`]: says it is ready,
/// waits for the go file so that all writers run at once, then appends.
fn child_writes(path: &Path, writer: &str) {
    let p = init_pkcs11(&softhsm_module_path());
    let a = open(path, 7, mac(&p, HMAC_LABEL));
    let dir = path.parent().unwrap();
    std::fs::write(dir.join(format!("ready-{writer}")), b"").unwrap();
    let go = dir.join("go");
    let start = std::time::Instant::now();
    while !go.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no go file");
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 0..PER_WRITER {
        let detail = format!("{writer}-{i}");
        a.record(Entry::new(Op::DekCreate, CKR_OK).detail(&detail));
    }
    a.flush();
    let s = a.stats();
    assert_eq!((s.errors, s.checkpoint_failures), (0, 0), "{s:?}");
    println!("CHILD-DONE {writer}");
}

#[test]
fn processes_append_concurrently() {
    if let (Some(path), Some(writer)) = (
        std::env::var_os("HSME_AUDIT_CHILD_LOG"),
        std::env::var("HSME_AUDIT_CHILD_WRITER").ok(),
    ) {
        return child_writes(Path::new(&path), &writer);
    }
    let t = TestToken::new();
    let path = log_path(&t);
    // One child at a time up to ready: SoftHSM2 processes that initialize at
    // once on one token directory sometimes find no token there (its file
    // store; seen 2 runs in 7 under load). The appends after `go` are what
    // must run at once.
    let mut children = Vec::new();
    for w in ["c1", "c2"] {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["processes_append_concurrently", "--exact", "--nocapture"])
            .env("HSME_AUDIT_CHILD_LOG", &path)
            .env("HSME_AUDIT_CHILD_WRITER", w)
            .env("SOFTHSM2_CONF", &t.softhsm_conf)
            .env("HSM_ENVELOPE_CONF", &t.conf)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while !t.path().join(format!("ready-{w}")).exists() {
            assert!(start.elapsed() < Duration::from_secs(60), "{w} not ready");
            // A child that ended before it was ready says why, at once.
            if let Ok(Some(_)) = child.try_wait() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "{w} ended before it was ready ({}): {}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        children.push(child);
    }
    std::fs::write(t.path().join("go"), b"").unwrap();
    child_writes(&path, "parent");
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-DONE"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (p, _s) = hsm_session();
    let r = verify_with_hsm(&path, &p);
    assert!(r.is_ok(), "{r}");
    assert_eq!(r.unauthenticated_tail, 0, "{r}");
    let lines: Vec<_> = lines_of(&path).iter().map(|l| json(l)).collect();
    let entries: Vec<_> = lines.iter().filter(|v| v["op"] == "dek_create").collect();
    assert_eq!(entries.len(), 3 * PER_WRITER);
    for w in ["parent", "c1", "c2"] {
        for i in 0..PER_WRITER {
            let d = format!("{w}-{i}");
            assert_eq!(
                entries.iter().filter(|v| v["detail"] == d.as_str()).count(),
                1,
                "{d}"
            );
        }
    }
    let pids: std::collections::BTreeSet<u64> =
        entries.iter().map(|v| v["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 3, "three processes wrote");
    let order: Vec<u64> = entries.iter().map(|v| v["pid"].as_u64().unwrap()).collect();
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches > 2,
        "the writers did not run at once: {switches} switches"
    );
    assert_eq!(r.lines as usize, lines.len());
}

#[test]
fn the_log_never_holds_key_values_or_the_pin() {
    let t = TestToken::new();
    let (p, s) = hsm_session();
    // A DEK-like AES key with a known value on the HSM.
    let value: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let key = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Value(value.clone()),
            Attribute::Label(b"secret-dek".to_vec()),
            Attribute::Id(vec![9; 16]),
        ])
        .unwrap();
    let path = log_path(&t);
    let a = open(&path, 2, mac(&p, HMAC_LABEL));
    a.record(Entry::new(Op::Login, CKR_OK));
    a.record(Entry::new(Op::Login, CKR_PIN_INCORRECT));
    a.record(
        Entry::new(Op::DekCreate, CKR_OK)
            .key(&[9; 16], b"secret-dek")
            .kek_version(1),
    );
    for _ in 0..10 {
        a.count_use(&[9; 16], b"secret-dek", 1);
    }
    a.record(Entry::new(Op::DekDestroy, CKR_OK).key(&[9; 16], b"secret-dek"));
    a.record(Entry::new(Op::Logout, CKR_OK));
    a.flush();
    s.destroy_object(key).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let upper = hex(&value).to_uppercase();
    for needle in [value.clone(), hex(&value).into_bytes(), upper.into_bytes()] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
            "key value found in the log"
        );
    }
    // Half the key is not there either (no partial dumps).
    assert!(!text.contains(&hex(&value[..16])));
    // The PIN appears in no field (hashes, MACs and ids are hex digests and
    // may contain any digits; numbers are times and pids).
    for line in text.lines() {
        let v = json(line.as_bytes());
        for (k, f) in v.as_object().unwrap() {
            assert!(!k.to_lowercase().contains("pin"), "field {k}");
            if let Some(s) = f.as_str() {
                if !matches!(k.as_str(), "prev" | "mac" | "key_id") {
                    assert!(!s.contains(USER_PIN) && !s.contains(SO_PIN), "{k}: {s}");
                }
            }
        }
    }
    assert!(verify_with_hsm(&path, &p).is_ok());
}

#[test]
fn ensure_key_makes_a_sign_only_key_once() {
    let _t = TestToken::new();
    let (_p, s) = hsm_session();
    assert!(
        !hsm::ensure_key(&s, HMAC_LABEL).unwrap(),
        "new-token.sh made it"
    );
    assert!(hsm::ensure_key(&s, "audit-2").unwrap());
    assert!(!hsm::ensure_key(&s, "audit-2").unwrap());
    let k = hsm::find_key(&s, "audit-2").unwrap();
    let attrs = s
        .get_attributes(
            k,
            &[
                AttributeType::Sign,
                AttributeType::Verify,
                AttributeType::Encrypt,
                AttributeType::Extractable,
                AttributeType::Sensitive,
                AttributeType::Private,
            ],
        )
        .unwrap();
    assert_eq!(
        attrs,
        vec![
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Extractable(false),
            Attribute::Sensitive(true),
            Attribute::Private(true),
        ]
    );
}

#[test]
fn a_missing_key_or_logged_out_session_never_fails_the_caller() {
    let t = TestToken::new();
    let (p, s) = hsm_session();
    let e = hsm::find_key(&s, "no-such-key").unwrap_err().to_string();
    assert!(e.contains("no-such-key") && e.contains("not found"), "{e}");

    // A log with a checkpoint, for verify below.
    let signed = t.path().join("signed.log");
    let a = open(&signed, 1, mac(&p, HMAC_LABEL));
    a.record(Entry::new(Op::Login, CKR_OK));
    assert_eq!(a.stats().checkpoints, 1);

    // No such key: lines are written, checkpoints fail and are counted.
    let path = log_path(&t);
    let a = open(&path, 1, mac(&p, "no-such-key"));
    a.record(Entry::new(Op::Login, CKR_OK));
    a.flush();
    let st = a.stats();
    assert_eq!((st.lines, st.checkpoints, st.errors), (1, 0, 0), "{st:?}");
    assert!(st.checkpoint_failures >= 1);

    // Logged out (the login is the application's, for all its sessions):
    // the private key cannot be found; the caller is not failed.
    let logged_out = HsmMac::from_session(p.open_ro_session(token_slot(&p)).unwrap(), HMAC_LABEL);
    s.logout().unwrap();
    let e = logged_out.sign(b"x").unwrap_err().to_string();
    assert!(e.contains("not found"), "{e}");
    let a = open(&path, 1, logged_out);
    a.record(Entry::new(Op::Logout, CKR_USER_NOT_LOGGED_IN));
    a.flush();
    let st = a.stats();
    assert_eq!((st.lines, st.checkpoints, st.errors), (1, 0, 0), "{st:?}");
    assert_eq!(lines_of(&path).len(), 2);

    // verify cannot check a checkpoint without the key: an error, not a verdict.
    let e = audit::verify(&signed, &mac(&p, "no-such-key")).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    assert!(verify_with_hsm(&signed, &p).is_ok());
}
