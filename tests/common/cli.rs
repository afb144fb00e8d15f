//! Running the admin tool `hsm-envelope` as an operator does: the built
//! binary, with a test token's configuration and the test PIN.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::{TestToken, CLOCK_OFFSET_MS, USER_PIN};

pub const BIN: &str = env!("CARGO_BIN_EXE_hsm-envelope");

/// The tool with the token's configuration and the test PIN; stdin is not
/// a terminal. Its clock starts as far ahead as [`super::advance_clock`]
/// has moved this process's module clock.
pub fn cli_cmd(t: &TestToken, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("HSM_ENVELOPE_CONF", &t.conf)
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_PIN", USER_PIN)
        .env("HSM_ENVELOPE_TEST_CLOCK", "1")
        .env(
            "HSM_ENVELOPE_TEST_CLOCK_OFFSET_MS",
            CLOCK_OFFSET_MS.load(Ordering::SeqCst).to_string(),
        )
        .stdin(Stdio::null());
    c
}

pub fn run(mut c: Command) -> Output {
    c.output().expect("cannot run hsm-envelope")
}

pub fn cli(t: &TestToken, args: &[&str]) -> Output {
    run(cli_cmd(t, args))
}

pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .expect("hsm-envelope was killed by a signal")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// Runs with `--json`; the exit code and the one JSON document on stdout.
pub fn cli_json(t: &TestToken, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let o = cli(t, &all);
    let doc: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", show(&o)));
    (code(&o), doc)
}

pub fn ok(t: &TestToken, args: &[&str]) -> String {
    let o = cli(t, args);
    assert_eq!(code(&o), 0, "hsm-envelope {args:?}:\n{}", show(&o));
    stdout(&o)
}

pub fn ok_json(t: &TestToken, args: &[&str]) -> Value {
    let (c, doc) = cli_json(t, args);
    assert_eq!(c, 0, "hsm-envelope {args:?} --json: {doc:#}");
    doc
}

/// Every KEK version, as `kek list --json` shows it.
pub fn kek_list(t: &TestToken) -> Vec<Value> {
    ok_json(t, &["kek", "list"])["versions"]
        .as_array()
        .expect("versions array")
        .clone()
}

/// `(version, state, records)` of every KEK version, from `kek list --json`.
pub fn versions(t: &TestToken) -> Vec<(u64, String, u64)> {
    kek_list(t)
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_string(),
                v["records"].as_u64().unwrap(),
            )
        })
        .collect()
}
