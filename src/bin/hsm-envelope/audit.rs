//! `hsm-envelope audit verify`: the hash chain of every line, and every
//! checkpoint's HMAC recomputed on the HSM.

use std::path::{Path, PathBuf};

use serde_json::json;

use hsm_envelope::admin::Admin;
use hsm_envelope::audit::{self, HsmMac};
use hsm_envelope::config::Config;
use hsm_envelope::error::Error;

use crate::exit;
use crate::output::{Failure, Report};

/// The log to verify: `--log`, else `audit_log` from the configuration.
/// Checked to be a readable file before any PIN is asked for.
pub fn log_path(log: Option<&Path>, config: &Config) -> Result<PathBuf, Failure> {
    let path = match log.filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.to_path_buf(),
        None => config.audit_log.clone().ok_or_else(|| {
            Failure::new(
                exit::USAGE,
                "no audit log to verify: give --log PATH, or set `audit_log` in the configuration (--config or HSM_ENVELOPE_CONF)",
            )
        })?,
    };
    let unreadable = |why: String| {
        Failure::new(
            exit::USAGE,
            format!("cannot read the audit log {}: {why}", path.display()),
        )
        .with_extra(json!({ "log": path.display().to_string() }))
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(unreadable("not a regular file".into())),
        Err(e) => return Err(unreadable(e.to_string())),
    }
    std::fs::File::open(&path).map_err(|e| unreadable(e.to_string()))?;
    Ok(path)
}

/// The audit HMAC key exists (or is made) on the token: `kek create` and
/// `kek rotate` call this. Returns true if it was made now.
pub fn ensure_key(admin: &Admin) -> hsm_envelope::Result<bool> {
    let label = admin.config.audit_hmac_label.as_str();
    let made = admin
        .env
        .with_session(|s| audit::hsm::ensure_key(s, label))?;
    if made {
        hsm_envelope::log_info!("audit HMAC key '{label}' created on the backend token");
    }
    Ok(made)
}

pub fn verify(admin: &Admin, path: &Path) -> Result<Report, Failure> {
    let label = admin.config.audit_hmac_label.clone();
    let shown = path.display().to_string();
    // A missing or ambiguous key is an HSM problem, not a tampered log.
    admin
        .env
        .with_session(|s| audit::hsm::find_key(s, &label))
        .map_err(|e| {
            Failure::new(
                exit::BACKEND,
                format!("cannot verify the audit log's checkpoints: {e}"),
            )
            .with_extra(json!({ "log": shown, "hmac_label": label }))
        })?;
    // Its own session; it shares the admin's login (logins are per
    // application) and is closed when `mac` is dropped, before the backend
    // is finalized.
    let session = admin
        .backend()
        .pkcs11()
        .open_ro_session(admin.slot)
        .map_err(|e| Failure::from(Error::from_cryptoki("C_OpenSession", e)))?;
    let mac = HsmMac::from_session(session, label.clone());
    let report = audit::verify(path, &mac)
        .map_err(|e| Failure::from(e).with_extra(json!({ "log": shown })))?;
    drop(mac);

    let mut text = format!(
        "audit log    {shown}\nlines        {}\ncheckpoints  {} verified on the HSM (HMAC key '{label}')\n",
        report.lines, report.checkpoints
    );
    let doc = json!({
        "log": shown,
        "hmac_label": label,
        "intact": report.is_ok(),
        "lines": report.lines,
        "checkpoints": report.checkpoints,
        "first_bad": report.first_bad.as_ref().map(|b| json!({
            "line": b.line,
            "reason": b.reason,
        })),
        "unauthenticated_tail": report.unauthenticated_tail,
    });
    match &report.first_bad {
        Some(bad) => {
            text.push_str(&format!(
                "result       NOT INTACT\nfirst bad    line {}: {}\n",
                bad.line, bad.reason
            ));
            Err(Failure::new(
                exit::FAILED,
                format!(
                    "audit log {shown} is NOT intact: first bad line {}: {}",
                    bad.line, bad.reason
                ),
            )
            .with_report(Report::new(text, doc)))
        }
        None => {
            text.push_str("result       intact\n");
            let tail = report.unauthenticated_tail;
            if tail > 0 && tail == report.lines {
                text.push_str(&format!(
                    "WARNING: no checkpoint: none of the {tail} line(s) is authenticated. They are \
                     chain-checked only; whoever can write the file could have removed or rewritten \
                     any of them.\n"
                ));
            } else if tail > 0 {
                text.push_str(&format!(
                    "WARNING: the last {tail} line(s) ({}-{}) follow the last checkpoint: they are \
                     chain-checked but NOT authenticated; whoever can write the file could have \
                     removed or rewritten them.\n",
                    report.lines - tail + 1,
                    report.lines
                ));
            } else if report.lines > 0 {
                text.push_str("every line is covered by a verified checkpoint\n");
            }
            Ok(Report::new(text, doc))
        }
    }
}
