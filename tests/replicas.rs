//! More than one HSM, `kek_mode = "replicas"` (issue 13): two tokens of one
//! SoftHSM2 stand in for two HSMs holding the same KEK material. "main"
//! (the top-level keys) is reached through the fault-injecting backend
//! (examples/faulty_backend.rs), so a flag file takes it down mid-run;
//! member "b" is reached directly.
//!
//! The KEK is written with the same known value on both tokens (a test
//! stand-in for the BYOK import or a vendor's cloning): sensitive, never
//! extractable, as `kek_guard` and `backend::kek` require.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cli::{cli_json, ok_json};
use common::hsms::*;
use common::p11::*;
use common::*;
use cryptoki::error::RvError;

const CKR_HSME_HSM_UNAVAILABLE: u64 = 0xC845_0005;
const REPLICA_LABEL: &str = "replica-b";
const SOFT_TTL: Duration = Duration::from_secs(60);

/// Two HSMs: main (through the fault backend) and "b"; b's KEK is main's
/// when `same_kek`, else another value. Returns the token and the flag file
/// that takes main down.
fn two_hsms(same_kek: bool) -> (TestToken, PathBuf) {
    let t = TestToken::new();
    add_token(&t, REPLICA_LABEL);
    let kek: [u8; 32] = random_bytes(32).try_into().unwrap();
    let other: [u8; 32] = random_bytes(32).try_into().unwrap();
    {
        let hsm = init_pkcs11(&softhsm_module_path());
        put_kek(&user_session(&hsm, slot_labelled(&hsm, TOKEN_LABEL)), &kek);
        let b = user_session(&hsm, slot_labelled(&hsm, REPLICA_LABEL));
        put_kek(&b, if same_kek { &kek } else { &other });
        drop(b);
        hsm.finalize().unwrap();
    }
    let flag = faulty_backend_flag(&t, "main-down");
    let softhsm = format!("backend_module = \"{}\"", softhsm_module_path().display());
    let mut conf = t.config_text().replace(
        &softhsm,
        &format!("backend_module = \"{}\"", faulty_backend_path().display()),
    );
    conf += &format!(
        "cache_soft_ttl_secs = {}\n# one cached DEK: using another one unwraps it\ncache_max_keys = 1\n\
         kek_mode = \"replicas\"\n\n[[hsm]]\nname = \"b\"\n{softhsm}\ntoken_label = \"{REPLICA_LABEL}\"\n",
        SOFT_TTL.as_secs()
    );
    std::fs::write(&t.conf, conf).unwrap();
    (t, flag)
}

/// `n` token DEKs, each with its AES-GCM encryption of `data` under `iv`.
fn deks_with(
    s: &cryptoki::session::Session,
    n: usize,
    iv: &[u8; 12],
    data: &[u8],
) -> (Vec<cryptoki::object::ObjectHandle>, Vec<Vec<u8>>) {
    let deks: Vec<_> = (0..n).map(|_| generate(s, true, vec![])).collect();
    let cts = deks
        .iter()
        .map(|d| gcm_encrypt(s, *d, iv, b"", data).unwrap())
        .collect();
    (deks, cts)
}

fn log_text(t: &TestToken) -> String {
    std::fs::read_to_string(t.log_file()).unwrap_or_default()
}

#[test]
fn a_member_failing_mid_run_fails_over_without_an_application_error() {
    let (t, flag) = two_hsms(true);
    let doc = ok_json(&t, &["status"]);
    assert_eq!(doc["kek_mode"], "replicas");
    assert_eq!(
        member_states(&doc),
        [("main".into(), "up".into()), ("b".into(), "up".into())]
    );

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let iv = [7u8; 12];
    let (deks, cts) = deks_with(&s, 3, &iv, b"before");
    // With one cached DEK, each use of another one is an unwrap on the HSM.
    let start = Instant::now();
    assert_eq!(
        gcm_decrypt(&s, deks[0], &iv, b"", &cts[0]).unwrap(),
        b"before"
    );
    let healthy = start.elapsed();

    std::fs::write(&flag, b"down").unwrap();
    let start = Instant::now();
    assert_eq!(
        gcm_decrypt(&s, deks[1], &iv, b"", &cts[1]).expect("failed over to b"),
        b"before"
    );
    let first = start.elapsed();
    let start = Instant::now();
    assert_eq!(
        gcm_decrypt(&s, deks[2], &iv, b"", &cts[2]).unwrap(),
        b"before"
    );
    let next = start.elapsed();
    eprintln!(
        "unwrap with both members up: {healthy:?}; first after main died: {first:?}; next: {next:?}"
    );
    assert!(
        first < Duration::from_secs(1),
        "first unwrap after main died: {first:?}"
    );
    assert!(
        log_text(&t).contains("HSM member 'main' is down"),
        "{}",
        log_text(&t)
    );

    // New DEKs are still made (random bytes and the seal come from b).
    let new = generate(&s, true, vec![]);
    let ct = gcm_encrypt(&s, new, &iv, b"", b"during").unwrap();
    assert_eq!(
        gcm_decrypt(&s, deks[0], &iv, b"", &cts[0]).unwrap(),
        b"before"
    );
    assert_eq!(gcm_decrypt(&s, new, &iv, b"", &ct).unwrap(), b"during");

    // Main comes back: the next health check proves it agrees and uses it.
    std::fs::remove_file(&flag).unwrap();
    advance_clock(SOFT_TTL);
    assert_eq!(
        gcm_decrypt(&s, deks[1], &iv, b"", &cts[1]).unwrap(),
        b"before"
    );
    assert!(
        log_text(&t).contains("HSM member 'main' is up again"),
        "{}",
        log_text(&t)
    );
}

#[test]
fn a_replica_whose_kek_differs_is_refused_at_start() {
    let (t, flag) = two_hsms(false);
    let (_, doc) = cli_json(&t, &["status"]);
    assert_eq!(
        member_states(&doc),
        [("main".into(), "up".into()), ("b".into(), "refused".into())],
        "{doc:#}"
    );
    let why = doc["hsm_members"][1]["why"].as_str().unwrap();
    assert!(why.contains("holds different key material"), "{why}");

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    assert!(
        log_text(&t).contains("HSM member 'b' refused"),
        "{}",
        log_text(&t)
    );
    let dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").expect("main serves");

    // With main down only the refused member is left: it is never used.
    std::fs::write(&flag, b"down").unwrap();
    assert_eq!(
        new_dek_refused(&s),
        RvError::VendorDefined(CKR_HSME_HSM_UNAVAILABLE)
    );
}

#[test]
fn a_replica_unreachable_at_start_is_down_then_found_and_used() {
    let (t, flag) = two_hsms(true);
    // b's module is not there at start (an HSM client not installed yet, a
    // network HSM's library on a share that is down): a link to SoftHSM2
    // made later stands in for it coming back.
    let late_module = t.path().join("late-hsm-b.so");
    let softhsm = format!("backend_module = \"{}\"", softhsm_module_path().display());
    let conf = std::fs::read_to_string(&t.conf).unwrap();
    let at = conf.rfind(&softhsm).expect("b's backend_module line");
    let conf = format!(
        "{}backend_module = \"{}\"{}",
        &conf[..at],
        late_module.display(),
        &conf[at + softhsm.len()..]
    );
    std::fs::write(&t.conf, conf).unwrap();

    // The admin tool starts and shows b down, with the reason.
    let doc = ok_json(&t, &["status"]);
    assert_eq!(
        member_states(&doc),
        [("main".into(), "up".into()), ("b".into(), "down".into())],
        "{doc:#}"
    );
    let why = doc["hsm_members"][1]["why"].as_str().unwrap();
    assert!(why.contains("late-hsm-b.so"), "{why}");

    // The application starts and works on main alone.
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let iv = [3u8; 12];
    let (deks, cts) = deks_with(&s, 3, &iv, b"main only");
    assert_eq!(
        gcm_decrypt(&s, deks[0], &iv, b"", &cts[0]).unwrap(),
        b"main only"
    );
    let log = log_text(&t);
    // Once by this process (the admin tool's run above logged its own).
    let ours_down = format!("pid={} WARN HSM member 'b' is down", std::process::id());
    assert_eq!(log.matches(&ours_down).count(), 1, "logged once: {log}");

    // b appears; the next health check finds it and proves it agrees.
    std::os::unix::fs::symlink(softhsm_module_path(), &late_module).unwrap();
    advance_clock(SOFT_TTL);
    assert_eq!(
        gcm_decrypt(&s, deks[1], &iv, b"", &cts[1]).unwrap(),
        b"main only"
    );
    let log = log_text(&t);
    assert!(log.contains("HSM member 'b' found"), "{log}");
    assert!(log.contains("HSM member 'b' is up again"), "{log}");
    assert_eq!(log.matches(&ours_down).count(), 1, "logged once: {log}");

    // Proof that b is in use: with main down, no application error.
    std::fs::write(&flag, b"down").unwrap();
    assert_eq!(
        gcm_decrypt(&s, deks[2], &iv, b"", &cts[2]).expect("b serves"),
        b"main only"
    );
    let new = generate(&s, true, vec![]);
    let ct = gcm_encrypt(&s, new, &iv, b"", b"b only").unwrap();
    assert_eq!(gcm_decrypt(&s, new, &iv, b"", &ct).unwrap(), b"b only");
    std::fs::remove_file(&flag).unwrap();
}

#[test]
fn a_replica_whose_token_is_missing_at_start_is_down_and_the_module_starts() {
    let (t, _flag) = two_hsms(true);
    let conf = t
        .config_text()
        .replace(&format!("\"{REPLICA_LABEL}\""), "\"not-there-yet\"");
    std::fs::write(&t.conf, conf).unwrap();

    let doc = ok_json(&t, &["status"]);
    assert_eq!(
        member_states(&doc),
        [("main".into(), "up".into()), ("b".into(), "down".into())],
        "{doc:#}"
    );
    let why = doc["hsm_members"][1]["why"].as_str().unwrap();
    assert!(why.contains("no token labelled 'not-there-yet'"), "{why}");

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![]);
    let ct = gcm_encrypt(&s, dek, &[5; 12], b"", b"main serves").unwrap();
    assert_eq!(
        gcm_decrypt(&s, dek, &[5; 12], b"", &ct).unwrap(),
        b"main serves"
    );
    // Looked for again at the health check (run before serving the cached
    // DEK once the soft TTL has passed), still missing: no new line.
    advance_clock(SOFT_TTL);
    assert_eq!(
        gcm_decrypt(&s, dek, &[5; 12], b"", &ct).unwrap(),
        b"main serves"
    );
    let ours_down = format!("pid={} WARN HSM member 'b' is down", std::process::id());
    let log = log_text(&t);
    assert_eq!(log.matches(&ours_down).count(), 1, "{log}");
}

#[test]
fn a_member_that_hangs_costs_the_time_out_once_then_the_next_serves() {
    let (t, flag) = two_hsms(true);
    let timeout = Duration::from_millis(300);
    let conf = t.config_text().replace(
        "kek_mode = \"replicas\"",
        &format!(
            "hsm_timeout_ms = {}\nkek_mode = \"replicas\"",
            timeout.as_millis()
        ),
    );
    std::fs::write(&t.conf, conf).unwrap();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let iv = [4u8; 12];
    let (deks, cts) = deks_with(&s, 3, &iv, b"hang");

    // main's link hangs: its calls block (they would for ever).
    std::fs::write(&flag, b"hang").unwrap();
    let start = Instant::now();
    assert_eq!(
        gcm_decrypt(&s, deks[0], &iv, b"", &cts[0]).expect("b serves after the time-out"),
        b"hang"
    );
    let first = start.elapsed();
    let start = Instant::now();
    assert_eq!(
        gcm_decrypt(&s, deks[1], &iv, b"", &cts[1]).unwrap(),
        b"hang"
    );
    let next = start.elapsed();
    eprintln!("first unwrap with main hanging: {first:?}; next: {next:?}");
    assert!(
        first >= timeout,
        "{first:?}: the time-out was not waited for"
    );
    assert!(first < Duration::from_secs(10), "{first:?}");
    // main is skipped after it timed out: one time-out, not one per call
    // (counted in the log rather than timed: the machine may be busy).
    let log = log_text(&t);
    let ours = format!(
        "pid={} WARN HSM member 'main' did not answer within hsm_timeout_ms",
        std::process::id()
    );
    assert_eq!(log.matches(&ours).count(), 1, "{next:?}\n{log}");
    // New DEKs are made meanwhile (on b).
    let new = generate(&s, true, vec![]);
    gcm_encrypt(&s, new, &iv, b"", b"x").unwrap();

    // The link comes back: the hung call finishes in the background, and
    // main serves again after the next health check.
    std::fs::remove_file(&flag).unwrap();
    advance_clock(SOFT_TTL);
    assert_eq!(
        gcm_decrypt(&s, deks[2], &iv, b"", &cts[2]).unwrap(),
        b"hang"
    );
    assert!(log_text(&t).contains("HSM member 'main' is up again"));
    // C_Finalize waits for the call given up on to come back before the
    // backends go (returning into a finalised library, or into one torn
    // down at exit, would crash the process).
    drop(s);
    p.finalize().unwrap();
    assert!(
        !log_text(&t).contains("still wait for it at C_Finalize"),
        "{}",
        log_text(&t)
    );
}

#[test]
fn a_time_out_out_of_range_is_refused_when_the_configuration_is_read() {
    for v in ["5", "600001"] {
        let e = hsm_envelope::config::Config::from_toml(&format!("hsm_timeout_ms = {v}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hsm_timeout_ms"), "{e}");
    }
    let c = hsm_envelope::config::Config::from_toml("hsm_timeout_ms = 2500\n").unwrap();
    assert_eq!(c.hsm_timeout_ms, 2500);
}

#[test]
fn a_member_that_comes_back_is_found_by_the_background_check_without_a_call() {
    let (t, flag) = two_hsms(true);
    // A soft TTL of 1 s: the background check ticks every 250 ms.
    let conf = t
        .config_text()
        .replace("cache_soft_ttl_secs = 60", "cache_soft_ttl_secs = 1");
    std::fs::write(&t.conf, conf).unwrap();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let iv = [6u8; 12];
    let (deks, cts) = deks_with(&s, 2, &iv, b"bg");
    std::fs::write(&flag, b"down").unwrap();
    assert_eq!(gcm_decrypt(&s, deks[0], &iv, b"", &cts[0]).unwrap(), b"bg");
    assert!(log_text(&t).contains("HSM member 'main' is down"));

    // main comes back; no application call is made: the module's own
    // thread finds it (real time here: the thread runs on it).
    std::fs::remove_file(&flag).unwrap();
    let start = Instant::now();
    while !log_text(&t).contains("HSM member 'main' is up again") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "main not found again in the background: {}",
            log_text(&t)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gcm_decrypt(&s, deks[1], &iv, b"", &cts[1]).unwrap(), b"bg");
}

#[test]
fn a_version_is_imported_into_each_replica_then_made_primary() {
    let (t, flag) = two_hsms(true);
    let material = t.path().join("v2.bin");
    std::fs::write(&material, random_bytes(32)).unwrap();
    let other = t.path().join("other.bin");
    std::fs::write(&other, random_bytes(32)).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();

    // Main: decrypt-only first (primary at once is refused with replicas).
    let main_pem = t.path().join("main.pem");
    ok_json(&t, &["kek", "import-key", "--out", &path(&main_pem)]);
    let blob = t.path().join("main.blob");
    byok_wrap(&main_pem, &material, &blob, false);
    let (code, doc) = cli_json(
        &t,
        &[
            "kek",
            "import",
            "--type",
            "aes256",
            "--in",
            &path(&blob),
            "--primary",
        ],
    );
    assert_ne!(code, 0, "{doc:#}");
    let doc = ok_json(
        &t,
        &["kek", "import", "--type", "aes256", "--in", &path(&blob)],
    );
    assert_eq!(doc["version"], 2, "{doc:#}");
    // Not primary while b lacks it; not made on one HSM either.
    let (code, doc) = cli_json(&t, &["kek", "set-primary", "2"]);
    assert_ne!(code, 0, "{doc:#}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or("")
            .contains("replica 'b' was not proven to hold v2"),
        "{doc:#}"
    );
    let (code, doc) = cli_json(&t, &["kek", "rotate"]);
    assert_ne!(code, 0, "{doc:#}");

    // b: other material is refused and removed; the same material agrees.
    let b_pem = t.path().join("b.pem");
    ok_json(
        &t,
        &["kek", "--hsm", "b", "import-key", "--out", &path(&b_pem)],
    );
    let wrong = t.path().join("b-wrong.blob");
    byok_wrap(&b_pem, &other, &wrong, false);
    let import_b = |blob: &std::path::Path| {
        cli_json(
            &t,
            &[
                "kek",
                "--hsm",
                "b",
                "import",
                "--type",
                "aes256",
                "--in",
                &path(blob),
                "--kek-version",
                "2",
            ],
        )
    };
    let (code, doc) = import_b(&wrong);
    assert_ne!(code, 0, "{doc:#}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or("")
            .contains("was not proven to be main's v2"),
        "{doc:#}"
    );
    let right = t.path().join("b.blob");
    byok_wrap(&b_pem, &material, &right, false);
    let (code, doc) = import_b(&right);
    assert_eq!(code, 0, "{doc:#}");
    let doc = ok_json(&t, &["kek", "set-primary", "2"]);
    assert_eq!(doc["primary"], 2, "{doc:#}");
    // v1 (no record needs it) goes from every replica with main's.
    advance_clock(Duration::from_secs(3600));
    ok_json(&t, &["kek", "destroy-version", "1"]);
    assert!(on_token(REPLICA_LABEL, |s| kek_objects(s).is_empty()));
    assert!(on_token(TOKEN_LABEL, |s| kek_objects(s).is_empty()));

    // A DEK made under v2 fails over to b.
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![]);
    let ct = gcm_encrypt(&s, dek, &[8; 12], b"", b"v2").unwrap();
    let other_dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, other_dek, &[8; 12], b"", b"evict").unwrap();
    std::fs::write(&flag, b"down").unwrap();
    assert_eq!(gcm_decrypt(&s, dek, &[8; 12], b"", &ct).unwrap(), b"v2");
    std::fs::remove_file(&flag).unwrap();
}

#[test]
fn set_primary_is_refused_while_a_replica_cannot_be_checked() {
    let (t, _flag) = two_hsms(true);
    let material = t.path().join("v2.bin");
    std::fs::write(&material, random_bytes(32)).unwrap();
    let pem = t.path().join("main.pem");
    ok_json(&t, &["kek", "import-key", "--out", pem.to_str().unwrap()]);
    let blob = t.path().join("main.blob");
    byok_wrap(&pem, &material, &blob, false);
    ok_json(
        &t,
        &[
            "kek",
            "import",
            "--type",
            "aes256",
            "--in",
            blob.to_str().unwrap(),
        ],
    );
    // b's token is gone (not found): it cannot prove it holds v2.
    let conf = t
        .config_text()
        .replace(&format!("\"{REPLICA_LABEL}\""), "\"not-there\"");
    std::fs::write(&t.conf, conf).unwrap();
    let (code, doc) = cli_json(&t, &["kek", "set-primary", "2"]);
    assert_ne!(code, 0, "{doc:#}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or("")
            .contains("replica 'b' was not proven to hold v2"),
        "{doc:#}"
    );
    // Nor is automatic rotation accepted with replicas.
    let conf = format!("rotate_after_days = 30\n{}", t.config_text());
    std::fs::write(&t.conf, conf).unwrap();
    let (code, doc) = cli_json(&t, &["status"]);
    assert_ne!(code, 0, "{doc:#}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or("")
            .contains("rotate_after_days"),
        "{doc:#}"
    );
}
