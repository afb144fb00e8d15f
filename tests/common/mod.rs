//! Shared harness for the integration tests.
//!
//! Every integration test runs in its own process under `cargo nextest`
//! (the PKCS#11 module and the SoftHSM2 backend are process-global
//! singletons), and each test makes its own token with [`TestToken::new`]:
//! a fresh SoftHSM2 token plus KEK made by `softhsm-config/new-token.sh` in a
//! new temporary directory, with `SOFTHSM2_CONF` and `HSM_ENVELOPE_CONF` set in
//! this process's environment. Create the token *before* loading any PKCS#11
//! module: SoftHSM2 reads `SOFTHSM2_CONF` in `C_Initialize`.
//!
//! Plain `cargo test` runs several tests as threads of one process, which
//! shares one environment and one loaded module between them; `TestToken`
//! therefore refuses to make a second token in the same process.
//!
//! Time: `TestToken` also sets `HSM_ENVELOPE_TEST_CLOCK=1`, so a test waits
//! for a TTL, refresh interval or rotation age with [`advance_clock`]
//! instead of sleeping. The clock only moves when a test moves it.
#![allow(dead_code)]

pub mod cli;
pub mod host;
pub mod hsms;
pub mod p11;
pub mod pg;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

/// User PIN of every test token (a fixed test value, not a secret).
pub const USER_PIN: &str = "1234";
/// SO PIN of every test token (a fixed test value, not a secret).
pub const SO_PIN: &str = "5678";
/// Label of the token made by `new-token.sh`.
pub const TOKEN_LABEL: &str = "hsm-envelope";
/// Label of the AES-256 KEK made by `new-token.sh`.
pub const KEK_LABEL: &str = "kek";
/// CKA_ID of the KEK made by `new-token.sh`.
pub const KEK_ID: &[u8] = &[0x01];

/// File name of the module this crate builds.
pub const MODULE_FILE_NAME: &str = "libhsm_envelope.so";

static TOKEN_MADE: AtomicBool = AtomicBool::new(false);

/// A fresh SoftHSM2 token with the KEK, in its own temporary directory
/// (removed when the `TestToken` is dropped).
pub struct TestToken {
    /// The temporary directory holding everything below.
    pub dir: tempfile::TempDir,
    /// `DIR/softhsm2.conf`, also exported as `SOFTHSM2_CONF`.
    pub softhsm_conf: PathBuf,
    /// `DIR/hsm-envelope.toml`, also exported as `HSM_ENVELOPE_CONF`.
    pub conf: PathBuf,
    /// `DIR/deks.sqlite`, the wrapped-DEK store named in the configuration.
    pub store_path: PathBuf,
}

impl TestToken {
    /// Fresh token via softhsm-config/new-token.sh in a new temp dir; sets
    /// SOFTHSM2_CONF and HSM_ENVELOPE_CONF in this process's environment.
    pub fn new() -> Self {
        Self::with_extra_config("")
    }

    /// Same, but lets the test append extra TOML lines to hsm-envelope.toml
    /// before the module loads.
    pub fn with_extra_config(extra: &str) -> Self {
        if TOKEN_MADE.swap(true, Ordering::SeqCst) {
            panic!(
                "TestToken: a token was already made in this process. Each test \
                 gets one token and its own process: run the tests with \
                 `cargo nextest run`, not `cargo test`."
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("hsm-envelope-test-")
            .tempdir()
            .expect("TestToken: cannot create a temporary directory");
        let out = run_new_token(dir.path(), &[]);
        if !out.status.success() {
            panic!(
                "TestToken: {} {} failed ({}):\n{}",
                new_token_script().display(),
                dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // tempfile gives an absolute path; the script prints the physical one.
        let root = dir
            .path()
            .canonicalize()
            .expect("TestToken: cannot canonicalize the temporary directory");
        let softhsm_conf = root.join("softhsm2.conf");
        let conf = root.join("hsm-envelope.toml");
        let store_path = root.join("deks.sqlite");
        for file in [&softhsm_conf, &conf] {
            assert!(
                file.is_file(),
                "TestToken: new-token.sh did not write {}",
                file.display()
            );
        }
        if !extra.is_empty() {
            let mut text = std::fs::read_to_string(&conf).expect("TestToken: read config");
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("\n# extra configuration from the test\n");
            text.push_str(extra);
            if !extra.ends_with('\n') {
                text.push('\n');
            }
            std::fs::write(&conf, text).expect("TestToken: write config");
        }
        // One token per process (checked above), so nothing else is reading
        // the environment concurrently on our behalf.
        std::env::set_var("SOFTHSM2_CONF", &softhsm_conf);
        std::env::set_var("HSM_ENVELOPE_CONF", &conf);
        // Lets advance_clock move the module clock (read at its first use,
        // so it must be set before the module is loaded).
        std::env::set_var("HSM_ENVELOPE_TEST_CLOCK", "1");
        TestToken {
            dir,
            softhsm_conf,
            conf,
            store_path,
        }
    }

    /// The token directory (absolute, symlinks resolved).
    pub fn path(&self) -> PathBuf {
        self.softhsm_conf
            .parent()
            .expect("softhsm2.conf has a parent")
            .to_path_buf()
    }

    /// `DIR/hsm-envelope.log`, the log file named in the configuration.
    pub fn log_file(&self) -> PathBuf {
        self.path().join("hsm-envelope.log")
    }

    /// The configuration file as text.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.conf).expect("read hsm-envelope.toml")
    }

    /// The configuration with `key = value` (`value` as TOML) in place of
    /// the line new-token.sh wrote for `key`, or added at the end.
    pub fn config_with(&self, key: &str, value: &str) -> String {
        let mut out: String = self
            .config_text()
            .lines()
            .filter(|l| l.split_once('=').is_none_or(|(k, _)| k.trim() != key))
            .map(|l| format!("{l}\n"))
            .collect();
        out.push_str(&format!("{key} = {value}\n"));
        out
    }

    /// Writes [`TestToken::config_with`] to `HSM_ENVELOPE_CONF`.
    pub fn set_config(&self, key: &str, value: &str) {
        std::fs::write(&self.conf, self.config_with(key, value)).expect("write hsm-envelope.toml");
    }

    /// `DIR/audit.log`, the audit log named in the configuration.
    pub fn audit_log(&self) -> PathBuf {
        self.path().join("audit.log")
    }
}

/// The repository root (where Cargo.toml and softhsm-config/ are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `softhsm-config/new-token.sh` in this repository.
pub fn new_token_script() -> PathBuf {
    repo_root().join("softhsm-config").join("new-token.sh")
}

/// Runs `bash softhsm-config/new-token.sh DIR` with the test PINs and the
/// extra environment `envs`, without touching this process's environment.
pub fn run_new_token(dir: &Path, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(new_token_script())
        .arg(dir)
        .env("PIN", USER_PIN)
        .env("SO_PIN", SO_PIN);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", new_token_script().display()))
}

/// The built `libhsm_envelope.so`, found from the test executable's location
/// (target/<profile>/deps/<exe>): first target/<profile>/deps/libhsm_envelope.so,
/// which cargo writes in the same build as the test executable (so it is
/// never stale), then target/<profile>/libhsm_envelope.so, the copy that only
/// `cargo build` refreshes. Panics with a clear message if both are missing.
pub fn module_path() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable's path");
    let exe_dir = exe
        .parent()
        .expect("test executable has no parent directory");
    let mut tried = Vec::new();
    let mut dirs = vec![exe_dir.to_path_buf()];
    if exe_dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(profile_dir) = exe_dir.parent() {
            dirs.push(profile_dir.to_path_buf());
        }
    }
    for d in dirs {
        let candidate = d.join(MODULE_FILE_NAME);
        if candidate.is_file() {
            return candidate;
        }
        tried.push(candidate);
    }
    panic!(
        "{MODULE_FILE_NAME} not found (looked at {}; test executable {}). \
         Build the cdylib first: `cargo build` (cargo nextest run / cargo test \
         normally build it along with the tests).",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        exe.display()
    );
}

/// SoftHSM2's module, found by `hsm_envelope::config::find_softhsm2`
/// (`SOFTHSM2_MODULE`, else the first candidate that exists; new-token.sh
/// searches the same list). Panics with a clear message if none is found.
pub fn softhsm_module_path() -> PathBuf {
    hsm_envelope::config::find_softhsm2().unwrap_or_else(|e| panic!("{e}"))
}

/// Loads a PKCS#11 module and calls `C_Initialize` with `CKF_OS_LOCKING_OK`.
pub fn init_pkcs11(module: &Path) -> Pkcs11 {
    let pkcs11 = Pkcs11::new(module)
        .unwrap_or_else(|e| panic!("cannot load PKCS#11 module {}: {e}", module.display()));
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize of {} failed: {e}", module.display()),
    }
    pkcs11
}

/// The slot holding the token labelled [`TOKEN_LABEL`]; panics unless there
/// is exactly one.
pub fn token_slot(pkcs11: &Pkcs11) -> Slot {
    let slots = pkcs11
        .get_slots_with_initialized_token()
        .expect("C_GetSlotList failed");
    let mut matching = Vec::new();
    for slot in slots {
        let info = pkcs11.get_token_info(slot).expect("C_GetTokenInfo failed");
        if info.label() == TOKEN_LABEL {
            matching.push(slot);
        }
    }
    assert_eq!(
        matching.len(),
        1,
        "expected exactly one token labelled {TOKEN_LABEL:?}, found {}",
        matching.len()
    );
    matching[0]
}

/// A read-write session on `slot`, logged in as the user with [`USER_PIN`].
pub fn user_session(pkcs11: &Pkcs11, slot: Slot) -> Session {
    let session = pkcs11
        .open_rw_session(slot)
        .expect("C_OpenSession (rw) failed");
    session
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("C_Login as user with the test PIN failed");
    session
}

/// How far [`advance_clock`] has moved the module clock in this process, in
/// milliseconds; `cli::cli_cmd` starts the admin tool with its clock moved
/// as far (`HSM_ENVELOPE_TEST_CLOCK_OFFSET_MS`).
pub static CLOCK_OFFSET_MS: AtomicU64 = AtomicU64::new(0);

/// Moves the clock of the module loaded in this process forward by `by`
/// (both its wall clock and the monotonic clock its TTLs and intervals run
/// on), through the test-only `HSME_TestAdvanceClock`, instead of sleeping.
/// Needs `HSM_ENVELOPE_TEST_CLOCK=1` before the module was loaded (set by
/// [`TestToken::new`]); panics otherwise. Loads the module if it is not
/// loaded yet (dlopen gives back the mapping cryptoki uses), and keeps it
/// loaded.
pub fn advance_clock(by: Duration) {
    type Advance = unsafe extern "C" fn(u64) -> cryptoki_sys::CK_RV;
    static MODULE: OnceLock<libloading::Library> = OnceLock::new();
    let lib = MODULE.get_or_init(|| {
        let path = module_path();
        // SAFETY: our own module, which has no unsafe initialisers.
        unsafe { libloading::Library::new(&path) }
            .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
    });
    // SAFETY: the symbol's C type, as include/hsm_envelope.h declares it.
    let advance = unsafe { lib.get::<Advance>(b"HSME_TestAdvanceClock\0") }
        .unwrap_or_else(|e| panic!("HSME_TestAdvanceClock: {e}"));
    let ms = u64::try_from(by.as_millis()).expect("advance_clock: too far");
    // SAFETY: takes and returns plain integers.
    let rv = unsafe { advance(ms) };
    assert_eq!(
        rv,
        cryptoki_sys::CKR_OK,
        "HSME_TestAdvanceClock({ms}) answered {rv:#x}: the module clock can \
         only move with HSM_ENVELOPE_TEST_CLOCK=1 set before the module is \
         loaded (TestToken::new sets it)"
    );
    CLOCK_OFFSET_MS.fetch_add(ms, Ordering::SeqCst);
}

/// `scripts/byok-wrap.sh ARGS`, as a customer runs it.
pub fn wrap_script(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/byok-wrap.sh"))
        .args(args)
        .output()
        .expect("scripts/byok-wrap.sh")
}

/// Wrap `material` to the import key `public` (PEM) into `out`, with
/// RSA-OAEP SHA-1 (SoftHSM2's only OAEP hash); `rsa`: an RSA key.
pub fn byok_wrap(public: &Path, material: &Path, out: &Path, rsa: bool) {
    let mut args = vec!["--oaep-hash", "sha1"];
    if rsa {
        args.push("--rsa");
    }
    let paths = [public, material, out].map(|p| p.to_str().unwrap().to_string());
    args.extend(paths.iter().map(String::as_str));
    let o = wrap_script(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
