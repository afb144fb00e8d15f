//! What each configuration key takes, checked before serde sees the file, so
//! that a mistake is reported as one line in plain words with its line
//! number ("key `refresh_secs` (line 5): expected a whole number, not the
//! string \"30\"") rather than as a multi-line TOML parser report or serde's
//! `invalid type: string "30", expected u32`.

use toml::de::{DeTable, DeValue};

/// What a key's value must be.
#[derive(Clone, Copy)]
pub enum Kind {
    /// A string (a label).
    Text,
    /// A file path, as a string.
    Path,
    /// A whole number from 0 to `max`.
    Whole {
        max: u64,
    },
    Bool,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// A Unix file mode in octal, as a string ("0600").
    Mode,
    /// A list of tables (`[[name]]`), each with these keys.
    Tables(&'static [(&'static str, Kind)]),
}

const U32: Kind = Kind::Whole {
    max: u32::MAX as u64,
};
const U64: Kind = Kind::Whole { max: u64::MAX };

/// Every key of the configuration file, in the README's order.
pub const KEYS: &[(&str, Kind)] = &[
    ("backend_module", Kind::Path),
    ("token_label", Kind::Text),
    ("kek_label", Kind::Text),
    ("passthrough_only", Kind::Bool),
    ("key_export", Kind::OneOf(&["any", "wrapped", "none"])),
    ("store_path", Kind::Path),
    ("store_url", Kind::Text),
    ("store_tls_ca", Kind::Path),
    ("store_tls_cert", Kind::Path),
    ("store_tls_key", Kind::Path),
    ("log_file", Kind::Path),
    ("log_file_mode", Kind::Mode),
    (
        "log_level",
        Kind::OneOf(&["error", "warn", "info", "debug"]),
    ),
    ("rotate_after_days", U32),
    ("refresh_secs", U64),
    ("lazy_rewrap", Kind::Bool),
    ("min_decrypt_version", U32),
    ("retention_days", U32),
    ("purge_protection", Kind::Bool),
    ("cache_soft_ttl_secs", U64),
    ("cache_hard_ttl_secs", U64),
    ("cache_max_keys", U64),
    ("audit_log", Kind::Path),
    ("audit_log_mode", Kind::Mode),
    ("audit_checkpoint_lines", U32),
    ("audit_checkpoint_secs", U64),
    ("audit_hmac_label", Kind::Text),
    ("audit_use_interval_secs", U64),
    ("gcm_iv", Kind::OneOf(&["caller", "module"])),
    ("gcm_invocation_limit", U64),
    ("gcm_invocation_block", U64),
    ("fips_mode", Kind::Bool),
    (
        "kek_mode",
        Kind::OneOf(&["single", "replicas", "any-of", "all-of"]),
    ),
    ("hsm", Kind::Tables(HSM_KEYS)),
    ("hsm_timeout_ms", U64),
];

/// The keys of one `[[hsm]]` table (see `hsms`).
pub const HSM_KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Text),
    ("backend_module", Kind::Path),
    ("token_label", Kind::Text),
    ("kek_label", Kind::Text),
    ("pin_env", Kind::Text),
    ("pin_file", Kind::Path),
];

/// 1-based line and column of byte `offset` in `text`.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The line a top-level key is written on, if it is in the file.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let table = DeTable::parse(text).ok()?;
    let table = table.get_ref();
    table
        .keys()
        .find(|k| k.get_ref().as_ref() == key)
        .map(|k| position(text, k.span().start).0)
}

/// Checks `text` against [`KEYS`]: the first problem in the file, as one
/// line, or None when serde may take it.
pub fn check(text: &str) -> Option<String> {
    let table = match DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = position(text, s.start);
                    format!("line {line}, column {col}: ")
                })
                .unwrap_or_default();
            let msg = e.message().lines().next().unwrap_or("").trim();
            return Some(format!(
                "{at}not valid TOML ({msg}); a line is `key = value`, strings in double quotes"
            ));
        }
    };
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let name = key.get_ref().as_ref();
        let line = position(text, key.span().start).0;
        let Some((_, kind)) = KEYS.iter().find(|(k, _)| *k == name) else {
            let hint = match closest(name) {
                Some(k) => format!("; did you mean `{k}`?"),
                None => "; the keys are listed in README.md under Configuration".to_string(),
            };
            return Some(format!("unknown key `{name}` (line {line}){hint}"));
        };
        if let Kind::Tables(keys) = kind {
            if let Some(problem) = check_tables(text, name, keys, value.get_ref()) {
                return Some(problem);
            }
            continue;
        }
        if let Some(want) = mismatch(*kind, value.get_ref()) {
            return Some(format!("key `{name}` (line {line}): {want}"));
        }
    }
    None
}

/// Checks each table of the list `[[name]]` against `keys`.
fn check_tables(
    text: &str,
    name: &str,
    keys: &[(&str, Kind)],
    value: &DeValue<'_>,
) -> Option<String> {
    let Some(items) = value.as_array() else {
        return Some(format!(
            "key `{name}`: expected [[{name}]] tables, not {}",
            describe(value)
        ));
    };
    for item in items.iter() {
        let Some(table) = item.get_ref().as_table() else {
            return Some(format!(
                "key `{name}`: expected [[{name}]] tables, not {}",
                describe(item.get_ref())
            ));
        };
        for (key, v) in table.iter() {
            let sub = key.get_ref().as_ref();
            let line = position(text, key.span().start).0;
            let Some((_, kind)) = keys.iter().find(|(k, _)| *k == sub) else {
                let known: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
                return Some(format!(
                    "unknown key `{sub}` in [[{name}]] (line {line}); its keys are {}",
                    known.join(", ")
                ));
            };
            if let Some(want) = mismatch(*kind, v.get_ref()) {
                return Some(format!("key `{name}.{sub}` (line {line}): {want}"));
            }
        }
    }
    None
}

/// What is wrong with `v` for `kind`, or None if it fits.
fn mismatch(kind: Kind, v: &DeValue<'_>) -> Option<String> {
    let not = |want: &str| Some(format!("expected {want}, not {}", describe(v)));
    match kind {
        Kind::Text => (!v.is_str()).then(|| not("a string in double quotes"))?,
        Kind::Path => (!v.is_str()).then(|| not("a file path in double quotes"))?,
        Kind::Bool => (!v.is_bool()).then(|| not("true or false (without quotes)"))?,
        Kind::Whole { max } => {
            let Some(i) = v.as_integer() else {
                return match v.as_str() {
                    Some(s) if s.trim().parse::<u64>().is_ok() => {
                        not(&format!("a whole number (without quotes: {})", s.trim()))
                    }
                    _ => not("a whole number"),
                };
            };
            let n = i128::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok();
            match n {
                Some(n) if (0..=i128::from(max)).contains(&n) => None,
                _ => Some(format!("expected a whole number from 0 to {max}, not {i}")),
            }
        }
        Kind::OneOf(allowed) => {
            let list = allowed
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ");
            match v.as_str() {
                Some(s) if allowed.contains(&s) => None,
                _ => not(&format!("one of {list}")),
            }
        }
        // Checked table by table in `check_tables`.
        Kind::Tables(_) => None,
        Kind::Mode => match v.as_str() {
            Some(s) if parse_mode(s).is_some() => None,
            _ => not("a file mode in octal, in double quotes, such as \"0600\" or \"0640\""),
        },
    }
}

/// A file mode written in octal ("0600", "640"): permission bits only.
pub fn parse_mode(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || s.len() > 4 || !s.chars().all(|c| ('0'..='7').contains(&c)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o777)
}

/// The value as the user wrote it, in words.
fn describe(v: &DeValue<'_>) -> String {
    if let Some(s) = v.as_str() {
        let mut shown: String = s.chars().take(60).collect();
        if shown.len() < s.len() {
            shown.push('…');
        }
        return format!("the string {shown:?}");
    }
    if let Some(b) = v.as_bool() {
        return format!("{b}");
    }
    if let Some(i) = v.as_integer() {
        return format!("the number {}", i.as_str());
    }
    if let Some(f) = v.as_float() {
        return format!("the number {}", f.as_str());
    }
    if v.is_array() {
        return "a list".into();
    }
    if v.is_table() {
        return "a table".into();
    }
    if v.is_datetime() {
        return "a date".into();
    }
    "this value".into()
}

/// The known key nearest to a misspelt one (two edits at most).
fn closest(name: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|(k, _)| (*k, edit_distance(name, k)))
        .filter(|(_, d)| *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

/// Levenshtein distance, adjacent swaps counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        check(text).unwrap_or_else(|| panic!("{text:?} passed the check"))
    }

    #[test]
    fn type_mistakes_are_one_line_in_plain_words_with_the_line() {
        assert_eq!(
            err("kek_label = \"k\"\n\nrefresh_secs = \"30\"\n"),
            "key `refresh_secs` (line 3): expected a whole number (without quotes: 30), not the string \"30\""
        );
        assert_eq!(
            err("retention_days = 2.5"),
            "key `retention_days` (line 1): expected a whole number, not the number 2.5"
        );
        assert_eq!(
            err("retention_days = -3"),
            "key `retention_days` (line 1): expected a whole number from 0 to 4294967295, not -3"
        );
        assert_eq!(
            err("rotate_after_days = 5000000000"),
            "key `rotate_after_days` (line 1): expected a whole number from 0 to 4294967295, not 5000000000"
        );
        assert_eq!(
            err("lazy_rewrap = \"yes\""),
            "key `lazy_rewrap` (line 1): expected true or false (without quotes), not the string \"yes\""
        );
        assert_eq!(
            err("kek_label = 3"),
            "key `kek_label` (line 1): expected a string in double quotes, not the number 3"
        );
        assert_eq!(
            err("store_path = [\"a\"]"),
            "key `store_path` (line 1): expected a file path in double quotes, not a list"
        );
        assert_eq!(
            err("key_export = \"some\""),
            "key `key_export` (line 1): expected one of \"any\", \"wrapped\", \"none\", not the string \"some\""
        );
        assert_eq!(
            err("log_level = \"loud\""),
            "key `log_level` (line 1): expected one of \"error\", \"warn\", \"info\", \"debug\", not the string \"loud\""
        );
        assert_eq!(
            err("log_file_mode = 600"),
            "key `log_file_mode` (line 1): expected a file mode in octal, in double quotes, such as \"0600\" or \"0640\", not the number 600"
        );
        for e in [
            err("refresh_secs = \"30\""),
            err("kek_lable = 1"),
            err("x = ["),
        ] {
            assert!(!e.contains('\n'), "{e}");
            assert!(!e.contains("invalid type"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_named_with_the_nearest_known_one() {
        assert_eq!(
            err("# c\nkek_lable = \"x\"\n"),
            "unknown key `kek_lable` (line 2); did you mean `kek_label`?"
        );
        assert_eq!(
            err("[extra]\nx = 1\n"),
            "unknown key `extra` (line 1); the keys are listed in README.md under Configuration"
        );
        assert_eq!(closest("retention_day"), Some("retention_days"));
        assert_eq!(closest("something_else"), None);
    }

    #[test]
    fn syntax_errors_are_one_line_with_line_and_column() {
        let e = err("kek_label = \"k\"\nrefresh_secs = \n");
        assert!(e.starts_with("line 2, column "), "{e}");
        assert!(e.contains("not valid TOML"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = err("kek_label = \"unclosed\n");
        assert!(e.starts_with("line 1, column "), "{e}");
    }

    #[test]
    fn good_values_pass() {
        assert_eq!(check(""), None);
        assert_eq!(
            check("refresh_secs = 30\nlog_file_mode = \"0640\"\nlog_level = \"warn\"\npassthrough_only = false\nretention_days = 1_0\n"),
            None
        );
        assert_eq!(parse_mode("0600"), Some(0o600));
        assert_eq!(parse_mode("640"), Some(0o640));
        for bad in ["", "0800", "07777", "rw-------", "-600"] {
            assert_eq!(parse_mode(bad), None, "{bad:?}");
        }
        assert_eq!(
            line_of("a = 1\n\nkek_label = \"x\"\n", "kek_label"),
            Some(3)
        );
        assert_eq!(line_of("a = 1\n", "kek_label"), None);
    }
}
