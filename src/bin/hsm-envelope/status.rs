//! `hsm-envelope status`: each check in order, and what it found; a failed
//! check still shows the ones before it. Then the KEK versions, the records,
//! the soft-deleted DEKs, the retention period and purge protection.

use serde_json::{json, Value};

use hsm_envelope::admin::Admin;
use hsm_envelope::config::Config;
use hsm_envelope::error::Error;
use hsm_envelope::store::KekState;

use crate::exit;
use crate::output::{now_secs, opt_time, table, time, Failure, Report};

/// How far connecting got before `e`: 0 module, 1 token, 2 login.
fn failed_stage(e: &Error) -> usize {
    match e {
        Error::BackendLoad(_) | Error::Config(_) => 0,
        Error::Backend(b) if matches!(b.func, "C_GetFunctionList" | "C_Initialize") => 0,
        Error::Backend(b) if matches!(b.func, "C_GetSlotList" | "C_GetTokenInfo") => 1,
        Error::Admin(_) => 1,
        _ => 2,
    }
}

/// The configured store: its engine (`sqlite`, `postgresql`) and where it
/// is (a path, or a URL without its password).
struct Store {
    engine: &'static str,
    location: String,
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAILED"
    }
}

/// The software AES module and the FIPS state: one text line and the
/// JSON fields. `"fips": true` means approved-only: the FIPS build, its
/// AWS-LC FIPS module in FIPS mode with self-tests passed, `fips_mode = true`.
fn fips(fips_mode: bool) -> (String, Value) {
    let aes = hsm_envelope::crypto::module_state();
    let providers = hsm_envelope::crypto::provider::names();
    let in_fips_mode = aes.fips.is_ok();
    let text = match (&aes.fips, fips_mode) {
        (Ok(()), true) => format!(
            "fips             on: {}, FIPS mode, self-tests passed; fips_mode = true (approved-only)\n",
            aes.version
        ),
        (Ok(()), false) => format!(
            "fips             off: fips_mode = false ({} in FIPS mode, self-tests passed)\n",
            aes.version
        ),
        (Err(why), _) => format!("fips             off: {why} (AES on {providers}: {})\n", aes.version),
    };
    let doc = json!({
        "fips": in_fips_mode && fips_mode,
        "fips_build": hsm_envelope::crypto::FIPS_BUILD,
        "fips_mode": fips_mode,
        "aes_module": aes.version,
        "aes_module_fips_mode": in_fips_mode,
        "aes_providers": providers,
    });
    (text, doc)
}

/// Adds `extra`'s fields to `doc`.
fn merge(doc: &mut Value, extra: Value) {
    if let (Value::Object(d), Value::Object(e)) = (doc, extra) {
        d.extend(e);
    }
}

pub fn run(config: Config, pin: &str) -> Result<Report, Failure> {
    let (fips_text, fips_doc) = fips(config.fips_mode);
    let module = config.backend_module.display().to_string();
    let token = config.token_label.clone();
    let kek_label = config.kek_label.clone();
    let location = config.store_location();
    let store = Store {
        engine: location.engine_name(),
        location: location.to_string(),
    };
    let admin = match Admin::connect(config, pin) {
        Ok(a) => a,
        Err(e) => {
            let stage = failed_stage(&e);
            let msg = crate::connect_message(&e);
            let text = format!(
                "backend module   {module}: {}\ntoken            '{token}': {}\nlogin            {}\n{fips_text}",
                mark(stage > 0),
                if stage > 0 { mark(stage > 1) } else { "-" },
                if stage > 1 { mark(false) } else { "-" },
            );
            let mut doc = json!({
                "backend_module": {"path": module, "loaded": stage > 0},
                "token": {"label": token, "found": stage > 1},
                "login": false,
                "store": store.location,
                "store_engine": store.engine,
                "healthy": false,
            });
            merge(&mut doc, fips_doc);
            return Err(Failure::new(exit::BACKEND, msg).with_report(Report::new(text, doc)));
        }
    };
    let result = details(&admin, &module, &token, &kek_label, &store);
    admin.close();
    let with_fips = |r: &mut Report| {
        r.text.push_str(&fips_text);
        merge(&mut r.json, fips_doc.clone());
    };
    match result {
        Ok(mut r) => {
            with_fips(&mut r);
            Ok(r)
        }
        Err(mut f) => {
            if let Some(r) = f.report.as_mut() {
                with_fips(r);
            }
            Err(f)
        }
    }
}

fn details(
    admin: &Admin,
    module: &str,
    token: &str,
    kek_label: &str,
    store: &Store,
) -> Result<Report, Failure> {
    let env = &admin.env;
    // The slot id applications see through the module, not the backend's.
    let slot = admin.module_slot;
    let mut text = format!(
        "backend module   {module}: ok\ntoken            '{token}': ok (slot {slot})\nlogin            ok\nstore            {} {}\n",
        store.engine, store.location
    );
    let mut doc = json!({
        "backend_module": {"path": module, "loaded": true},
        "token": {"label": token, "found": true, "slot": slot, "backend_slot": admin.slot.id()},
        "login": true,
        "store": store.location,
        "store_engine": store.engine,
        "kek_label": kek_label,
    });
    members(admin, &mut text, &mut doc);
    let facts = env
        .versions()
        .and_then(|v| Ok((v, env.with_store(|st| Ok(st.record_counts()?))?)))
        .and_then(|(v, counts)| Ok((v, counts, env.pending_rewrap()?)))
        .and_then(|(v, c, p)| Ok((v, c, p, env.deleted()?)))
        .and_then(|(v, c, p, d)| {
            Ok((v, c, p, d, env.with_store(|st| Ok(st.purge_protection()?))?))
        });
    let (versions, counts, pending, deleted_rows, protection) = match facts {
        Ok(f) => f,
        Err(e) => {
            let f = Failure::from(e);
            text.push_str(&format!("KEK '{kek_label}'        FAILED: {}\n", f.message));
            if let Value::Object(m) = &mut doc {
                m.insert("healthy".into(), json!(false));
            }
            return Err(Failure::new(f.code, f.message).with_report(Report::new(text, doc)));
        }
    };
    let deleted = deleted_rows.len() as u64;
    let now = now_secs();
    let purgeable = deleted_rows
        .iter()
        .filter(|r| !protection || now >= r.purge_after)
        .count();
    let retention = admin.config.retention_days;
    let primary = versions
        .iter()
        .find(|(r, _)| r.state == KekState::Primary)
        .map(|(r, _)| r.version);
    let total: u64 = counts.iter().map(|(_, _, n)| n).sum();
    // Records of several HSMs are under the set's label: ours too.
    let set_label = env.kek_mode().is_set().then(|| env.set_label());
    let other_labels: u64 = counts
        .iter()
        .filter(|(l, _, _)| l != kek_label && Some(l) != set_label.as_ref())
        .map(|(_, _, n)| n)
        .sum();
    text.push_str(&format!(
        "KEK '{kek_label}'        primary v{}\n",
        primary.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
    ));
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|(r, n)| {
            vec![
                format!("  v{}", r.version),
                r.kind.clone(),
                r.state.as_str().to_string(),
                time(r.created),
                opt_time(r.primary_since),
                n.to_string(),
            ]
        })
        .collect();
    text.push_str(&table(
        &[
            "  VERSION",
            "KIND",
            "STATE",
            "CREATED",
            "PRIMARY SINCE",
            "RECORDS",
        ],
        &rows,
    ));
    text.push_str(&format!(
        "records          {total} ({deleted} soft-deleted, still recoverable)\n"
    ));
    if other_labels > 0 {
        text.push_str(&format!(
            "                 {other_labels} under other KEK labels (not openable with this configuration)\n"
        ));
    }
    text.push_str(&format!("pending re-wrap  {pending}\n"));
    text.push_str(&format!(
        "deleted DEKs     {deleted} ({purgeable} may be purged now; see `hsm-envelope dek deleted`)\nretention        {retention} days\npurge protection {}\n",
        if protection { "on" } else { "off" }
    ));
    if let Value::Object(m) = &mut doc {
        m.insert("primary".into(), json!(primary));
        m.insert(
            "versions".into(),
            json!(versions
                .iter()
                .map(|(r, n)| json!({
                    "version": r.version,
                    "kind": r.kind,
                    "state": r.state.as_str(),
                    "created": r.created,
                    "primary_since": r.primary_since,
                    "retired": r.retired,
                    "records": n,
                }))
                .collect::<Vec<_>>()),
        );
        m.insert("records".into(), json!(total));
        m.insert("records_soft_deleted".into(), json!(deleted));
        m.insert("records_other_kek_labels".into(), json!(other_labels));
        m.insert("pending_rewrap".into(), json!(pending));
        m.insert("deleted_deks".into(), json!(deleted));
        m.insert("deleted_purgeable_now".into(), json!(purgeable));
        m.insert("retention_days".into(), json!(retention));
        m.insert("purge_protection".into(), json!(protection));
        m.insert("healthy".into(), json!(true));
    }
    Ok(Report::new(text, doc))
}

/// With replica HSMs (issue 13): each member's health as this tool's own
/// check found it (logged in, sealed a test value on one, opened it on
/// each): up, down (unreachable) or refused (its KEK disagrees).
fn members(admin: &Admin, text: &mut String, doc: &mut Value) {
    if admin.config.hsm.is_empty() {
        return;
    }
    let env = &admin.env;
    // Members with KEKs of their own: each one's primary, checked there.
    let primaries = if env.kek_mode().is_set() {
        env.probe_set_members()
    } else {
        Vec::new()
    };
    let states = env.member_states();
    text.push_str(&format!(
        "kek mode         {}\n",
        admin.config.kek_mode.name()
    ));
    let mut list = Vec::new();
    for (i, (name, state)) in states.iter().enumerate() {
        let why = state.why().map(|w| format!(" ({w})")).unwrap_or_default();
        let primary = primaries.get(i).copied().flatten();
        let kek = primary
            .map(|v| format!(", own KEK primary v{v}"))
            .unwrap_or_default();
        text.push_str(&format!(
            "hsm member       '{name}': {}{why}{kek}\n",
            state.name()
        ));
        list.push(json!({
            "name": name,
            "state": state.name(),
            "why": state.why(),
            "primary": primary,
        }));
    }
    let set = env.kek_mode().is_set().then(|| {
        let label = env.set_label();
        let row = env
            .with_store(|st| Ok(st.primary_kek(&label)?))
            .ok()
            .flatten();
        let combination = row.as_ref().map(|r| r.kind.clone());
        text.push_str(&format!(
            "kek set          '{label}' primary {}\n",
            row.as_ref()
                .map(|r| format!("v{} ({})", r.version, r.kind))
                .unwrap_or_else(|| "- (no record made yet)".into())
        ));
        json!({
            "label": label,
            "primary": row.map(|r| r.version),
            "combination": combination,
        })
    });
    if let Value::Object(m) = doc {
        m.insert("kek_mode".into(), json!(admin.config.kek_mode.name()));
        m.insert("hsm_members".into(), json!(list));
        if let Some(set) = set {
            m.insert("kek_set".into(), set);
        }
    }
}
