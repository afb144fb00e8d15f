//! AES-GCM invocation limits and module-made IVs across threads and
//! processes (issue 12, items 3 and 4): every GCM encryption under a key
//! is counted (message functions and C_EncryptInit alike); at
//! `gcm_invocation_limit` further ones are refused with
//! CKR_HSME_INVOCATION_LIMIT and an audit line, whichever process asks;
//! decryption is never limited; counter IVs never repeat.
//!
//! Several tests run this binary's own test again as child processes (the
//! environment variable CHILD names what the child does).

mod common;

use std::collections::HashSet;
use std::ffi::c_void;
use std::process::{Command, Stdio};
use std::ptr::null_mut;

use aes_gcm::aead::{AeadInOut, KeyInit};
use common::cli::{ok, ok_json};
use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::object::Attribute;
use cryptoki::session::Session;
use cryptoki_sys::*;
use hsm_envelope::vendor::CKR_HSME_INVOCATION_LIMIT;

const CHILD: &str = "HSME_GCM_CHILD";
const KEY: [u8; 32] = [0x24; 32];
const LIMIT: usize = 1000;
const LIMITS: &str = "gcm_invocation_limit = 1000\ngcm_invocation_block = 50\n";
const PARAMS_LEN: CK_ULONG = size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn reference_open(iv: &[u8], ct: &[u8], tag: &[u8]) -> Option<Vec<u8>> {
    let c = aes_gcm::Aes256Gcm::new_from_slice(&KEY).unwrap();
    let mut buf = ct.to_vec();
    c.decrypt_inout_detached(
        iv.try_into().unwrap(),
        b"",
        buf.as_mut_slice().into(),
        tag.try_into().unwrap(),
    )
    .ok()?;
    Some(buf)
}

/// One message encryption with an IV the module makes; the IV, the
/// ciphertext and the tag, or the call's code.
struct Sealed {
    iv: [u8; 12],
    ct: Vec<u8>,
    tag: [u8; 16],
}

fn seal(
    h: CK_SESSION_HANDLE,
    generator: CK_ULONG,
    fixed: CK_ULONG,
    pt: &[u8],
) -> Result<Sealed, CK_RV> {
    let l = raw_list_3_0();
    let mut iv = [0xA5u8; 12];
    let mut tag = [0u8; 16];
    let mut p = CK_GCM_MESSAGE_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvFixedBits: fixed,
        ivGenerator: generator,
        pTag: tag.as_mut_ptr(),
        ulTagBits: 128,
    };
    let mut ct = vec![0u8; pt.len()];
    let mut n = ct.len() as CK_ULONG;
    let rv = unsafe {
        l.C_EncryptMessage.unwrap()(
            h,
            &mut p as *mut _ as *mut c_void,
            PARAMS_LEN,
            null_mut(),
            0,
            pt.as_ptr() as *mut u8,
            pt.len() as CK_ULONG,
            ct.as_mut_ptr(),
            &mut n,
        )
    };
    if rv != CKR_OK {
        return Err(rv);
    }
    Ok(Sealed { iv, ct, tag })
}

fn message_init(s: &Session, key: cryptoki::object::ObjectHandle) {
    let mut m = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let rv =
        unsafe { raw_list_3_0().C_MessageEncryptInit.unwrap()(s.handle(), &mut m, key.handle()) };
    assert_eq!(rv, CKR_OK);
}

/// The token DEK labelled `label`, found (made by another process).
fn find(s: &Session, label: &str) -> cryptoki::object::ObjectHandle {
    let found = s
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1, "{label}");
    found[0]
}

/// Runs this binary's `test` as a child doing `role`, with the token's
/// configuration `conf`; waits for nothing (see `finish`).
fn spawn(t: &TestToken, test: &str, role: &str) -> std::process::Child {
    let barrier = t.path().join(format!("barrier-{test}"));
    std::fs::create_dir_all(&barrier).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env(CHILD, role)
        .env("HSME_GCM_BARRIER", &barrier)
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_CONF", &t.conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Two children doing `role`: the second is started once the first has
/// initialised and is waiting at the barrier.
fn two_children(t: &TestToken, test: &str, role: &str) -> Vec<String> {
    let first = spawn(t, test, role);
    let barrier = t.path().join(format!("barrier-{test}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&barrier).unwrap().count() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first child never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let second = spawn(t, test, role);
    [first, second].into_iter().map(|c| finish(t, c)).collect()
}

fn finish(t: &TestToken, child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("CHILD-DONE"),
        "the child failed: {stdout}\n{}\n--- the module's log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(t.log_file()).unwrap_or_default()
    );
    stdout
}

/// The IVs a child printed (`IV=<hex>`), with a ciphertext sample.
fn ivs(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("IV="))
        .map(str::to_string)
        .collect()
}

fn field(stdout: &str, key: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {stdout}"))
        .parse()
        .unwrap()
}

/// The module, initialised. SoftHSM2 2.6 sometimes answers C_GetSlotList
/// with CKR_GENERAL_ERROR to a process that starts while another opens the
/// same token directory at the same moment; the children retry.
fn ours_retrying() -> cryptoki::context::Pkcs11 {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    for attempt in 0.. {
        let p = Pkcs11::new(module_path()).unwrap();
        match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => return p,
            Err(e) if attempt < 20 => {
                eprintln!("C_Initialize: {e}; again");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("C_Initialize: {e}"),
        }
    }
    unreachable!()
}

/// Both children wait here until both are ready (`HSME_GCM_BARRIER`: a
/// directory), so that their encryptions overlap. (They are started one
/// after the other, see `two_children`: SoftHSM2 2.6 may not see its
/// token in a process that starts while another opens it.)
fn wait_for_the_other_child() {
    let Some(dir) = std::env::var_os("HSME_GCM_BARRIER") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::write(dir.join(std::process::id().to_string()), b"").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_dir(&dir).unwrap().count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other child never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A child: `threads` sessions on the DEK labelled "shared", each
/// encrypting with module-made IVs until `max` messages or the limit;
/// prints every IV, one sealed sample per thread, and how many succeeded.
fn encrypt_in_threads(threads: usize, max: usize) {
    let p = ours_retrying();
    let slot = token_slot(&p);
    let login = user_session(&p, slot);
    let key = find(&login, "shared");
    wait_for_the_other_child();
    let results: Vec<(Vec<Sealed>, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let p = &p;
                scope.spawn(move || {
                    let s = p.open_rw_session(slot).unwrap();
                    message_init(&s, key);
                    let mut sealed = Vec::new();
                    let mut limited = 0;
                    for i in 0..max {
                        let (generator, fixed) = match (t + i) % 3 {
                            0 => (CKG_GENERATE_COUNTER, 0),
                            1 => (CKG_GENERATE_COUNTER, 32),
                            _ => (CKG_GENERATE_RANDOM, 0),
                        };
                        match seal(s.handle(), generator, fixed, b"sixteen byte msg") {
                            Ok(x) => sealed.push(x),
                            Err(rv) => {
                                assert_eq!(rv, CKR_HSME_INVOCATION_LIMIT, "thread {t} message {i}");
                                limited += 1;
                                break;
                            }
                        }
                    }
                    (sealed, limited)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut count = 0;
    for (sealed, _) in &results {
        count += sealed.len();
        for x in sealed {
            println!("IV={}", hex(&x.iv));
        }
        if let Some(x) = sealed.first() {
            println!("SAMPLE={} {} {}", hex(&x.iv), hex(&x.ct), hex(&x.tag));
        }
    }
    println!("COUNT={count}");
    println!("LIMITED={}", results.iter().map(|r| r.1).sum::<usize>());
    println!("CHILD-DONE");
}

fn check_samples(stdout: &str) {
    for l in stdout.lines().filter_map(|l| l.strip_prefix("SAMPLE=")) {
        let parts: Vec<&str> = l.split(' ').collect();
        let plain = reference_open(&unhex(parts[0]), &unhex(parts[1]), &unhex(parts[2]));
        assert_eq!(plain.as_deref(), Some(&b"sixteen byte msg"[..]), "{l}");
    }
}

/// Module-made IVs (counter with and without fixed bits, random) never
/// repeat over a long run: two processes, four threads each, 5 000
/// messages per thread, all at once, under one token DEK.
#[test]
fn module_made_ivs_never_repeat_across_threads_and_processes() {
    if std::env::var_os(CHILD).is_some() {
        return encrypt_in_threads(4, 5000);
    }
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    import(&s, &KEY, true, vec![Attribute::Label(b"shared".to_vec())]);
    let test = "module_made_ivs_never_repeat_across_threads_and_processes";
    let outs = two_children(&t, test, "run");
    let mut seen = HashSet::new();
    for out in &outs {
        assert_eq!(field(out, "COUNT"), 4 * 5000);
        check_samples(out);
        for iv in ivs(out) {
            assert!(seen.insert(iv.clone()), "IV {iv} repeated");
        }
    }
    assert_eq!(seen.len(), 2 * 4 * 5000);
}

/// Two processes encrypt under one token DEK at once, three threads each,
/// until refused: together they get exactly `gcm_invocation_limit`
/// encryptions (the store's count holds; every reserved number is used),
/// with IVs that never repeat; then this process is refused too, and the
/// admin tool lists the DEK as at its limit.
#[test]
fn the_limit_holds_when_two_processes_encrypt_under_the_same_dek_at_once() {
    if std::env::var_os(CHILD).is_some() {
        return encrypt_in_threads(3, 10 * LIMIT);
    }
    let t = TestToken::with_extra_config(LIMITS);
    two_processes_to_the_limit(
        &t,
        "the_limit_holds_when_two_processes_encrypt_under_the_same_dek_at_once",
    );
}

/// The same on a PostgreSQL store (the processes stand for two hosts).
#[test]
fn the_limit_holds_when_two_processes_encrypt_under_the_same_dek_at_once_on_postgresql() {
    if std::env::var_os(CHILD).is_some() {
        return encrypt_in_threads(3, 10 * LIMIT);
    }
    let cluster = common::pg::PgCluster::shared();
    let url = cluster.create_database();
    let t = TestToken::with_extra_config(&format!("{LIMITS}store_url = \"{url}\"\n"));
    two_processes_to_the_limit(
        &t,
        "the_limit_holds_when_two_processes_encrypt_under_the_same_dek_at_once_on_postgresql",
    );
}

fn two_processes_to_the_limit(t: &TestToken, test: &str) {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = import(&s, &KEY, true, vec![Attribute::Label(b"shared".to_vec())]);
    let outs = two_children(t, test, "run");
    let total: usize = outs.iter().map(|o| field(o, "COUNT")).sum();
    assert_eq!(
        total,
        LIMIT,
        "{:?}",
        outs.iter().map(|o| field(o, "COUNT")).collect::<Vec<_>>()
    );
    for o in &outs {
        assert_eq!(
            field(o, "LIMITED"),
            3,
            "every thread was refused in the end"
        );
        check_samples(o);
    }
    let all: Vec<String> = outs.iter().flat_map(|o| ivs(o)).collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "an IV repeated");

    message_init(&s, key);
    assert_eq!(
        seal(s.handle(), CKG_GENERATE_COUNTER, 0, b"x").err(),
        Some(CKR_HSME_INVOCATION_LIMIT)
    );
    let e = gcm_encrypt(&s, key, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_INVOCATION_LIMIT));
    let doc = ok_json(t, &["dek", "list", "--near-limit"]);
    assert_eq!(doc["count"], 1, "{doc:#}");
    assert_eq!(doc["deks"][0]["gcm_invocations"], LIMIT as u64);
    assert_eq!(doc["deks"][0]["gcm_used_percent"], 100.0);
}

/// At the limit: the message functions and C_EncryptInit are refused with
/// CKR_HSME_INVOCATION_LIMIT, for every DEK with the key (a copy, a session
/// DEK with the same value); one audit line and one warning say so;
/// decryption still works; `dek list` shows the count, `--near-limit`
/// only the spent key.
#[test]
fn at_the_limit_encryption_is_refused_and_decryption_still_works() {
    let t = TestToken::with_extra_config(LIMITS);
    // new-token.sh names an audit log.
    let audit = t.audit_log();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = import(&s, &KEY, true, vec![Attribute::Label(b"spent".to_vec())]);
    let other = generate(&s, true, vec![Attribute::Label(b"fresh".to_vec())]);
    gcm_encrypt(&s, other, &[9; 12], b"", b"counted once").unwrap();

    // 600 through C_EncryptInit (the caller's IV), 400 message ones.
    for i in 0..600u32 {
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&i.to_be_bytes());
        gcm_encrypt(&s, key, &iv, b"", b"legacy").unwrap();
    }
    message_init(&s, key);
    let mut counts = HashSet::new();
    for _ in 0..400 {
        let x = seal(s.handle(), CKG_GENERATE_COUNTER, 0, b"message").unwrap();
        counts.insert(u32::from_be_bytes(x.iv[8..].try_into().unwrap()));
    }
    // The message IVs took the numbers after the 600 C_EncryptInit ones.
    assert_eq!(counts, (600..1000).collect::<HashSet<u32>>());
    let last = seal(s.handle(), CKG_GENERATE_COUNTER, 0, b"message");
    assert_eq!(last.err(), Some(CKR_HSME_INVOCATION_LIMIT));
    assert_eq!(
        seal(s.handle(), CKG_NO_GENERATE, 0, b"message").err(),
        Some(CKR_HSME_INVOCATION_LIMIT)
    );
    let e = gcm_encrypt(&s, key, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_INVOCATION_LIMIT));
    // Other modes are not GCM: not limited.
    s.encrypt(
        &cryptoki::mechanism::Mechanism::AesCbcPad([0; 16]),
        key,
        b"cbc",
    )
    .unwrap();
    // The same key material under another DEK: spent too.
    let copy = s
        .copy_object(key, &[Attribute::Label(b"copy".to_vec())])
        .unwrap();
    let e = gcm_encrypt(&s, copy, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_INVOCATION_LIMIT));
    let twin = import(&s, &KEY, false, vec![]);
    let e = gcm_encrypt(&s, twin, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_INVOCATION_LIMIT));

    // Decryption is never limited, on both paths.
    let joined = {
        let c = aes_gcm::Aes256Gcm::new_from_slice(&KEY).unwrap();
        let mut buf = b"after the limit".to_vec();
        let tag = c
            .encrypt_inout_detached((&[3u8; 12]).into(), b"", buf.as_mut_slice().into())
            .unwrap();
        buf.extend_from_slice(&tag);
        buf
    };
    for _ in 0..3 {
        assert_eq!(
            gcm_decrypt(&s, key, &[3; 12], b"", &joined).unwrap(),
            b"after the limit"
        );
    }
    let l = raw_list_3_0();
    let mut m = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(
        unsafe { l.C_MessageDecryptInit.unwrap()(s.handle(), &mut m, key.handle()) },
        CKR_OK
    );
    let (ct, tag) = joined.split_at(joined.len() - 16);
    let mut iv = [3u8; 12];
    let mut tag = tag.to_vec();
    let mut prm = CK_GCM_MESSAGE_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvFixedBits: 0,
        ivGenerator: CKG_NO_GENERATE,
        pTag: tag.as_mut_ptr(),
        ulTagBits: 128,
    };
    let mut out = vec![0u8; ct.len()];
    let mut n = out.len() as CK_ULONG;
    let rv = unsafe {
        l.C_DecryptMessage.unwrap()(
            s.handle(),
            &mut prm as *mut _ as *mut c_void,
            PARAMS_LEN,
            null_mut(),
            0,
            ct.as_ptr() as *mut u8,
            ct.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut n,
        )
    };
    assert_eq!(rv, CKR_OK);
    assert_eq!(out, b"after the limit");

    // One audit line, one warning, for this process.
    drop(s);
    drop(p);
    let lines = std::fs::read_to_string(&audit).unwrap();
    let spent: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("\"gcm_limit\""))
        .collect();
    assert_eq!(spent.len(), 1, "{lines}");
    assert!(
        spent[0].contains("\"spent\"") && spent[0].contains("\"count\":1000"),
        "{}",
        spent[0]
    );
    assert!(
        spent[0].contains("CKR_HSME_INVOCATION_LIMIT"),
        "{}",
        spent[0]
    );
    let log = std::fs::read_to_string(t.log_file()).unwrap();
    assert_eq!(
        log.matches("invocation limit (1000) is reached").count(),
        1,
        "{log}"
    );

    // The admin tool: the spent key and its copy at 100 %, the other one
    // with its one encryption, and only the spent ones near the limit.
    let doc = ok_json(&t, &["dek", "list"]);
    let by_label = |label: &str| {
        doc["deks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["label"] == label)
            .unwrap_or_else(|| panic!("{label}: {doc:#}"))
            .clone()
    };
    assert_eq!(by_label("spent")["gcm_invocations"], 1000);
    assert_eq!(by_label("copy")["gcm_invocations"], 1000);
    let fresh = by_label("fresh")["gcm_invocations"].as_u64().unwrap();
    assert!((1..=50).contains(&fresh), "at most a block ahead: {fresh}");
    assert_eq!(doc["gcm_invocation_limit"], 1000);
    let near = ok_json(&t, &["dek", "list", "--near-limit", "99"]);
    let mut labels: Vec<&str> = near["deks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["label"].as_str().unwrap())
        .collect();
    labels.sort();
    assert_eq!(labels, ["copy", "spent"]);
    let text = ok(&t, &["dek", "list", "--near-limit"]);
    assert!(
        text.contains("GCM USES") && text.contains("1000 (100.0%)"),
        "{text}"
    );
    assert!(!text.contains("fresh"), "{text}");
}

/// Session DEKs are counted in their process: at the limit, refused.
#[test]
fn session_deks_are_limited_in_their_process() {
    let _t = TestToken::with_extra_config(LIMITS);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = import(&s, &random_bytes(32), false, vec![]);
    message_init(&s, key);
    let mut ok = 0;
    let refused = loop {
        match seal(s.handle(), CKG_GENERATE_RANDOM, 0, b"x") {
            Ok(_) => ok += 1,
            Err(rv) => break rv,
        }
        assert!(ok <= LIMIT, "past the limit");
    };
    assert_eq!((ok, refused), (LIMIT, CKR_HSME_INVOCATION_LIMIT));
}

/// A child that encrypts five messages under the DEK labelled "shared",
/// then finalises (`HSME_GCM_CHILD=finalise`) or exits without it (`die`).
fn five_then(role: &str) {
    std::env::remove_var("HSME_GCM_BARRIER");
    let p = ours_retrying();
    let s = user_session(&p, token_slot(&p));
    let key = find(&s, "shared");
    message_init(&s, key);
    for _ in 0..5 {
        seal(s.handle(), CKG_GENERATE_COUNTER, 0, b"x").unwrap();
    }
    println!("CHILD-DONE");
    if role == "die" {
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        // No C_Finalize: the block this process reserved stays reserved.
        std::process::exit(0);
    }
    drop(s);
    p.finalize().unwrap();
}

/// A process that finalises gives back the unused end of its block; one
/// that dies loses at most its block (`gcm_invocation_block`, 50 here).
#[test]
fn a_finalised_process_gives_back_its_block_and_a_dead_one_loses_at_most_it() {
    if let Ok(role) = std::env::var(CHILD) {
        return five_then(&role);
    }
    let t = TestToken::with_extra_config(LIMITS);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    import(&s, &KEY, true, vec![Attribute::Label(b"shared".to_vec())]);
    let test = "a_finalised_process_gives_back_its_block_and_a_dead_one_loses_at_most_it";
    let reserved = || ok_json(&t, &["dek", "list"])["deks"][0]["gcm_invocations"].as_u64();
    finish(&t, spawn(&t, test, "finalise"));
    assert_eq!(reserved(), Some(5));
    finish(&t, spawn(&t, test, "die"));
    assert_eq!(reserved(), Some(5 + 50));
}
