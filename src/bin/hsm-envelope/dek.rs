//! `hsm-envelope dek list`.

use serde_json::json;

use hsm_envelope::admin::Admin;

use crate::output::{hex, label, opt_time, table, time, Failure, Report};

pub fn list(admin: &Admin) -> Result<Report, Failure> {
    let deks = admin.env.with_store(|st| Ok(st.list_for_admin()?))?;
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
            ]
        })
        .collect();
    let text = if deks.is_empty() {
        "no token DEKs\n".to_string()
    } else {
        table(
            &["LABEL", "ID", "CKA_ID", "KEK", "CREATED", "LAST USED"],
            &rows,
        )
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
        })).collect::<Vec<_>>(),
        "count": deks.len(),
    });
    Ok(Report::new(text, doc))
}
