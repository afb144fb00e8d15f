//! The module's log file as an operator reads it: created owner-only (0600,
//! unless `log_file_mode` says otherwise), every line `TIME pid=PID LEVEL
//! message` with TIME in RFC 3339 UTC, return values by their `CKR_*`
//! names, and no Rust debug text (`Some(0)`, `Generated`, epoch seconds).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::p11::*;
use common::*;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `2026-11-28T10:00:00Z pid=123 INFO ...`: the parts, or a panic naming
/// the line.
fn parts(line: &str) -> (&str, &str, &str, &str) {
    let mut it = line.splitn(4, ' ');
    let (time, pid, level, msg) = (
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    );
    let b = time.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    assert!(
        time.len() == 20
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && b[19] == b'Z',
        "time is not RFC 3339 UTC: {line}"
    );
    assert!(
        pid.strip_prefix("pid=")
            .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())),
        "{line}"
    );
    assert!(
        ["ERROR", "WARN", "INFO", "DEBUG"].contains(&level),
        "level: {line}"
    );
    (time, pid, level, msg)
}

#[test]
fn the_log_is_owner_only_with_rfc3339_times_ckr_names_and_no_debug_text() {
    let t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new("0000".into())))
        .expect_err("wrong PIN");
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    let dek = generate(&s, true, vec![]);
    s.destroy_object(dek).unwrap();
    drop(s);
    p.finalize().unwrap();

    let log = t.log_file();
    assert_eq!(mode(&log), 0o600, "{}", log.display());
    let text = std::fs::read_to_string(&log).unwrap();
    let mut msgs = Vec::new();
    for line in text.lines() {
        msgs.push(parts(line).3.to_string());
    }
    let all = msgs.join("\n");
    for want in [
        "initialised: 1 slot(s); DEKs on slot 0 (token 'hsm-envelope', KEK 'kek'",
        "CKR_PIN_INCORRECT",
        "login on slot 0 as the user: CKR_OK",
        "origin=generated token=true",
        "finalised",
    ] {
        assert!(all.contains(want), "no {want:?} in the log:\n{text}");
    }
    // A deletion says until when, as a date.
    let until = msgs
        .iter()
        .find_map(|m| {
            m.split_once("recoverable until ")
                .map(|(_, d)| d.to_string())
        })
        .unwrap_or_else(|| panic!("no deletion line:\n{text}"));
    assert!(
        until.len() == 20 && until.ends_with('Z') && until.as_bytes()[10] == b'T',
        "{until}"
    );
    for debug in [
        "Some(",
        "None",
        "Generated",
        "Imported",
        "Unwrapped",
        "PinIncorrect",
        "(0x",
    ] {
        assert!(
            !all.contains(debug),
            "debug text {debug:?} in the log:\n{text}"
        );
    }
}

#[test]
fn log_file_mode_sets_the_mode_of_a_new_log() {
    let t = TestToken::with_extra_config("log_file_mode = \"0640\"\n");
    let p = ours();
    p.finalize().unwrap();
    let m = mode(&t.log_file());
    // The umask may take bits away, never add them.
    assert_eq!(m & !0o640, 0, "{m:o}");
    assert_eq!(m & 0o600, 0o600, "{m:o}");
}
