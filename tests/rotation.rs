//! KEK rotation and re-wrap, end to end: the module in running processes,
//! the admin tool `hsm-envelope` as the operator runs it, SoftHSM2 behind.
//!
//! Child processes are this test binary run again with `HSME_ROLE` naming
//! their part (as `a_second_process_finds_and_uses_the_dek` in
//! envelope_core.rs does). Each test runs in its own process (cargo
//! nextest) with its own token.
//!
//! Waiting for refresh_secs is moving the module clock (`advance_clock`),
//! not sleeping; see [`REFRESH`].

mod common;

use hsm_envelope::hex::encode as hex;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cli::{cli_cmd, show};
use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use serde_json::Value;

const CKA_HSME_KEK_VERSION: u64 = 0xC845_0001;
const CKR_HSME_KEK_UNAVAILABLE: u64 = 0xC845_0001;
/// Selects a child's part; unset in the test itself.
const ROLE: &str = "HSME_ROLE";
/// refresh_secs of these tests: long enough that real time never reaches it
/// during a test (so a process keeps its view of the primary version until
/// a test moves the module clock past it), and shorter than the default
/// cache_soft_ttl_secs (60 s), so that moving the clock past it does not
/// also expire the cached DEKs.
const REFRESH: Duration = Duration::from_secs(30);

fn refresh_config() -> String {
    format!("refresh_secs = {}\n", REFRESH.as_secs())
}

// ---------------------------------------------------------------------------
// helpers

/// Runs the tool with `--json`; expects `want` as exit code.
fn cli_json_expect(t: &TestToken, args: &[&str], want: i32) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let o = cli_cmd(t, &all).output().expect("run hsm-envelope");
    assert_eq!(
        o.status.code(),
        Some(want),
        "hsm-envelope {all:?}:\n{}",
        show(&o)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{}", show(&o)))
}

fn cli_json(t: &TestToken, args: &[&str]) -> Value {
    cli_json_expect(t, args, 0)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// This test binary, run again for one test in a child role.
fn child(test: &str, role: &str, conf: &Path, t: &TestToken) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(ROLE, role)
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_CONF", conf)
        .stdin(Stdio::null());
    c
}

fn kek_version(s: &Session, h: ObjectHandle) -> u64 {
    let kv = s
        .get_attributes(h, &[AttributeType::VendorDefined(CKA_HSME_KEK_VERSION)])
        .expect("CKA_HSME_KEK_VERSION");
    match &kv[..] {
        [Attribute::VendorDefined((_, v))] => {
            u64::from_ne_bytes(v.as_slice().try_into().expect("a CK_ULONG"))
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn find_label(s: &Session, label: &[u8]) -> ObjectHandle {
    let h = s
        .find_objects(&[Attribute::Label(label.to_vec())])
        .expect("C_FindObjects");
    assert_eq!(
        h.len(),
        1,
        "one object labelled {:?}",
        String::from_utf8_lossy(label)
    );
    h[0]
}

fn relogin(s: &Session) {
    s.logout().expect("C_Logout");
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("C_Login");
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Row KEK versions by label, from `hsm-envelope dek list --json`.
fn row_versions(t: &TestToken) -> HashMap<String, u64> {
    cli_json(t, &["dek", "list"])["deks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["label"].as_str().unwrap().to_string(),
                d["kek_version"].as_u64().unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// (a) rotation while another process keeps encrypting and decrypting

const ROTATION_TEST: &str = "rotation_reaches_a_running_process_without_a_failure";
/// Starts the child's report lines.
const MARK: &str = "@hsme ";

/// The child keeps making token DEKs, encrypting with them and decrypting
/// what it encrypted before, printing `DEK <n> <start ms> <KEK version>` per
/// DEK, until the stop file appears. When the advance file appears it moves
/// its module clock forward by refresh_secs, once, and prints `ADVANCED <n>`
/// (`n`: the next DEK's number). After the stop file it logs out and in
/// again (no cached values left) and decrypts everything once more, through
/// the HSM.
fn rotation_child() {
    let stop = PathBuf::from(std::env::var_os("HSME_STOP").expect("HSME_STOP"));
    let advance = PathBuf::from(std::env::var_os("HSME_ADVANCE").expect("HSME_ADVANCE"));
    let mut advanced = false;
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    // (label, handle, IV, ciphertext, plaintext) of every DEK made.
    type Made = (Vec<u8>, ObjectHandle, [u8; 12], Vec<u8>, Vec<u8>);
    let mut made: Vec<Made> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut out = std::io::stdout().lock();
    let mut i = 0u32;
    while !stop.exists() {
        assert!(Instant::now() < deadline, "never told to stop");
        if !advanced && advance.exists() {
            advance_clock(REFRESH);
            advanced = true;
            writeln!(out, "\n{MARK}ADVANCED {i}").unwrap();
            out.flush().unwrap();
        }
        let started = now_ms();
        let label = format!("c{i}").into_bytes();
        let dek = s
            .generate_key(
                &cryptoki::mechanism::Mechanism::AesKeyGen,
                &aes_template(
                    true,
                    vec![
                        Attribute::ValueLen(32.into()),
                        Attribute::Label(label.clone()),
                    ],
                ),
            )
            .unwrap_or_else(|e| panic!("C_GenerateKey #{i}: {e}"));
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&i.to_be_bytes());
        let msg = format!("message number {i}").into_bytes();
        let ct = gcm_encrypt(&s, dek, &iv, b"rot", &msg)
            .unwrap_or_else(|e| panic!("encrypt with DEK #{i}: {e}"));
        let version = kek_version(&s, dek);
        // The newest ones and a few of the oldest (made under v1).
        let n = made.len();
        for (_, h, iv, ct, msg) in made
            .iter()
            .take(5)
            .chain(made.iter().skip(n.saturating_sub(20)))
        {
            let pt = gcm_decrypt(&s, *h, iv, b"rot", ct)
                .unwrap_or_else(|e| panic!("decrypt an old ciphertext at #{i}: {e}"));
            assert_eq!(&pt, msg);
        }
        // libtest may have written "test ... " on this line already.
        writeln!(out, "\n{MARK}DEK {i} {started} {version}").unwrap();
        out.flush().unwrap();
        made.push((label, dek, iv, ct, msg));
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    // Everything again, unwrapped on the HSM from the stored records (old
    // ones under v1, re-wrapped lazily on the way).
    relogin(&s);
    for (label, _, iv, ct, msg) in &made {
        let h = find_label(&s, label);
        let pt = gcm_decrypt(&s, h, iv, b"rot", ct)
            .unwrap_or_else(|e| panic!("decrypt after re-login: {e}"));
        assert_eq!(&pt, msg);
    }
    writeln!(out, "\n{MARK}FINAL {}", made.len()).unwrap();
}

/// The child's next report line (what follows [`MARK`]); None once its
/// stdout is closed or `until` has passed.
fn next_report(rx: &mpsc::Receiver<String>, until: Instant) -> Option<String> {
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        let line = rx.recv_timeout(left).ok()?;
        if let Some(report) = line.strip_prefix(MARK) {
            return Some(report.to_string());
        }
    }
}

#[test]
fn rotation_reaches_a_running_process_without_a_failure() {
    if std::env::var(ROLE).as_deref() == Ok("rotation-child") {
        return rotation_child();
    }
    let t = TestToken::with_extra_config(&refresh_config());
    let stop = t.path().join("stop");
    let advance = t.path().join("advance");
    let mut c = child(ROTATION_TEST, "rotation-child", &t.conf, &t)
        .env("HSME_STOP", &stop)
        .env("HSME_ADVANCE", &advance)
        .env("HSM_ENVELOPE_TEST_CLOCK", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = c.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let stderr = c.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    // Let the child make a few DEKs under v1 first.
    let mut seen = 0;
    let wait_until = Instant::now() + Duration::from_secs(60);
    while seen < 5 {
        match next_report(&rx, wait_until) {
            Some(r) if r.starts_with("DEK ") => seen += 1,
            Some(_) => {}
            None => {
                let _ = c.kill();
                panic!("the child made no DEKs: {}", err_reader.join().unwrap());
            }
        }
    }
    let rotate_started = now_ms();
    let rot = cli_json(&t, &["kek", "rotate"]);
    let rotated = now_ms();
    assert_eq!(rot["primary"], 2);
    // refresh_secs passes on the child's clock; then a few DEKs more.
    std::fs::write(&advance, b"").unwrap();
    let mut since_advance = None;
    let wait_until = Instant::now() + Duration::from_secs(60);
    while since_advance.is_none_or(|n| n < 3) {
        match next_report(&rx, wait_until) {
            Some(r) if r.starts_with("ADVANCED ") => since_advance = Some(0),
            Some(r) if r.starts_with("DEK ") => {
                if let Some(n) = since_advance.as_mut() {
                    *n += 1;
                }
            }
            Some(_) => {}
            None => {
                let _ = c.kill();
                panic!(
                    "the child stopped making DEKs after the rotation: {}",
                    err_reader.join().unwrap()
                );
            }
        }
    }
    std::fs::write(&stop, b"").unwrap();
    let status = c.wait().unwrap();
    let lines = reader.join().unwrap();
    let err = err_reader.join().unwrap();
    assert!(
        status.success(),
        "the child failed ({status}):\n{}\n{err}",
        lines.join("\n")
    );
    let deks: Vec<(u128, u64)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("{MARK}DEK ")))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    let fin = lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{MARK}FINAL ")));
    assert_eq!(fin, Some(deks.len().to_string().as_str()), "{lines:?}");
    assert!(
        deks.iter()
            .filter(|(t, _)| *t < rotate_started)
            .all(|(_, v)| *v == 1),
        "DEKs made before the rotation are under v1: {deks:?}"
    );
    assert!(
        deks.windows(2).all(|w| w[0].1 <= w[1].1),
        "once on v2, never back: {deks:?}"
    );
    // Until refresh_secs has passed on its clock the child trusts its view
    // (v1); every DEK begun after that is under v2, and there are some.
    let moved: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{MARK}ADVANCED ")))
        .expect("the child moved its clock")
        .parse()
        .unwrap();
    let (before, late) = deks.split_at(moved);
    assert!(
        before.iter().all(|(_, v)| *v == 1),
        "a DEK made within refresh_secs of the child's last look at the versions is not under v1: {deks:?}"
    );
    assert!(late.len() >= 3, "too few DEKs after the rotation: {deks:?}");
    assert!(
        late.iter().all(|(_, v)| *v == 2),
        "a DEK made once refresh_secs had passed after the rotation is not under v2: {deks:?}"
    );
    eprintln!(
        "{} DEKs; rotation took {} ms; {} DEKs before the child's clock passed refresh_secs, {} after",
        deks.len(),
        rotated - rotate_started,
        before.len(),
        late.len()
    );
}

// ---------------------------------------------------------------------------
// (b) re-wrap of many records, killed at random points, then finished

const REWRAP_TEST: &str = "rewrap_killed_at_random_points_then_finished_keeps_every_dek";

fn record_count() -> usize {
    std::env::var("HSME_REWRAP_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// The known value of DEK `i` (AES-128, so that the known-answer test below
/// uses the aes-gcm crate only for what it must).
fn value_of(i: u32) -> [u8; 16] {
    let mut v = [0u8; 16];
    for (k, b) in v.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> (k % 4 * 8)) as u8 ^ (k as u8).wrapping_mul(37);
    }
    v
}

fn iv_of(i: u32) -> [u8; 12] {
    let mut iv = [0x5a; 12];
    iv[8..].copy_from_slice(&i.to_be_bytes());
    iv
}

fn msg_of(i: u32) -> Vec<u8> {
    format!("record {i}: known plaintext").into_bytes()
}

/// Verifier child: every DEK `r<i>` decrypts ciphertext `i` of the file,
/// through the module, from its stored record (a fresh process: nothing
/// cached), and is under KEK v2.
fn verify_all_child() {
    let file = std::env::var("HSME_CIPHERTEXTS").expect("HSME_CIPHERTEXTS");
    let cts: Vec<Vec<u8>> = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(unhex)
        .collect();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let all = s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap();
    let mut by_label = HashMap::new();
    for h in all {
        if let [Attribute::Label(l)] = &s.get_attributes(h, &[AttributeType::Label]).unwrap()[..] {
            by_label.insert(l.clone(), h);
        }
    }
    let mut checked = 0;
    for (i, ct) in cts.iter().enumerate() {
        let i = i as u32;
        let h = *by_label
            .get(format!("r{i}").as_bytes())
            .unwrap_or_else(|| panic!("DEK r{i} not found"));
        assert_eq!(kek_version(&s, h), 2, "DEK r{i}");
        let pt = gcm_decrypt(&s, h, &iv_of(i), b"", ct)
            .unwrap_or_else(|e| panic!("DEK r{i} does not decrypt its ciphertext: {e}"));
        assert_eq!(pt, msg_of(i), "DEK r{i}");
        checked += 1;
    }
    println!("VERIFIED {checked}");
}

#[test]
fn rewrap_killed_at_random_points_then_finished_keeps_every_dek() {
    if std::env::var(ROLE).as_deref() == Ok("verify-all") {
        return verify_all_child();
    }
    rewrap_killed_at_random_points(TestToken::new(), REWRAP_TEST);
}

/// The same on a PostgreSQL store: every batch a transaction there too.
#[test]
fn rewrap_killed_at_random_points_on_postgresql_keeps_every_dek() {
    if std::env::var(ROLE).as_deref() == Ok("verify-all") {
        return verify_all_child();
    }
    let cluster = common::pg::PgCluster::shared();
    let url = cluster.create_database();
    let t = TestToken::with_extra_config(&format!("store_url = \"{url}\"\n"));
    rewrap_killed_at_random_points(
        t,
        "rewrap_killed_at_random_points_on_postgresql_keeps_every_dek",
    );
}

fn rewrap_killed_at_random_points(t: TestToken, test: &str) {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let n = record_count();
    let started = Instant::now();
    let ct_file = t.path().join("ciphertexts.hex");
    {
        let p = ours();
        let s = user_session(&p, token_slot(&p));
        let mut lines = String::with_capacity(n * 100);
        for i in 0..n as u32 {
            let dek = import(
                &s,
                &value_of(i),
                true,
                vec![Attribute::Label(format!("r{i}").into_bytes())],
            );
            let ct = gcm_encrypt(&s, dek, &iv_of(i), b"", &msg_of(i)).unwrap();
            if i % 1000 == 0 {
                // Known answer: the module's AES-GCM is the standard one.
                let k = aes_gcm::Aes128Gcm::new_from_slice(&value_of(i)).unwrap();
                let want = k
                    .encrypt(
                        (&iv_of(i)).into(),
                        Payload {
                            msg: &msg_of(i),
                            aad: b"",
                        },
                    )
                    .unwrap();
                assert_eq!(ct, want, "DEK r{i}");
            }
            lines.push_str(&hex(&ct));
            lines.push('\n');
        }
        std::fs::write(&ct_file, lines).unwrap();
        p.finalize().unwrap();
    }
    let made_in = started.elapsed();
    eprintln!("{n} token DEKs made through the module in {made_in:.1?}");

    let rot = cli_json(&t, &["kek", "rotate"]);
    assert_eq!(rot["pending_rewrap"], n as u64);

    // Kill -9 at random points, several times: each run is killed a random
    // 20-400 ms after it has logged in and counted its work (its first
    // stderr line), i.e. somewhere in the middle of its batches. Rounds go
    // on (up to 10) until 4 runs were killed and at least one of them had
    // committed something.
    let mut pending = n as u64;
    let mut killed = 0;
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).unwrap();
    let mut rnd = u64::from_le_bytes(seed) | 1;
    let mut delays = Vec::new();
    for round in 0..10 {
        if killed >= 4 && pending < n as u64 {
            break;
        }
        rnd ^= rnd << 13;
        rnd ^= rnd >> 7;
        rnd ^= rnd << 17;
        let delay = Duration::from_millis(20 + rnd % 380);
        let mut run: Child = cli_cmd(&t, &["rewrap", "--batch", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = run.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        // Started (or finished: the sender is dropped at its exit).
        let _ = rx.recv_timeout(Duration::from_secs(30));
        std::thread::sleep(delay);
        match run.try_wait().unwrap() {
            Some(status) => {
                // It finished before the kill: the rest of the test still holds.
                eprintln!("round {round}: finished before the kill ({status})");
                assert!(status.success());
            }
            None => {
                run.kill().unwrap(); // SIGKILL
                let status = run.wait().unwrap();
                assert!(!status.success());
                killed += 1;
            }
        }
        let now = cli_json(&t, &["status"])["pending_rewrap"]
            .as_u64()
            .unwrap();
        assert!(now <= pending, "pending went up: {pending} -> {now}");
        delays.push((delay, pending - now));
        pending = now;
        if pending == 0 {
            break;
        }
    }
    eprintln!("killed {killed} run(s); (delay, records re-wrapped): {delays:?}");
    assert!(
        killed >= 3 || pending == 0,
        "the runs could not be interrupted"
    );
    assert!(
        pending < n as u64,
        "the killed runs made no progress at all"
    );

    // Run to completion: it carries on with what is left.
    let done = cli_json(&t, &["rewrap", "--batch", "100"]);
    assert_eq!(done["pending_before"], pending);
    assert_eq!(done["rewrapped"], pending);
    assert_eq!(done["skipped"], 0);
    assert_eq!(done["remaining"], 0);
    assert_eq!(done["primary"], 2);
    // A second run changes nothing.
    let again = cli_json(&t, &["rewrap", "--batch", "100"]);
    assert_eq!(again["rewrapped"], 0);
    assert_eq!(again["pending_before"], 0);
    let list = cli_json(&t, &["kek", "list"]);
    assert_eq!(list["versions"][0]["records"], 0);
    assert_eq!(list["versions"][1]["records"], n as u64);

    // Every DEK decrypts its old ciphertext, in a fresh process.
    let o = child(test, "verify-all", &t.conf, &t)
        .env("HSME_CIPHERTEXTS", &ct_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "verifier failed:\n{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("VERIFIED {n}")),
        "{}",
        show(&o)
    );
    eprintln!("whole test: {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// (c) lazy re-wrap on use

fn lazy_rewrap_case(lazy: bool) {
    let t = TestToken::with_extra_config(&format!("{}lazy_rewrap = {lazy}\n", refresh_config()));
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let old = generate(&s, true, vec![Attribute::Label(b"old".to_vec())]);
    let untouched = generate(&s, true, vec![Attribute::Label(b"untouched".to_vec())]);
    let ct = gcm_encrypt(&s, old, &[1; 12], b"", b"before the rotation").unwrap();
    assert_eq!(kek_version(&s, old), 1);
    assert_eq!(kek_version(&s, untouched), 1);
    let rot = cli_json(&t, &["kek", "rotate"]);
    assert_eq!(rot["pending_rewrap"], 2);
    // Until refresh_secs has passed this process has not seen the rotation:
    // a use unwraps the record on the HSM (no cached value after the
    // re-login) but, v1 being primary in its view, leaves the row.
    relogin(&s);
    let old = find_label(&s, b"old");
    let pt = gcm_decrypt(&s, old, &[1; 12], b"", &ct).unwrap();
    assert_eq!(pt, b"before the rotation");
    assert_eq!(row_versions(&t)["old"], 1, "re-wrapped within refresh_secs");
    // This process notices the rotation within refresh_secs.
    advance_clock(REFRESH);
    // No cached value: the next use unwraps the stored record on the HSM.
    relogin(&s);
    let old = find_label(&s, b"old");
    assert_eq!(kek_version(&s, old), 1, "not re-wrapped before use");
    let pt = gcm_decrypt(&s, old, &[1; 12], b"", &ct).unwrap();
    assert_eq!(pt, b"before the rotation");

    let rows = row_versions(&t);
    assert_eq!(rows["untouched"], 1, "a DEK not used stays where it was");
    if lazy {
        assert_eq!(rows["old"], 2, "used after the rotation: moved to v2");
        // Seen through the module once the row is read again.
        let old = find_label(&s, b"old");
        assert_eq!(kek_version(&s, old), 2);
        assert_eq!(cli_json(&t, &["status"])["pending_rewrap"], 1);
    } else {
        assert_eq!(rows["old"], 1, "lazy_rewrap = false leaves the row");
        assert_eq!(cli_json(&t, &["status"])["pending_rewrap"], 2);
    }
    // Either way the data still decrypts, again from the store.
    relogin(&s);
    let old = find_label(&s, b"old");
    let pt = gcm_decrypt(&s, old, &[1; 12], b"", &ct).unwrap();
    assert_eq!(pt, b"before the rotation");
}

#[test]
fn lazy_rewrap_moves_a_used_dek_to_the_new_version() {
    lazy_rewrap_case(true);
}

#[test]
fn lazy_rewrap_off_leaves_a_used_dek_where_it_is() {
    lazy_rewrap_case(false);
}

// ---------------------------------------------------------------------------
// (d) min_decrypt_version

const MIN_TEST: &str = "min_decrypt_version_refuses_records_under_older_versions";

fn min_decrypt_child() {
    let ct_old = unhex(&std::env::var("HSME_CT_OLD").unwrap());
    let ct_new = unhex(&std::env::var("HSME_CT_NEW").unwrap());
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let old = find_label(&s, b"old");
    let new = find_label(&s, b"new");
    let e = gcm_decrypt(&s, old, &[1; 12], b"", &ct_old).expect_err("v1 is below the cut-off");
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE));
    let e = gcm_encrypt(&s, old, &[3; 12], b"", b"x").expect_err("encrypt too");
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE));
    let pt = gcm_decrypt(&s, new, &[2; 12], b"", &ct_new).unwrap();
    assert_eq!(pt, b"under v2");
    // New DEKs work as usual.
    let d = generate(&s, true, vec![]);
    assert_eq!(kek_version(&s, d), 2);
    println!("CHILD-OK");
}

#[test]
fn min_decrypt_version_refuses_records_under_older_versions() {
    if std::env::var(ROLE).as_deref() == Ok("min-decrypt") {
        return min_decrypt_child();
    }
    let t = TestToken::with_extra_config(&refresh_config());
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let old = generate(&s, true, vec![Attribute::Label(b"old".to_vec())]);
    let ct_old = gcm_encrypt(&s, old, &[1; 12], b"", b"under v1").unwrap();
    cli_json(&t, &["kek", "rotate"]);
    advance_clock(REFRESH);
    let new = generate(&s, true, vec![Attribute::Label(b"new".to_vec())]);
    assert_eq!(kek_version(&s, new), 2);
    let ct_new = gcm_encrypt(&s, new, &[2; 12], b"", b"under v2").unwrap();
    p.finalize().unwrap();

    let cut = t.path().join("cut-off.toml");
    std::fs::write(
        &cut,
        format!("{}min_decrypt_version = 2\n", t.config_text()),
    )
    .unwrap();
    let o = child(MIN_TEST, "min-decrypt", &cut, &t)
        .env("HSME_CT_OLD", hex(&ct_old))
        .env("HSME_CT_NEW", hex(&ct_new))
        .output()
        .unwrap();
    assert!(o.status.success(), "child failed:\n{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("CHILD-OK"));
    // The refused record was not touched (no lazy re-wrap of what cannot open).
    assert_eq!(row_versions(&t)["old"], 1);

    // Under the cut-off, the tool cannot open v1 records either: rewrap
    // leaves them, says so and exits 1.
    let mut c = cli_cmd(&t, &["rewrap", "--json"]);
    c.env("HSM_ENVELOPE_CONF", &cut);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["skipped"], 1);
    assert_eq!(doc["remaining"], 1);
    // Without it, the same record re-wraps, and opens under the cut-off after.
    let doc = cli_json(&t, &["rewrap"]);
    assert_eq!(doc["rewrapped"], 1);
    assert_eq!(row_versions(&t)["old"], 2);
}

// ---------------------------------------------------------------------------
// Known src bugs, as tests that pass once they are fixed (run them with
// `cargo nextest run --test rotation --run-ignored all`).

/// A lazy re-wrap writes the new record to the store but leaves the
/// process's own copy of the DEK (record and row generation) behind, so the
/// next C_SetAttributeValue through the same handle loses its own optimistic
/// concurrency check and answers CKR_FUNCTION_FAILED (and
/// CKA_HSME_KEK_VERSION still reports the old version) until a
/// C_FindObjectsInit reloads the row.
#[test]
fn a_lazily_rewrapped_dek_can_still_be_changed_through_its_handle() {
    let t = TestToken::with_extra_config(&refresh_config());
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    generate(&s, true, vec![Attribute::Label(b"d".to_vec())]);
    cli_json(&t, &["kek", "rotate"]);
    advance_clock(REFRESH);
    relogin(&s);
    let d = find_label(&s, b"d");
    gcm_encrypt(&s, d, &[1; 12], b"", b"x").unwrap(); // re-wrapped here
    assert_eq!(row_versions(&t)["d"], 2);
    assert_eq!(
        kek_version(&s, d),
        2,
        "the handle's view of its KEK version"
    );
    s.update_attributes(d, &[Attribute::Label(b"renamed".to_vec())])
        .expect("C_SetAttributeValue after a lazy re-wrap");
}

/// A token DEK's handle keeps the record it was loaded with. After
/// `hsm-envelope rewrap` in another process and `kek destroy-version` of
/// the old version, a use that is not served from the cache (here: a public
/// DEK after C_Logout/C_Login; likewise a handle found but not used before
/// the re-wrap) unwraps the stale in-memory record, whose KEK version is
/// gone: CKR_HSME_KEK_UNAVAILABLE, although the store holds a good record.
/// Only a C_FindObjectsInit (which reloads changed rows) repairs it.
#[test]
fn a_held_handle_survives_rewrap_and_destroy_of_its_old_version() {
    let t = TestToken::with_extra_config(&refresh_config());
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let d = generate(
        &s,
        true,
        vec![Attribute::Label(b"pub".to_vec()), Attribute::Private(false)],
    );
    let ct = gcm_encrypt(&s, d, &[1; 12], b"", b"x").unwrap();
    cli_json(&t, &["kek", "rotate"]);
    assert_eq!(cli_json(&t, &["rewrap"])["rewrapped"], 1);
    // v1 may be destroyed once refresh_secs (+1 s) has passed since it was
    // retired; the tool's clock moves with ours (cli_cmd).
    advance_clock(REFRESH + Duration::from_secs(1));
    cli_json(&t, &["kek", "destroy-version", "1"]);
    relogin(&s); // drops cached values; a public DEK keeps its handle
    let pt = gcm_decrypt(&s, d, &[1; 12], b"", &ct).expect("decrypt with the held handle");
    assert_eq!(pt, b"x");
}
