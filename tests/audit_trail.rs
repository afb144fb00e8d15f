//! The audit log as the module and the admin tool write it: logins, DEK
//! creation and destruction, DEK use as counts (never a line per call), KEK
//! rotation; hash-chained with HSM-authenticated checkpoints that
//! `hsm-envelope audit verify` accepts, and that it refuses once a line is
//! edited. No key bytes or PIN in it.

mod common;

use std::process::Command;

use common::p11::*;
use common::*;
use cryptoki::object::Attribute;

fn tool(t: &TestToken, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hsm-envelope"))
        .args(args)
        .env("HSM_ENVELOPE_CONF", &t.conf)
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_PIN", USER_PIN)
        .output()
        .unwrap()
}

#[test]
fn the_module_and_the_tool_leave_a_verifiable_trail() {
    let t = TestToken::new();
    // new-token.sh names DIR/audit.log.
    let log = t.audit_log();
    t.set_config("audit_checkpoint_lines", "4");

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let value = random_bytes(32);
    let dek = import(
        &s,
        &value,
        true,
        vec![Attribute::Label(b"audited".to_vec())],
    );
    for _ in 0..100 {
        gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    }
    s.destroy_object(dek).unwrap();
    s.logout().unwrap();
    drop(s);
    p.finalize().unwrap();
    let out = tool(&t, &["kek", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let text = std::fs::read_to_string(&log).unwrap();
    let ops: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["op"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    for want in [
        "login",
        "dek_create",
        "dek_use",
        "dek_destroy",
        "logout",
        "kek_rotate",
        "checkpoint",
    ] {
        assert!(ops.iter().any(|o| o == want), "no {want} line in {ops:?}");
    }
    let uses: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["op"] == "dek_use")
        .collect();
    assert_eq!(
        uses.iter()
            .map(|v| v["count"].as_u64().unwrap())
            .sum::<u64>(),
        100,
        "{uses:?}"
    );
    assert!(
        uses.len() <= 2,
        "uses are counted, not logged per call: {} lines",
        uses.len()
    );
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !text.contains(&hex) && !text.contains(&format!("\"{USER_PIN}\"")),
        "no key bytes or PIN"
    );
    assert!(!std::fs::read(&log)
        .unwrap()
        .windows(8)
        .any(|w| value.windows(8).any(|v| v == w)));

    let ok = tool(&t, &["audit", "verify"]);
    assert!(
        ok.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );

    // Edit one line: verify fails and names it.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1] = lines[1].replacen("\"pid\":", "\"pid\":1", 1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let bad = tool(&t, &["--json", "audit", "verify"]);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(report["first_bad"]["line"], 2, "{report}");
}

/// The application's last session closes before C_Finalize (pkcs11-tool
/// does this): the login ends there, so the checkpoint over the process's
/// lines is signed then, while the HMAC key can still be used, and nothing
/// is left unauthenticated or warned about.
#[test]
fn the_final_checkpoint_is_signed_when_the_last_session_closes_first() {
    let t = TestToken::new();
    let log = t.audit_log();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    drop(s); // the last session: the application is logged out
    p.finalize().unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("audit lines")).unwrap();
    assert_eq!(last["op"], "checkpoint", "{text}");
    let doc: serde_json::Value =
        serde_json::from_slice(&tool(&t, &["--json", "audit", "verify"]).stdout).unwrap();
    assert_eq!(doc["unauthenticated_tail"], 0, "{doc:#}");
    let module_log = std::fs::read_to_string(t.log_file()).unwrap();
    assert!(
        !module_log.contains("cannot sign a checkpoint"),
        "{module_log}"
    );
}

/// C_Logout: everything before it is signed before the backend logs out;
/// only the logout line itself follows the last checkpoint, and C_Finalize,
/// with nobody logged in, does not try (and fail) to sign.
#[test]
fn c_logout_signs_before_the_login_ends() {
    let t = TestToken::new();
    let log = t.audit_log();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    s.logout().unwrap();
    drop(s);
    p.finalize().unwrap();

    let ops: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["op"].to_string())
        .collect();
    let n = ops.len();
    assert!(n >= 2, "{ops:?}");
    assert_eq!(
        (ops[n - 2].as_str(), ops[n - 1].as_str()),
        ("\"checkpoint\"", "\"logout\""),
        "{ops:?}"
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&tool(&t, &["--json", "audit", "verify"]).stdout).unwrap();
    assert_eq!(doc["unauthenticated_tail"], 1, "{doc:#}");
    let module_log = std::fs::read_to_string(t.log_file()).unwrap();
    assert!(
        !module_log.contains("cannot sign a checkpoint"),
        "{module_log}"
    );
}
