//! The token the benches run on: `softhsm-config/new-token.sh` in a
//! temporary directory (removed when the returned value drops).

use std::path::Path;
use std::process::Command;

use crate::Res;

/// The token: softhsm-config/new-token.sh in a temporary directory, and the
/// two environment variables both modules read, set before either is loaded.
pub fn make_token(pin: &str) -> Res<tempfile::TempDir> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("softhsm-config/new-token.sh");
    if !script.is_file() {
        return Err(format!("{} not found", script.display()));
    }
    let dir = tempfile::Builder::new()
        .prefix("hsm-envelope-bench-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .env("PIN", pin)
        .env("SO_PIN", "5678")
        .output()
        .map_err(|e| format!("cannot run bash {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ));
    }
    let root = dir
        .path()
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.path().display()))?;
    // Single-threaded here, before any module is loaded.
    std::env::set_var("SOFTHSM2_CONF", root.join("softhsm2.conf"));
    std::env::set_var("HSM_ENVELOPE_CONF", root.join("hsm-envelope.toml"));
    Ok(dir)
}
