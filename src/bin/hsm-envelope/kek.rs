//! `hsm-envelope kek ...`: KEK versions on the HSM.

use serde_json::{json, Value};

use hsm_envelope::admin::Admin;
use hsm_envelope::backend::{import, rsa};
use hsm_envelope::envelope::kek_scope::KekScope;
use hsm_envelope::envelope::record::WrapAlg;
use hsm_envelope::store::{KekState, KekVersionRow};

use std::path::Path;

use zeroize::Zeroizing;

use crate::cli::{ImportKind, KekKind};
use crate::exit;
use crate::output::{opt_time, table, time, Failure, Report};

/// The transfer blob of `kek import`, read before the PIN is asked for.
pub fn read_blob(path: &Path) -> Result<Zeroizing<Vec<u8>>, Failure> {
    // The largest blob: a 4096-bit OAEP block and a KWP'd 8192-bit PKCS#8 key.
    const MAX_BLOB: u64 = 16 * 1024;
    let meta = std::fs::metadata(path).map_err(|e| {
        Failure::new(
            exit::USAGE,
            format!("cannot read the transfer file {}: {e}", path.display()),
        )
    })?;
    if meta.len() > MAX_BLOB {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "{} is {} bytes: not a key transfer file (at most {MAX_BLOB})",
                path.display(),
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        Failure::new(
            exit::USAGE,
            format!("cannot read the transfer file {}: {e}", path.display()),
        )
    })
}

fn version_json(r: &KekVersionRow, records: u64) -> Value {
    json!({
        "version": r.version,
        "kind": r.kind,
        "state": r.state.as_str(),
        "created": r.created,
        "primary_since": r.primary_since,
        "retired": r.retired,
        "records": records,
    })
}

pub fn create(
    admin: &Admin,
    hsm: Option<&str>,
    kind: KekKind,
    primary: bool,
) -> Result<Report, Failure> {
    let k = admin.env.kek_scope(hsm)?;
    let v = k.create_version(Some(kind.kek_type()), primary)?;
    let mut text = if primary {
        format!(
            "{}: created v{v} ({}) on the HSM; it is now primary\n",
            k.describe(),
            kind.as_str()
        )
    } else {
        format!(
            "{}: created v{v} ({}) on the HSM, decrypt-only; promote it with `hsm-envelope kek set-primary {v}`\n",
            k.describe(),
            kind.as_str()
        )
    };
    let mut doc = json!({
        "kek_label": k.kek_label(),
        "hsm": k.hsm(),
        "version": v,
        "kind": kind.as_str(),
        "primary": primary,
    });
    let done = if primary {
        format!("v{v} was created and is primary")
    } else {
        format!("v{v} was created")
    };
    audit_key(admin, &done, &mut text, &mut doc)?;
    Ok(Report::new(text, doc))
}

/// After a KEK operation: make sure the audit HMAC key exists on the token
/// (issue 5: it is made by new-token.sh and by `kek create`). A failure is
/// reported with the KEK operation's outcome, so nobody repeats it blindly.
fn audit_key(admin: &Admin, done: &str, text: &mut String, doc: &mut Value) -> Result<(), Failure> {
    let label = admin.config.audit_hmac_label.clone();
    match crate::audit::ensure_key(admin) {
        Ok(made) => {
            if made {
                text.push_str(&format!(
                    "audit HMAC key '{label}' created on the HSM (it authenticates the audit log's checkpoints)\n"
                ));
            }
            if let Value::Object(m) = doc {
                m.insert(
                    "audit_hmac_key".into(),
                    json!({"label": label, "created": made}),
                );
            }
            Ok(())
        }
        Err(e) => {
            let f = Failure::from(e);
            let mut extra = doc.clone();
            if let Value::Object(m) = &mut extra {
                m.insert(
                    "audit_hmac_key".into(),
                    json!({"label": label, "created": false, "error": f.message}),
                );
            }
            Err(Failure::new(
                f.code,
                format!(
                    "KEK '{}': {done}, but the audit HMAC key '{label}' could not be checked or created: {}",
                    admin.env.kek_label(),
                    f.message
                ),
            )
            .with_extra(extra))
        }
    }
}

pub fn rotate(admin: &Admin, hsm: Option<&str>) -> Result<Report, Failure> {
    let k = admin.env.kek_scope(hsm)?;
    let previous = k.primary()?;
    let v = k.rotate()?;
    let pending = admin.env.pending_rewrap()?;
    let refresh = admin.config.refresh_secs;
    let mut text = format!(
        "{}: v{v} is now primary (was v{previous}). New DEKs wrap under it; running processes switch within refresh_secs ({refresh} s).\n",
        k.describe()
    );
    if pending > 0 {
        text.push_str(&format!(
            "{pending} record(s) are under older versions: run `hsm-envelope rewrap`.\n"
        ));
    }
    let mut doc = json!({
        "kek_label": k.kek_label(),
        "hsm": k.hsm(),
        "previous_primary": previous,
        "primary": v,
        "pending_rewrap": pending,
        "refresh_secs": refresh,
    });
    audit_key(
        admin,
        &format!("v{v} was created and is primary (was v{previous})"),
        &mut text,
        &mut doc,
    )?;
    Ok(Report::new(text, doc))
}

pub fn list(admin: &Admin, hsm: Option<&str>) -> Result<Report, Failure> {
    let k = admin.env.kek_scope(hsm)?;
    let versions = k.versions()?;
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|(r, n)| {
            vec![
                format!("v{}", r.version),
                r.kind.clone(),
                r.state.as_str().to_string(),
                time(r.created),
                opt_time(r.primary_since),
                n.to_string(),
            ]
        })
        .collect();
    let place = match hsm {
        None => format!(
            " on token '{}' (slot {})",
            admin.config.token_label, admin.module_slot
        ),
        Some(_) => String::new(),
    };
    let text = format!(
        "{}{place}:\n{}",
        k.describe(),
        table(
            &[
                "VERSION",
                "KIND",
                "STATE",
                "CREATED",
                "PRIMARY SINCE",
                "RECORDS"
            ],
            &rows
        )
    );
    let primary = versions
        .iter()
        .find(|(r, _)| r.state == KekState::Primary)
        .map(|(r, _)| r.version);
    Ok(Report::new(
        text,
        json!({
            "kek_label": k.kek_label(),
        "hsm": k.hsm(),
            "token": admin.config.token_label,
            "slot": admin.module_slot,
            "primary": primary,
            "versions": versions.iter().map(|(r, n)| version_json(r, *n)).collect::<Vec<_>>(),
        }),
    ))
}

/// The version's row and record count, or a refusal naming what exists.
fn find_version(k: &KekScope<'_>, version: u32) -> Result<(KekVersionRow, u64), Failure> {
    let versions = k.versions()?;
    let known: Vec<String> = versions
        .iter()
        .map(|(r, _)| format!("v{} ({})", r.version, r.state.as_str()))
        .collect();
    versions
        .into_iter()
        .find(|(r, _)| r.version == version)
        .ok_or_else(|| {
            Failure::new(
                exit::FAILED,
                format!(
                    "{} has no version {version} (versions: {})",
                    k.describe(),
                    known.join(", ")
                ),
            )
        })
}

pub fn set_primary(admin: &Admin, hsm: Option<&str>, version: u32) -> Result<Report, Failure> {
    let k = admin.env.kek_scope(hsm)?;
    let (row, _) = find_version(&k, version)?;
    match row.state {
        KekState::Destroyed => {
            return Err(Failure::new(
                exit::FAILED,
                format!("v{version} is destroyed and cannot be primary"),
            ))
        }
        KekState::Primary => {
            return Ok(Report::new(
                format!("{}: v{version} is already primary\n", k.describe()),
                json!({
                    "kek_label": k.kek_label(),
                    "hsm": k.hsm(),
                    "primary": version,
                    "changed": false,
                }),
            ))
        }
        KekState::DecryptOnly => {}
    }
    let previous = k.primary()?;
    k.set_primary(version)?;
    let pending = admin.env.pending_rewrap()?;
    Ok(Report::new(
        format!(
            "{}: v{version} is now primary (was v{previous}); {pending} record(s) under other versions\n",
            k.describe()
        ),
        json!({
            "kek_label": k.kek_label(),
        "hsm": k.hsm(),
            "previous_primary": previous,
            "primary": version,
            "changed": true,
            "pending_rewrap": pending,
        }),
    ))
}

pub fn destroy_version(admin: &Admin, hsm: Option<&str>, version: u32) -> Result<Report, Failure> {
    let k = admin.env.kek_scope(hsm)?;
    let (row, records) = find_version(&k, version)?;
    let refuse = |msg: String| {
        Failure::new(exit::FAILED, msg).with_extra(json!({
            "kek_label": k.kek_label(),
        "hsm": k.hsm(),
            "version": version,
            "state": row.state.as_str(),
            "records": records,
        }))
    };
    match row.state {
        KekState::Primary => {
            return Err(refuse(format!(
                "refused: v{version} is the primary version; rotate or set another primary first"
            )))
        }
        KekState::Destroyed => return Err(refuse(format!("v{version} is already destroyed"))),
        KekState::DecryptOnly => {}
    }
    if records > 0 {
        return Err(refuse(format!(
            "refused: {records} record(s) still need v{version}; run `hsm-envelope rewrap` first"
        )));
    }
    // The library checks primary and references again, under its own reads,
    // and refuses within refresh_secs of the version's retirement.
    let left = k
        .destroy_version(version)
        .map_err(|e| Failure::from(e).with_extra(json!({"version": version})))?;
    let not_on: Vec<Value> = left
        .iter()
        .map(|(name, why)| json!({"hsm": name, "why": why}))
        .collect();
    let doc = json!({
        "kek_label": k.kek_label(),
        "hsm": k.hsm(),
        "version": version,
        "destroyed": true,
        "not_destroyed_on": not_on,
    });
    let text = format!("{}: v{version} destroyed on the HSM\n", k.describe());
    if !left.is_empty() {
        let names: Vec<String> = left
            .iter()
            .map(|(name, why)| format!("'{name}' ({why})"))
            .collect();
        return Err(Failure::new(
            exit::FAILED,
            format!(
                "v{version} destroyed on main but not on replica(s) {}: destroy it there",
                names.join(", ")
            ),
        )
        .with_report(Report::new(text, doc)));
    }
    Ok(Report::new(text, doc))
}

pub fn import_key(
    admin: &Admin,
    hsm: Option<&str>,
    out: Option<&Path>,
    new: bool,
    bits: u32,
) -> Result<Report, Failure> {
    let k = admin.env.kek_scope(hsm)?;
    let info = k.import_key(new, bits)?;
    let pem = rsa::spki_pem(&info.spki);
    let oaep = import::oaep_name(info.oaep);
    let hash = if info.oaep == WrapAlg::RsaOaepSha256 {
        "sha256"
    } else {
        "sha1"
    };
    let mut text = String::new();
    match out {
        Some(path) => {
            std::fs::write(path, &pem).map_err(|e| {
                Failure::new(
                    exit::FAILED,
                    format!("cannot write {}: {e}", path.display()),
                )
            })?;
            text.push_str(&format!(
                "{}: the {}-bit import key's public half is in {}\n",
                k.describe(),
                info.bits,
                path.display()
            ));
        }
        None => text.push_str(&pem),
    }
    text.push_str(&format!(
        "Wrap the key material to it as: {oaep} of a fresh AES-256 key, followed by the material wrapped with that key by AES-KWP (RFC 5649); e.g. `scripts/byok-wrap.sh --oaep-hash {hash} PUBLIC.pem MATERIAL BLOB`.\nThen: hsm-envelope kek import --type aes256|rsa --in BLOB\n"
    ));
    Ok(Report::new(
        text,
        json!({
            "kek_label": k.kek_label(),
        "hsm": k.hsm(),
            "public_key_pem": pem,
            "bits": info.bits,
            "oaep_hash": hash,
            "wrapping": format!("{oaep}, then AES-KWP (RFC 5649)"),
            "out": out.map(|p| p.display().to_string()),
        }),
    ))
}

pub fn import(
    admin: &Admin,
    hsm: Option<&str>,
    kind: ImportKind,
    blob: &[u8],
    primary: bool,
) -> Result<Report, Failure> {
    let k = admin.env.kek_scope(hsm)?;
    let v = k.import_version(blob, kind.material(), primary)?;
    let kind_name = k
        .versions()?
        .into_iter()
        .find(|(r, _)| r.version == v)
        .map(|(r, _)| r.kind)
        .unwrap_or_default();
    let mut text = format!(
        "{}: imported v{v} ({kind_name}){}; the import key was destroyed\n",
        k.describe(),
        if primary {
            ", now primary"
        } else {
            ", decrypt-only; promote it with `hsm-envelope kek set-primary`"
        }
    );
    let mut doc = json!({
        "kek_label": k.kek_label(),
        "hsm": k.hsm(),
        "version": v,
        "kind": kind_name,
        "primary": primary,
        "imported": true,
    });
    audit_key(admin, &format!("v{v} was imported"), &mut text, &mut doc)?;
    Ok(Report::new(text, doc))
}

/// `kek --hsm REPLICA import --kek-version N`: main's version N into a replica.
pub fn import_into_replica(
    admin: &Admin,
    hsm: Option<&str>,
    kind: ImportKind,
    blob: &[u8],
    version: u32,
) -> Result<Report, Failure> {
    let k = admin.env.kek_scope(hsm)?;
    k.import_into_replica(blob, kind.material(), version)?;
    Ok(Report::new(
        format!(
            "{}: v{version} imported; it opens what main seals under v{version}; the import key was destroyed\n",
            k.describe()
        ),
        json!({
            "kek_label": k.kek_label(),
            "hsm": k.hsm(),
            "version": version,
            "imported": true,
            "agrees_with_main": true,
        }),
    ))
}
