//! Debian's `pkcs11-tool` (OpenSC 0.23) driving our module the way a user
//! would: `pkcs11-tool --module target/debug/libhsm_envelope.so ...`.
//!
//! Each test makes its own token ([`TestToken::new`] exports SOFTHSM2_CONF
//! and HSM_ENVELOPE_CONF, which the pkcs11-tool child processes inherit) and
//! checks a command's exit status and output, then the resulting state with
//! a second command, i.e. a second process that loads the module afresh.
//! Run with `cargo nextest run --test pkcs11_tool`.
//!
//! pkcs11-tool 0.23 facts these tests rely on (checked against SoftHSM2
//! directly, `--module /usr/lib/softhsm/libsofthsm2.so`, which behaves alike):
//! - `--encrypt`/`--decrypt` ignore `--label` (they take the first secret key
//!   found), so keys are always chosen with `--id`.
//! - `--keygen`/`--write-object` set CKA_PRIVATE, CKA_SENSITIVE and
//!   CKA_EXTRACTABLE true with `--private`/`--sensitive`/`--extractable` and
//!   explicitly false otherwise (so the module's defaults do not apply).
//! - `--wrap`: `--id` names the *wrapping* key, `--application-id` the key to
//!   wrap, `-o` the output file.
//! - `--unwrap`: `--id` names the unwrapping key, `-i` the wrapped key,
//!   `--key-type AES:` the new key's type, `--application-id` and
//!   `--application-label` its CKA_ID and CKA_LABEL. The new key is a token
//!   object, not extractable unless `--extractable`.
//! - SoftHSM2 numbers RFC 5649 key wrap (AES-KEY-WRAP-PAD) 0x210A, which
//!   pkcs11-tool shows as `mechtype-0x210A`; it is selected with `-m 0x210a`.

mod common;

use hsm_envelope::hex::encode as hex;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Seconds before a pkcs11-tool run is killed (a hang is a failure, not a
/// stuck test run).
const TIMEOUT_SECS: &str = "120";

/// A DEK made by a test: its CKA_ID as pkcs11-tool takes it (hex).
const DEK_ID: &str = "10";
const OTHER_ID: &str = "11";

// --- running pkcs11-tool -------------------------------------------------------

/// Runs `pkcs11-tool --module MODULE ARGS...` (under coreutils `timeout`)
/// with this process's environment plus `envs`.
fn run_tool_with(module: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=10")
        .arg(TIMEOUT_SECS)
        .arg("pkcs11-tool")
        .arg("--module")
        .arg(module)
        .args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run `timeout pkcs11-tool` (install the Debian packages coreutils and opensc, e.g. scripts/deps.sh): {e}")
    });
    if out.status.code() == Some(127) {
        panic!(
            "pkcs11-tool not found (install the Debian package opensc, e.g. scripts/deps.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_ne!(
        out.status.code(),
        Some(124),
        "pkcs11-tool {args:?} did not finish within {TIMEOUT_SECS} s (killed)\n{}",
        describe(&out)
    );
    out
}

/// `pkcs11-tool --module <our module> ARGS...`.
fn run_tool(args: &[&str]) -> Output {
    run_tool_with(&module_path(), args, &[])
}

fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs pkcs11-tool on our module, asserts it succeeded, returns stdout.
fn tool_ok(args: &[&str]) -> String {
    let out = run_tool(args);
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?} failed\n{}",
        describe(&out)
    );
    String::from_utf8(out.stdout).expect("pkcs11-tool printed non-UTF-8 on stdout")
}

/// Runs pkcs11-tool on our module, asserts it failed normally (an exit
/// status, not a signal: the module must not crash its host), returns
/// stdout + stderr.
fn tool_fails(args: &[&str]) -> String {
    let out = run_tool(args);
    assert_failed_cleanly(args, &out);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_failed_cleanly(args: &[&str], out: &Output) {
    assert!(
        !out.status.success(),
        "pkcs11-tool {args:?} should have failed\n{}",
        describe(out)
    );
    assert!(
        out.status.code().is_some(),
        "pkcs11-tool {args:?} was killed by a signal (a crash in the module?)\n{}",
        describe(out)
    );
}

/// `["--login", "--pin", USER_PIN, rest...]`.
fn logged_in<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--login", "--pin", USER_PIN];
    v.extend_from_slice(rest);
    v
}

// --- parsing pkcs11-tool's output ------------------------------------------------

/// One object as `pkcs11-tool -O` (or `--keygen`, `--unwrap`, ...) prints it:
/// a header line such as `Secret Key Object; AES length 32`, then indented
/// `name: value` lines.
#[derive(Debug, Clone)]
struct Listed {
    header: String,
    fields: BTreeMap<String, String>,
}

impl Listed {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
    fn label(&self) -> Option<&str> {
        self.field("label")
    }
    fn id(&self) -> Option<&str> {
        self.field("ID")
    }
    fn is_secret_key(&self) -> bool {
        self.header.starts_with("Secret Key Object")
    }
    /// The comma-separated flags of the `Usage:` or `Access:` line.
    fn flags(&self, name: &str) -> Vec<String> {
        self.field(name)
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
    fn has_flag(&self, name: &str, flag: &str) -> bool {
        self.flags(name).iter().any(|f| f == flag)
    }
}

/// Parses object listings; lines that are neither a `... Object...` header
/// nor an indented field of one (e.g. `Key generated:`) are skipped.
fn parse_objects(stdout: &str) -> Vec<Listed> {
    let mut objects: Vec<Listed> = Vec::new();
    let mut in_object = false;
    for line in stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            in_object = line.contains("Object");
            if in_object {
                objects.push(Listed {
                    header: line.trim().to_string(),
                    fields: BTreeMap::new(),
                });
            }
            continue;
        }
        if !in_object {
            continue;
        }
        if let (Some(obj), Some((k, v))) = (objects.last_mut(), line.trim().split_once(':')) {
            obj.fields
                .insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    objects
}

/// The secret keys in `stdout` with CKA_ID `id` (hex, as pkcs11-tool prints it).
fn secret_keys_with_id(stdout: &str, id: &str) -> Vec<Listed> {
    parse_objects(stdout)
        .into_iter()
        .filter(|o| o.is_secret_key() && o.id() == Some(id))
        .collect()
}

/// The one secret key with CKA_ID `id` in `stdout`; panics unless exactly one.
fn one_secret_key(stdout: &str, id: &str) -> Listed {
    let found = secret_keys_with_id(stdout, id);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one secret key with ID {id} in:\n{stdout}"
    );
    found.into_iter().next().unwrap()
}

/// `pkcs11-tool --login -O --type secrkey` in a new process, parsed.
fn list_secret_keys() -> (String, Vec<Listed>) {
    let out = tool_ok(&logged_in(&["--list-objects", "--type", "secrkey"]));
    let objs = parse_objects(&out);
    (out, objs)
}

/// The value of an `-L` line such as `  token label        : hsm-envelope`.
fn slot_field<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim())
        .collect()
}

// --- files and keys ----------------------------------------------------------

/// Deterministic, non-repeating test bytes (no RNG dependency needed).
fn test_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

fn read_file(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

const IV_HEX: &str = "000102030405060708090a0b0c0d0e0f";

/// `pkcs11-tool --encrypt|--decrypt -m AES-CBC-PAD --iv IV --id ID -i IN -o OUT`.
fn cbc_pad(op: &str, id: &str, input: &Path, output: &Path) {
    tool_ok(&logged_in(&[
        op,
        "-m",
        "AES-CBC-PAD",
        "--iv",
        IV_HEX,
        "--id",
        id,
        "-i",
        s(input),
        "-o",
        s(output),
    ]));
}

/// `pkcs11-tool --keygen --key-type AES:32 --label LABEL --id ID EXTRA...`;
/// returns the key as the tool printed it.
fn keygen(label: &str, id: &str, extra: &[&str]) -> Listed {
    let mut args = logged_in(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        label,
        "--id",
        id,
    ]);
    args.extend_from_slice(extra);
    let out = tool_ok(&args);
    assert!(
        out.contains("Key generated"),
        "no 'Key generated' in:\n{out}"
    );
    one_secret_key(&out, id)
}

/// `pkcs11-tool --wrap -m 0x210a --id 01 (the KEK) --application-id KEY -o OUT`.
fn wrap_args<'a>(key_id: &'a str, out: &'a Path) -> Vec<&'a str> {
    logged_in(&[
        "--wrap",
        "-m",
        "0x210a",
        "--id",
        "01",
        "--application-id",
        key_id,
        "-o",
        s(out),
    ])
}

// --- tests ------------------------------------------------------------------

#[test]
fn list_slots_shows_our_token() {
    let _token = TestToken::new();
    let out = tool_ok(&["--list-slots"]);
    assert!(out.contains("Available slots:"), "{out}");
    let slots: Vec<_> = out.lines().filter(|l| l.starts_with("Slot ")).collect();
    assert_eq!(
        slots.len(),
        1,
        "expected exactly one slot (ours) in:\n{out}"
    );
    assert_eq!(slot_field(&out, "token label"), [TOKEN_LABEL], "{out}");
    assert_eq!(
        slot_field(&out, "token manufacturer"),
        ["hsm-envelope"],
        "{out}"
    );
    let flags = slot_field(&out, "token flags").join(",");
    for f in ["login required", "token initialized", "PIN initialized"] {
        assert!(flags.contains(f), "token flags lack {f:?}:\n{out}");
    }
}

#[test]
fn list_mechanisms_includes_the_software_aes_mechanisms() {
    let _token = TestToken::new();
    let out = tool_ok(&["--list-mechanisms"]);
    assert!(out.contains("Supported mechanisms:"), "{out}");
    // `  AES-GCM, keySize={16,32}, encrypt, decrypt` -> name and flags.
    let mechs: BTreeMap<&str, Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with([' ', '\t']))
        .map(|l| {
            let mut parts = l.trim().split(", ");
            let name = parts.next().unwrap_or("");
            (name, parts.collect())
        })
        .collect();
    for (mech, want) in [
        ("AES-GCM", &["encrypt", "decrypt"][..]),
        ("AES-CBC-PAD", &["encrypt", "decrypt"][..]),
        ("AES-CTR", &["encrypt", "decrypt"][..]),
        ("AES-KEY-GEN", &["generate"][..]),
    ] {
        let flags = mechs
            .get(mech)
            .unwrap_or_else(|| panic!("{mech} not listed:\n{out}"));
        for f in want {
            assert!(
                flags.contains(f),
                "{mech} lacks flag {f:?} ({flags:?}):\n{out}"
            );
        }
    }
}

#[test]
fn list_objects_after_login_shows_the_kek_and_not_without_login() {
    let _token = TestToken::new();
    let out = tool_ok(&logged_in(&["--list-objects"]));
    let kek = one_secret_key(&out, "01");
    assert_eq!(kek.label(), Some(KEK_LABEL), "{out}");
    assert_eq!(kek.header, "Secret Key Object; AES length 32", "{out}");
    for f in ["sensitive", "never extractable"] {
        assert!(kek.has_flag("Access", f), "KEK lacks {f:?}:\n{out}");
    }
    assert!(
        !kek.has_flag("Access", "extractable"),
        "KEK is extractable:\n{out}"
    );
    assert!(
        kek.field("VALUE").is_none(),
        "the KEK's value was shown:\n{out}"
    );

    // The KEK is CKA_PRIVATE: a session that has not logged in cannot see it.
    let public = tool_ok(&["--list-objects"]);
    assert!(
        parse_objects(&public)
            .iter()
            .all(|o| o.label() != Some(KEK_LABEL)),
        "KEK visible without login:\n{public}"
    );
}

#[test]
fn keygen_makes_a_token_dek_that_later_processes_find_and_use() {
    let token = TestToken::new();
    let made = keygen("dek-gen", DEK_ID, &["--sensitive"]);
    assert_eq!(made.header, "Secret Key Object; AES length 32", "{made:?}");
    assert_eq!(made.label(), Some("dek-gen"));
    for f in ["encrypt", "decrypt"] {
        assert!(made.has_flag("Usage", f), "{made:?}");
    }
    for f in [
        "sensitive",
        "always sensitive",
        "never extractable",
        "local",
    ] {
        assert!(made.has_flag("Access", f), "new DEK lacks {f:?}: {made:?}");
    }
    assert!(
        made.field("VALUE").is_none(),
        "a sensitive key's value was shown: {made:?}"
    );

    // A new process (every pkcs11-tool run is one) still lists it: token DEKs persist.
    let (out, _) = list_secret_keys();
    let listed = one_secret_key(&out, DEK_ID);
    assert_eq!(listed.label(), Some("dek-gen"), "{out}");
    assert_eq!(listed.header, made.header, "{out}");
    assert_eq!(listed.field("Access"), made.field("Access"), "{out}");
    assert_eq!(listed.field("Unique ID"), made.field("Unique ID"), "{out}");
    // ... next to the KEK, which stays on the backend.
    assert_eq!(one_secret_key(&out, "01").label(), Some(KEK_LABEL), "{out}");
    assert!(
        token.store_path.is_file(),
        "no store at {}",
        token.store_path.display()
    );

    // And yet another process can use it: the value is unwrapped from the store.
    let plain = write_file(&token.path(), "plain.bin", &test_bytes(4096 + 5, 1));
    let enc = token.path().join("cipher.bin");
    let dec = token.path().join("decrypted.bin");
    cbc_pad("--encrypt", DEK_ID, &plain, &enc);
    cbc_pad("--decrypt", DEK_ID, &enc, &dec);
    assert_eq!(
        read_file(&dec),
        read_file(&plain),
        "round trip through two processes"
    );
}

#[test]
fn cbc_pad_round_trip_and_ciphertext_equals_openssl_for_an_imported_key() {
    let token = TestToken::new();
    let dir = token.path();
    let key = test_bytes(32, 7);
    let key_file = write_file(&dir, "known-key.bin", &key);
    let out = tool_ok(&logged_in(&[
        "--write-object",
        s(&key_file),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        "imported",
        "--id",
        DEK_ID,
    ]));
    assert!(out.contains("Created secret key"), "{out}");
    let listed = one_secret_key(&out, DEK_ID);
    assert_eq!(listed.header, "Secret Key Object; AES length 32", "{out}");
    // pkcs11-tool imports without --sensitive/--extractable: CKA_EXTRACTABLE false.
    assert!(
        listed.field("VALUE").is_none(),
        "a non-extractable key's value was shown:\n{out}"
    );

    // A plaintext that is not a whole number of blocks, so padding matters.
    let plain_bytes = test_bytes(100_003, 2);
    let plain = write_file(&dir, "plain.bin", &plain_bytes);
    let enc = dir.join("cipher.bin");
    let dec = dir.join("decrypted.bin");
    cbc_pad("--encrypt", DEK_ID, &plain, &enc);
    let cipher = read_file(&enc);
    assert_eq!(
        cipher.len(),
        (plain_bytes.len() / 16 + 1) * 16,
        "PKCS#7 padded length"
    );
    assert_ne!(&cipher[..64], &plain_bytes[..64]);

    cbc_pad("--decrypt", DEK_ID, &enc, &dec);
    assert_eq!(read_file(&dec), plain_bytes, "decrypt(encrypt(x)) != x");

    // The same ciphertext as OpenSSL's AES-256-CBC (PKCS#7 padding) with the key.
    let openssl_out = dir.join("cipher-openssl.bin");
    let o = Command::new("openssl")
        .args([
            "enc",
            "-aes-256-cbc",
            "-K",
            &hex(&key),
            "-iv",
            IV_HEX,
            "-in",
        ])
        .arg(&plain)
        .arg("-out")
        .arg(&openssl_out)
        .output()
        .expect("cannot run openssl (install the Debian package openssl)");
    assert!(o.status.success(), "openssl enc failed\n{}", describe(&o));
    assert!(
        read_file(&openssl_out) == cipher,
        "module's AES-CBC-PAD ciphertext differs from OpenSSL's"
    );

    // OpenSSL also decrypts the module's ciphertext.
    let o = Command::new("openssl")
        .args([
            "enc",
            "-d",
            "-aes-256-cbc",
            "-K",
            &hex(&key),
            "-iv",
            IV_HEX,
            "-in",
        ])
        .arg(&enc)
        .output()
        .expect("cannot run openssl");
    assert!(
        o.status.success(),
        "openssl enc -d failed\n{}",
        describe(&o)
    );
    assert!(
        o.stdout == plain_bytes,
        "OpenSSL's decryption of the module's ciphertext differs"
    );
}

#[test]
fn imported_key_value_is_stored_only_wrapped() {
    let token = TestToken::new();
    let key = test_bytes(32, 9);
    let key_file = write_file(&token.path(), "known-key.bin", &key);
    tool_ok(&logged_in(&[
        "--write-object",
        s(&key_file),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        "imported",
        "--id",
        DEK_ID,
    ]));
    std::fs::remove_file(&key_file).unwrap();
    // Use it once, so the value has been unwrapped (and cached) too.
    let plain = write_file(&token.path(), "plain.bin", b"hello");
    cbc_pad("--encrypt", DEK_ID, &plain, &token.path().join("c.bin"));

    // Every file under the token directory: the store (and any -wal or
    // -journal), the log, the configurations and SoftHSM2's token files.
    let mut checked = 0;
    let key_hex = hex(&key);
    for path in files_under(&token.path()) {
        let data = read_file(&path);
        assert!(
            !data.windows(key.len()).any(|w| w == key.as_slice()),
            "{} contains the raw key bytes",
            path.display()
        );
        let text = String::from_utf8_lossy(&data).to_lowercase();
        assert!(
            !text.contains(&key_hex),
            "{} contains the key as hex",
            path.display()
        );
        checked += 1;
    }
    assert!(
        token.store_path.is_file(),
        "no store at {}",
        token.store_path.display()
    );
    assert!(
        checked >= 4,
        "expected the store, the log, the configs and the token in {}",
        token.path().display()
    );
}

/// All regular files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display()))
        {
            let path = entry.expect("read_dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn wrap_with_the_kek_then_unwrap_gives_a_key_that_decrypts_the_same() {
    let token = TestToken::new();
    let dir = token.path();
    let made = keygen("dek-extractable", DEK_ID, &["--extractable"]);
    assert!(made.has_flag("Access", "extractable"), "{made:?}");

    let wrapped = dir.join("wrapped.bin");
    let out = tool_ok(&wrap_args(DEK_ID, &wrapped));
    assert!(out.contains("Key wrapped"), "{out}");
    let wrapped_bytes = read_file(&wrapped);
    // RFC 5649 of a 32-byte key: 32 bytes + the 8-byte integrity block.
    assert_eq!(
        wrapped_bytes.len(),
        40,
        "wrapped key: {}",
        hex(&wrapped_bytes)
    );
    // The DEK is extractable and not sensitive, so pkcs11-tool printed its
    // value: the wrapped blob must not contain it.
    if let Some(v) = made.field("VALUE") {
        assert!(
            !hex(&wrapped_bytes).contains(v),
            "wrapped blob holds the plaintext key"
        );
    }

    let out = tool_ok(&logged_in(&[
        "--unwrap",
        "-m",
        "0x210a",
        "--id",
        "01",
        "-i",
        s(&wrapped),
        "--key-type",
        "AES:",
        "--application-id",
        OTHER_ID,
        "--application-label",
        "dek-unwrapped",
    ]));
    assert!(out.contains("Key unwrapped"), "{out}");

    // A new process sees both keys.
    let (listing, _) = list_secret_keys();
    let unwrapped = one_secret_key(&listing, OTHER_ID);
    assert_eq!(unwrapped.label(), Some("dek-unwrapped"), "{listing}");
    assert_eq!(
        unwrapped.header, "Secret Key Object; AES length 32",
        "{listing}"
    );
    one_secret_key(&listing, DEK_ID);

    // What the original encrypts, the unwrapped key decrypts (and back).
    let plain_bytes = test_bytes(10_000, 3);
    let plain = write_file(&dir, "plain.bin", &plain_bytes);
    let by_original = dir.join("by-original.bin");
    let by_unwrapped = dir.join("by-unwrapped.bin");
    let dec = dir.join("decrypted.bin");
    cbc_pad("--encrypt", DEK_ID, &plain, &by_original);
    cbc_pad("--decrypt", OTHER_ID, &by_original, &dec);
    assert_eq!(
        read_file(&dec),
        plain_bytes,
        "unwrapped key does not decrypt the original's ciphertext"
    );
    cbc_pad("--encrypt", OTHER_ID, &plain, &by_unwrapped);
    assert_eq!(
        read_file(&by_unwrapped),
        read_file(&by_original),
        "same key, same IV: same ciphertext"
    );
}

#[test]
fn wrapping_a_sensitive_but_extractable_dek_works() {
    // CKA_SENSITIVE forbids revealing the value in plaintext, not wrapping it.
    let token = TestToken::new();
    keygen("dek-sensitive", DEK_ID, &["--sensitive", "--extractable"]);
    let wrapped = token.path().join("wrapped.bin");
    let out = tool_ok(&wrap_args(DEK_ID, &wrapped));
    assert!(out.contains("Key wrapped"), "{out}");
    assert_eq!(read_file(&wrapped).len(), 40);
}

#[test]
fn wrapping_a_non_extractable_dek_fails() {
    let token = TestToken::new();
    let made = keygen("dek-fixed", DEK_ID, &[]);
    assert!(made.has_flag("Access", "never extractable"), "{made:?}");
    let wrapped = token.path().join("wrapped.bin");
    let out = tool_fails(&wrap_args(DEK_ID, &wrapped));
    assert!(
        out.contains("CKR_KEY_UNEXTRACTABLE"),
        "expected CKR_KEY_UNEXTRACTABLE:\n{out}"
    );
    assert!(
        !wrapped.exists() || read_file(&wrapped).is_empty(),
        "something was written to {}",
        wrapped.display()
    );
    // The failed wrap changed nothing: the key is still there and usable.
    let (listing, _) = list_secret_keys();
    one_secret_key(&listing, DEK_ID);
    let plain = write_file(&token.path(), "plain.bin", b"still works");
    cbc_pad("--encrypt", DEK_ID, &plain, &token.path().join("c.bin"));
}

#[test]
fn delete_object_removes_the_dek_for_later_processes() {
    let token = TestToken::new();
    keygen("dek-doomed", DEK_ID, &[]);
    keygen("dek-kept", OTHER_ID, &[]);
    let (before, _) = list_secret_keys();
    one_secret_key(&before, DEK_ID);

    tool_ok(&logged_in(&[
        "--delete-object",
        "--type",
        "secrkey",
        "--id",
        DEK_ID,
    ]));

    // A new process: the deleted key is gone, the other DEK and the KEK stay.
    let (after, _) = list_secret_keys();
    assert!(
        secret_keys_with_id(&after, DEK_ID).is_empty(),
        "deleted key still listed:\n{after}"
    );
    assert!(
        !after.contains("dek-doomed"),
        "deleted key's label still listed:\n{after}"
    );
    assert_eq!(
        one_secret_key(&after, OTHER_ID).label(),
        Some("dek-kept"),
        "{after}"
    );
    assert_eq!(
        one_secret_key(&after, "01").label(),
        Some(KEK_LABEL),
        "{after}"
    );

    // Nor can it be used or deleted again.
    let plain = write_file(&token.path(), "plain.bin", b"x");
    let out = tool_fails(&logged_in(&[
        "--encrypt",
        "-m",
        "AES-CBC-PAD",
        "--iv",
        IV_HEX,
        "--id",
        DEK_ID,
        "-i",
        s(&plain),
        "-o",
        s(&token.path().join("c.bin")),
    ]));
    assert!(out.contains("not found"), "{out}");
    let out = tool_fails(&logged_in(&[
        "--delete-object",
        "--type",
        "secrkey",
        "--id",
        DEK_ID,
    ]));
    assert!(out.contains("not found"), "{out}");
}

#[test]
fn wrong_pin_fails_with_pin_incorrect() {
    let _token = TestToken::new();
    let out = tool_fails(&["--login", "--pin", "0000", "--list-objects"]);
    assert!(
        out.contains("CKR_PIN_INCORRECT"),
        "expected CKR_PIN_INCORRECT:\n{out}"
    );
    // The right PIN still works afterwards.
    let out = tool_ok(&logged_in(&["--list-objects"]));
    assert_eq!(one_secret_key(&out, "01").label(), Some(KEK_LABEL), "{out}");
}

/// Runs `pkcs11-tool -L` on our module with HSM_ENVELOPE_CONF=`conf`;
/// asserts a clean failure and returns stderr.
fn list_slots_with_config(conf: &Path) -> String {
    let out = run_tool_with(
        &module_path(),
        &["--list-slots"],
        &[("HSM_ENVELOPE_CONF", conf)],
    );
    assert_failed_cleanly(&["--list-slots"], &out);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn misspelt_config_key_fails_naming_the_file_and_the_key() {
    let token = TestToken::new();
    let bad = token.path().join("typo.toml");
    let text = token.config_text().replace("kek_label", "kek_lable");
    assert!(text.contains("kek_lable"));
    std::fs::write(&bad, text).unwrap();
    let err = list_slots_with_config(&bad);
    assert!(
        err.contains(s(&bad)),
        "stderr does not name {}:\n{err}",
        bad.display()
    );
    assert!(
        err.contains("kek_lable"),
        "stderr does not name the key `kek_lable`:\n{err}"
    );
    // The same token with the good configuration works.
    tool_ok(&["--list-slots"]);
}

#[test]
fn minimal_misspelt_config_fails_naming_the_file_and_the_key() {
    let token = TestToken::new();
    let bad = write_file(&token.path(), "bad.toml", b"kek_lable = \"x\"\n");
    let err = list_slots_with_config(&bad);
    assert!(
        err.contains(s(&bad)),
        "stderr does not name {}:\n{err}",
        bad.display()
    );
    assert!(
        err.contains("kek_lable"),
        "stderr does not name the key `kek_lable`:\n{err}"
    );
}

#[test]
fn missing_config_file_fails_naming_the_path() {
    let token = TestToken::new();
    let missing = token.path().join("no-such-dir").join("hsm-envelope.toml");
    let err = list_slots_with_config(&missing);
    assert!(
        err.contains(s(&missing)),
        "stderr does not name {}:\n{err}",
        missing.display()
    );
}

#[test]
fn set_id_persists_and_the_key_keeps_its_value() {
    let token = TestToken::new();
    keygen("dek-renamed", DEK_ID, &["--sensitive"]);
    let plain = write_file(&token.path(), "plain.bin", &test_bytes(333, 4));
    let before = token.path().join("before.bin");
    let after = token.path().join("after.bin");
    cbc_pad("--encrypt", DEK_ID, &plain, &before);

    // C_SetAttributeValue(CKA_ID) on a token DEK.
    tool_ok(&logged_in(&[
        "--set-id", OTHER_ID, "--id", DEK_ID, "--type", "secrkey",
    ]));

    let (listing, _) = list_secret_keys();
    assert!(
        secret_keys_with_id(&listing, DEK_ID).is_empty(),
        "old CKA_ID still listed:\n{listing}"
    );
    assert_eq!(
        one_secret_key(&listing, OTHER_ID).label(),
        Some("dek-renamed"),
        "{listing}"
    );
    // Same key under its new id: same ciphertext.
    cbc_pad("--encrypt", OTHER_ID, &plain, &after);
    assert_eq!(read_file(&after), read_file(&before));
}

#[test]
fn deleting_the_kek_through_the_module_is_refused() {
    // DESIGN.md: a KEK version is never destroyed while a record needs it.
    let token = TestToken::new();
    keygen("dek-needs-kek", DEK_ID, &[]);
    let out = tool_fails(&logged_in(&[
        "--delete-object",
        "--type",
        "secrkey",
        "--id",
        "01",
    ]));
    // pkcs11-tool 0.23 has no name for CKR_ACTION_PROHIBITED (0x1b).
    assert!(
        out.contains("0x1b"),
        "expected CKR_ACTION_PROHIBITED (0x1b):\n{out}"
    );
    let (listing, _) = list_secret_keys();
    assert_eq!(
        one_secret_key(&listing, "01").label(),
        Some(KEK_LABEL),
        "{listing}"
    );
    let plain = write_file(&token.path(), "plain.bin", b"still served");
    cbc_pad("--encrypt", DEK_ID, &plain, &token.path().join("c.bin"));
}

/// Imports a known key as `DEK_ID`, encrypts 100 bytes with AES-CBC-PAD and
/// returns the ciphertext file's path.
fn known_key_ciphertext(token: &TestToken) -> PathBuf {
    let key_file = write_file(&token.path(), "key.bin", &test_bytes(32, 5));
    tool_ok(&logged_in(&[
        "--write-object",
        s(&key_file),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        "k",
        "--id",
        DEK_ID,
    ]));
    let plain = write_file(&token.path(), "plain.bin", &test_bytes(100, 6));
    let enc = token.path().join("cipher.bin");
    cbc_pad("--encrypt", DEK_ID, &plain, &enc);
    assert_eq!(read_file(&enc).len(), 112);
    enc
}

/// `pkcs11-tool --decrypt -m AES-CBC-PAD` of `data`, which must fail; returns
/// the tool's output.
fn cbc_pad_decrypt_fails(token: &TestToken, data: &[u8]) -> String {
    let input = write_file(&token.path(), "bad-cipher.bin", data);
    let output = token.path().join("bad-plain.bin");
    let out = tool_fails(&logged_in(&[
        "--decrypt",
        "-m",
        "AES-CBC-PAD",
        "--iv",
        IV_HEX,
        "--id",
        DEK_ID,
        "-i",
        s(&input),
        "-o",
        s(&output),
    ]));
    // pkcs11-tool decrypts with C_DecryptUpdate + C_DecryptFinal, and
    // multi-part CBC-PAD releases every block but the last before the
    // padding is checked (SoftHSM2 alike), so `output` may hold some bytes;
    // the failure is in C_DecryptFinal.
    assert!(out.contains("C_DecryptFinal"), "{out}");
    out
}

#[test]
fn bad_cbc_pad_ciphertexts_are_refused() {
    let token = TestToken::new();
    let good = read_file(&known_key_ciphertext(&token));
    // Whole blocks, but the last block's padding is wrong (we drop the
    // padding block, so the last byte of the remaining plaintext decides).
    let out = cbc_pad_decrypt_fails(&token, &good[..96]);
    assert!(out.contains("CKR_ENCRYPTED_DATA_INVALID"), "{out}");
    // Not a whole number of blocks.
    cbc_pad_decrypt_fails(&token, &good[..17]);
}

#[test]

fn cbc_pad_ciphertext_of_partial_block_gives_encrypted_data_len_range() {
    // PKCS#11: CKR_ENCRYPTED_DATA_LEN_RANGE is the decryption error for a
    // ciphertext invalid "solely on the basis of its length"; CKR_DATA_LEN_RANGE
    // is about plaintext. SoftHSM2 answers CKR_ENCRYPTED_DATA_LEN_RANGE here.
    let token = TestToken::new();
    let good = read_file(&known_key_ciphertext(&token));
    let out = cbc_pad_decrypt_fails(&token, &good[..17]);
    assert!(out.contains("CKR_ENCRYPTED_DATA_LEN_RANGE"), "{out}");
}

#[test]
fn read_object_reveals_only_extractable_non_sensitive_deks() {
    let token = TestToken::new();
    // Extractable and not sensitive: pkcs11-tool prints the value at keygen,
    // and a later process reads the same value (unwrapped from the store).
    let open = keygen("dek-open", DEK_ID, &["--extractable"]);
    let shown = open
        .field("VALUE")
        .unwrap_or_else(|| panic!("keygen did not show an extractable key's value: {open:?}"))
        .to_string();
    assert_eq!(shown.len(), 64, "{open:?}");
    let read = token.path().join("value.bin");
    tool_ok(&logged_in(&[
        "--read-object",
        "--type",
        "secrkey",
        "--id",
        DEK_ID,
        "-o",
        s(&read),
    ]));
    assert_eq!(hex(&read_file(&read)), shown);

    // Sensitive (though extractable): CKA_VALUE cannot be read.
    keygen("dek-secret", OTHER_ID, &["--sensitive", "--extractable"]);
    let read2 = token.path().join("value2.bin");
    tool_fails(&logged_in(&[
        "--read-object",
        "--type",
        "secrkey",
        "--id",
        OTHER_ID,
        "-o",
        s(&read2),
    ]));
    assert!(
        !read2.exists() || read_file(&read2).is_empty(),
        "a sensitive key's value was written"
    );
    let (listing, _) = list_secret_keys();
    assert!(
        one_secret_key(&listing, OTHER_ID).field("VALUE").is_none(),
        "{listing}"
    );
}

/// OpenSC's pkcs11-spy in front of the module (it writes its own function
/// list into the interface C_GetInterface returns; a read-only interface
/// crashed it).
#[test]
fn pkcs11_spy_in_front_of_the_module_works() {
    let token = TestToken::new();
    let spy = [
        "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so",
        "/usr/lib/pkcs11/pkcs11-spy.so",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .expect("pkcs11-spy.so (Debian package opensc) not found");
    let log = token.path().join("spy.log");
    let out = run_tool_with(
        &spy,
        &["--list-slots"],
        &[("PKCS11SPY", &module_path()), ("PKCS11SPY_OUTPUT", &log)],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        slot_field(&stdout, "token label"),
        [TOKEN_LABEL],
        "{stdout}"
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("C_GetSlotList"));
}

// --- the README's cheat sheet ---------------------------------------------------

/// The rows (what, command) of the table under "### pkcs11-tool cheat
/// sheet" in README.md, commands without their backticks.
fn cheat_sheet() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n### pkcs11-tool cheat sheet\n")
        .nth(1)
        .expect("README.md has no '### pkcs11-tool cheat sheet'");
    let section = section.split("\n#").next().unwrap_or("");
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            cells.len(),
            2,
            "a cheat-sheet row is | what | command |: {line}"
        );
        if cells == ["what", "command"] || cells[1].chars().all(|c| c == '-') {
            continue;
        }
        let cmd = cells[1]
            .strip_prefix('`')
            .and_then(|c| c.strip_suffix('`'))
            .unwrap_or_else(|| panic!("the command is not one `code` span: {line}"));
        assert!(!cmd.contains('`'), "one command per row: {line}");
        rows.push((cells[0].to_string(), cmd.to_string()));
    }
    rows
}

/// The two warnings pkcs11-tool prints on these rows, which the README
/// explains; any other warning means the README is out of date.
const EXPLAINED_WARNINGS: &[&str] = &[
    "warning: PKCS11 function C_GetAttributeValue(VALUE) failed: rv = CKR_ATTRIBUTE_SENSITIVE (0x11)",
    "warning: PKCS11 function C_GetAttributeValue(ALWAYS_AUTHENTICATE) failed: rv = CKR_ATTRIBUTE_TYPE_INVALID (0x12)",
];

/// Runs every row of the README's cheat sheet, as written, in order, in an
/// empty directory with `M` set to the module, on a token whose
/// configuration has `extra` added; then checks what the rows left.
fn run_the_cheat_sheet(extra: &str) {
    let token = TestToken::with_extra_config(extra);
    let work = token.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let rows = cheat_sheet();
    assert!(rows.len() >= 12, "{rows:#?}");
    // Safe to copy: every row that makes a key makes it private and
    // sensitive.
    for (what, cmd) in &rows {
        if ["--keygen", "--write-object", "--unwrap"]
            .iter()
            .any(|k| cmd.contains(k))
        {
            assert!(
                cmd.contains(" --private") && cmd.contains(" --sensitive"),
                "row '{what}' makes a key without --private --sensitive: {cmd}"
            );
        }
    }
    let mut stdout = String::new();
    for (what, cmd) in &rows {
        let out = Command::new("timeout")
            .args(["--kill-after=10", TIMEOUT_SECS, "bash", "-c", cmd])
            .current_dir(&work)
            .env("M", module_path())
            .output()
            .expect("cannot run bash");
        assert!(
            out.status.success(),
            "README cheat-sheet row '{what}' failed as written:\n{cmd}\n{}",
            describe(&out)
        );
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            assert!(
                !line.starts_with("warning") || EXPLAINED_WARNINGS.contains(&line),
                "row '{what}': a warning the README does not explain: {line}"
            );
        }
        stdout.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    // No row showed a key's value.
    assert!(
        !stdout.lines().any(|l| l.trim_start().starts_with("VALUE:")),
        "a key value was printed:\n{stdout}"
    );
    // What the rows did: decrypt gave back the data, the wrap made an
    // RFC 5649 blob of a 32-byte key, and the unwrapped key is DEK 11's.
    assert_eq!(read_file(&work.join("back")), read_file(&work.join("in")));
    assert_eq!(read_file(&work.join("wrapped.bin")).len(), 40);
    let (listing, _) = list_secret_keys();
    assert!(
        secret_keys_with_id(&listing, DEK_ID).is_empty(),
        "{listing}"
    );
    for id in ["11", "12", "13"] {
        let k = one_secret_key(&listing, id);
        assert!(k.has_flag("Access", "sensitive"), "{id}: {listing}");
    }
    assert!(one_secret_key(&listing, "11").has_flag("Access", "extractable"));
    for id in ["12", "13"] {
        assert!(!one_secret_key(&listing, id).has_flag("Access", "extractable"));
    }
    // The text under the table: the KEK also wraps with 0x2109 and 0x210b.
    for mech in ["0x2109", "0x210b"] {
        let out = work.join(format!("wrapped-{mech}.bin"));
        tool_ok(&logged_in(&[
            "--wrap",
            "-m",
            mech,
            "--id",
            "01",
            "--application-id",
            "11",
            "-o",
            s(&out),
        ]));
        assert_eq!(read_file(&out).len(), 40, "{mech}");
    }
    let plain = work.join("in");
    cbc_pad("--encrypt", "11", &plain, &work.join("by11"));
    cbc_pad("--encrypt", "13", &plain, &work.join("by13"));
    assert_eq!(read_file(&work.join("by11")), read_file(&work.join("by13")));
}

#[test]
fn the_readme_cheat_sheet_runs_as_written() {
    run_the_cheat_sheet("");
}

#[test]
fn the_readme_cheat_sheet_runs_as_written_under_key_export_wrapped() {
    run_the_cheat_sheet("key_export = \"wrapped\"\n");
}

/// Without --sensitive (as the old cheat sheet had it), key_export =
/// "wrapped" refuses the key, and pkcs11-tool says so.
#[test]
fn keygen_without_sensitive_is_refused_under_key_export_wrapped() {
    let _token = TestToken::with_extra_config("key_export = \"wrapped\"\n");
    let out = tool_fails(&logged_in(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "readable",
        "--id",
        DEK_ID,
    ]));
    assert!(out.contains("CKR_TEMPLATE_INCONSISTENT"), "{out}");
    let (listing, _) = list_secret_keys();
    assert!(
        secret_keys_with_id(&listing, DEK_ID).is_empty(),
        "{listing}"
    );
}

/// The README names the AES key wrap mechanisms by their right values:
/// wherever a value is written right next to a name ("`NAME` (0x...)",
/// "`0x...` = `NAME`", "0x... (`NAME`"), the name is the right one.
#[test]
fn the_readme_names_the_key_wrap_mechanisms_right() {
    use cryptoki_sys::{CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD};
    assert_eq!(
        (CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP),
        (0x2109, 0x210A, 0x210B)
    );
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    // (start, end, value) of each name; the longer names first, so that
    // CKM_AES_KEY_WRAP does not also count their occurrences.
    let mut names: Vec<(usize, usize, u64)> = Vec::new();
    for (name, value) in [
        ("CKM_AES_KEY_WRAP_PAD", CKM_AES_KEY_WRAP_PAD),
        ("CKM_AES_KEY_WRAP_KWP", CKM_AES_KEY_WRAP_KWP),
        ("CKM_AES_KEY_WRAP", CKM_AES_KEY_WRAP),
    ] {
        for (i, _) in readme.match_indices(name) {
            if !names.iter().any(|(j, _, _)| *j == i) {
                names.push((i, i + name.len(), value));
            }
        }
    }
    let joins = |gap: &str| gap.len() <= 6 && gap.chars().all(|c| " `()=".contains(c));
    let lower = readme.to_lowercase();
    let mut checked = 0;
    for (i, _) in lower.match_indices("0x210") {
        let value = match lower[i + 5..].chars().next() {
            Some('9') => 0x2109,
            Some('a') => 0x210A,
            Some('b') => 0x210B,
            _ => continue,
        };
        let end = i + 6;
        for (start, stop, named) in &names {
            let adjacent = (*stop <= i && joins(&readme[*stop..i]))
                || (*start >= end && joins(&readme[end..*start]));
            if adjacent {
                assert_eq!(
                    *named,
                    value,
                    "README names {value:#x} as the mechanism {named:#x}: ...{}...",
                    &readme[(*start).min(i)..(*stop).max(end)]
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 3,
        "expected the three mechanisms named with their values ({checked})"
    );
}
