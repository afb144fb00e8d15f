//! What a command prints: text for people, or one JSON document on stdout.

use serde_json::{json, Value};

/// A command's result: the text and the JSON form of the same facts.
pub struct Report {
    pub text: String,
    pub json: Value,
}

impl Report {
    pub fn new(text: impl Into<String>, json: Value) -> Self {
        Report {
            text: text.into(),
            json,
        }
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", pretty(&self.json));
        } else if !self.text.is_empty() {
            print!("{}", self.text);
            if !self.text.ends_with('\n') {
                println!();
            }
        }
    }
}

/// A failure: exit code, message, and optionally a full report (`status`
/// still shows what it found) or extra JSON fields.
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub report: Option<Report>,
    pub extra: Option<Value>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            report: None,
            extra: None,
        }
    }

    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }

    pub fn with_report(mut self, report: Report) -> Self {
        self.report = Some(report);
        self
    }

    pub fn print(&self, json: bool) {
        eprintln!("hsm-envelope: error: {}", self.message);
        if json {
            let mut doc = match &self.report {
                Some(r) => r.json.clone(),
                None => json!({}),
            };
            if let Value::Object(m) = &mut doc {
                m.insert("error".into(), Value::String(self.message.clone()));
                m.insert("exit_code".into(), json!(self.code));
                if let Some(Value::Object(extra)) = &self.extra {
                    for (k, v) in extra {
                        m.insert(k.clone(), v.clone());
                    }
                }
            }
            println!("{}", pretty(&doc));
        } else if let Some(r) = &self.report {
            r.print(false);
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn time(secs: i64) -> String {
    hsm_envelope::clock::rfc3339(secs)
}

/// The current time in unix seconds.
pub fn now_secs() -> i64 {
    hsm_envelope::clock::unix_secs()
}

/// An optional time, or `-`.
pub fn opt_time(secs: Option<i64>) -> String {
    secs.map(time).unwrap_or_else(|| "-".into())
}

pub use hsm_envelope::hex::encode as hex;

/// A label for display: text if printable UTF-8, else hex.
pub fn label(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => format!("0x{}", hex(b)),
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_iso8601() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(time(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(time(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn labels_and_tables() {
        assert_eq!(label(b"dek1"), "dek1");
        assert_eq!(label(&[0xff, 0]), "0xff00");
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
