//! `hsm-envelope dek ...`: list token DEKs; list, recover and purge
//! soft-deleted ones.

use serde_json::json;

use hsm_envelope::admin::Admin;
use hsm_envelope::error::Error;
use hsm_envelope::store::DeletedRow;

use crate::exit;
use crate::output::{hex, label, now_secs, opt_time, table, time, Failure, Report};

/// How much of `limit` `used` is, in percent.
fn percent(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        return 100.0;
    }
    used as f64 * 100.0 / limit as f64
}

pub fn list(admin: &Admin, near_limit: Option<u8>) -> Result<Report, Failure> {
    let limit = admin.config.gcm_invocation_limit;
    let all = admin.env.with_store(|st| Ok(st.list_for_admin()?))?;
    let deks: Vec<_> = all
        .into_iter()
        .filter(|d| match near_limit {
            None => true,
            Some(p) => d
                .gcm_invocations
                .is_some_and(|n| percent(n, limit) >= f64::from(p)),
        })
        .collect();
    let rows: Vec<Vec<String>> = deks
        .iter()
        .map(|d| {
            vec![
                label(&d.label),
                hex(&d.id),
                if d.ckaid.is_empty() {
                    "-".into()
                } else {
                    hex(&d.ckaid)
                },
                format!("{} v{}", d.kek_label, d.kek_version),
                time(d.created),
                opt_time(d.last_used),
                match d.gcm_invocations {
                    Some(n) => format!("{n} ({:.1}%)", percent(n, limit)),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let text = match (deks.is_empty(), near_limit) {
        (true, None) => "no token DEKs\n".to_string(),
        (true, Some(p)) => {
            format!("no token DEK has used {p}% or more of its GCM invocation limit ({limit})\n")
        }
        (false, _) => {
            let mut t = table(
                &[
                    "LABEL",
                    "ID",
                    "CKA_ID",
                    "KEK",
                    "CREATED",
                    "LAST USED",
                    "GCM USES",
                ],
                &rows,
            );
            t.push_str(&format!("GCM invocation limit: {limit} per key\n"));
            t
        }
    };
    let doc = json!({
        "deks": deks.iter().map(|d| json!({
            "label": String::from_utf8_lossy(&d.label),
            "id": hex(&d.id),
            "cka_id": hex(&d.ckaid),
            "kek_label": d.kek_label,
            "kek_version": d.kek_version,
            "created": d.created,
            "updated": d.updated,
            "last_used": d.last_used,
            "gcm_invocations": d.gcm_invocations,
            "gcm_used_percent": d.gcm_invocations.map(|n| percent(n, limit)),
        })).collect::<Vec<_>>(),
        "count": deks.len(),
        "gcm_invocation_limit": limit,
        "near_limit_percent": near_limit,
    });
    Ok(Report::new(text, doc))
}

/// What `recover` and `purge` say about an id that is not soft-deleted.
fn not_deleted(admin: &Admin, id: &[u8; 16]) -> Failure {
    let live = admin
        .env
        .with_store(|st| Ok(st.list_for_admin()?))
        .map(|deks| deks.into_iter().find(|d| d.id == *id));
    let msg = match live {
        Ok(Some(d)) => format!(
            "DEK {} ('{}') is not deleted: it is in use (see `hsm-envelope dek list`)",
            hex(id),
            label(&d.label)
        ),
        _ => format!(
            "no soft-deleted DEK {} (see `hsm-envelope dek deleted`; a purged DEK is gone for good)",
            hex(id)
        ),
    };
    Failure::new(exit::FAILED, msg).with_extra(json!({ "id": hex(id) }))
}

fn find_deleted(admin: &Admin, id: &[u8; 16]) -> Result<DeletedRow, Failure> {
    admin
        .env
        .deleted()?
        .into_iter()
        .find(|r| r.id == *id)
        .ok_or_else(|| not_deleted(admin, id))
}

fn purge_protection(admin: &Admin) -> Result<bool, Failure> {
    Ok(admin.env.with_store(|st| Ok(st.purge_protection()?))?)
}

/// Whether a deleted DEK may be purged at `now`: the store refuses only
/// under purge protection before `purge_after`.
fn purge_allowed(protection: bool, purge_after: i64, now: i64) -> bool {
    !protection || now >= purge_after
}

pub fn deleted(admin: &Admin) -> Result<Report, Failure> {
    let rows = admin.env.deleted()?;
    let protection = purge_protection(admin)?;
    let retention = admin.config.retention_days;
    let now = now_secs();
    let mut text = format!(
        "purge protection {}\nretention        {retention} days (for DEKs deleted from now on)\n",
        if protection {
            "on (a deleted DEK may be purged only after its retention period)"
        } else {
            "off (a deleted DEK may be purged at any time)"
        }
    );
    if rows.is_empty() {
        text.push_str("no soft-deleted DEKs\n");
    } else {
        let table_rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    label(&r.label),
                    hex(&r.id),
                    format!("v{}", r.kek_version),
                    time(r.deleted_at),
                    time(r.purge_after),
                    if purge_allowed(protection, r.purge_after, now) {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                ]
            })
            .collect();
        text.push_str(&table(
            &[
                "LABEL",
                "ID",
                "KEK VERSION",
                "DELETED",
                "PURGE AFTER",
                "PURGE NOW",
            ],
            &table_rows,
        ));
    }
    let doc = json!({
        "purge_protection": protection,
        "retention_days": retention,
        "now": now,
        "deleted": rows.iter().map(|r| json!({
            "label": String::from_utf8_lossy(&r.label),
            "id": hex(&r.id),
            "kek_version": r.kek_version,
            "deleted_at": r.deleted_at,
            "purge_after": r.purge_after,
            "purge_allowed": purge_allowed(protection, r.purge_after, now),
        })).collect::<Vec<_>>(),
        "count": rows.len(),
    });
    Ok(Report::new(text, doc))
}

pub fn recover(admin: &Admin, id: &[u8; 16]) -> Result<Report, Failure> {
    let row = find_deleted(admin, id)?;
    admin
        .env
        .recover(id)
        .map_err(|e| Failure::from(e).with_extra(json!({ "id": hex(id) })))?;
    Ok(Report::new(
        format!(
            "DEK {} ('{}') recovered: usable again with its attributes (KEK version v{})\n",
            hex(id),
            label(&row.label),
            row.kek_version
        ),
        json!({
            "id": hex(id),
            "label": String::from_utf8_lossy(&row.label),
            "kek_version": row.kek_version,
            "recovered": true,
        }),
    ))
}

pub fn purge(admin: &Admin, id: &[u8; 16]) -> Result<Report, Failure> {
    let row = find_deleted(admin, id)?;
    let protection = purge_protection(admin)?;
    let now = now_secs();
    let refusal = |msg: String| {
        Failure::new(exit::FAILED, msg).with_extra(json!({
            "id": hex(id),
            "purge_protection": protection,
            "purge_after": row.purge_after,
            "purged": false,
        }))
    };
    if !purge_allowed(protection, row.purge_after, now) {
        let days = (row.purge_after - now + 86_399) / 86_400;
        return Err(refusal(format!(
            "refused: purge protection is on and DEK {} ('{}') is retained until {} ({days} more day(s)); it can still be recovered with `hsm-envelope dek recover {}`",
            hex(id),
            label(&row.label),
            time(row.purge_after),
            hex(id)
        )));
    }
    // The store checks again, in the transaction that deletes the row.
    admin.env.purge(id, now).map_err(|e| match e {
        Error::Admin(m) => refusal(format!("refused: {m}")),
        other => Failure::from(other).with_extra(json!({ "id": hex(id), "purged": false })),
    })?;
    Ok(Report::new(
        format!(
            "DEK {} ('{}') purged for good: its record is gone from the store, and data encrypted under it can no longer be decrypted\n",
            hex(id),
            label(&row.label)
        ),
        json!({
            "id": hex(id),
            "label": String::from_utf8_lossy(&row.label),
            "kek_version": row.kek_version,
            "purged": true,
        }),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_is_allowed_after_retention_or_without_protection() {
        use super::purge_allowed;
        assert!(purge_allowed(false, 100, 0));
        assert!(!purge_allowed(true, 100, 99));
        assert!(purge_allowed(true, 100, 100));
        assert!(purge_allowed(true, 100, 101));
    }
}
