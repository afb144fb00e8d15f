//! More than one HSM (issue 13): `kek_mode` and the `[[hsm]]` tables that
//! name the further members. The top-level `backend_module`, `token_label`
//! and `kek_label` stay the first member ("main"), which also serves every
//! passed-through call; a configuration without `[[hsm]]` is today's single
//! HSM, unchanged.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Name of the member the top-level keys describe.
pub const MAIN_MEMBER: &str = "main";

/// How the members of a KEK relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum KekMode {
    /// One HSM (no `[[hsm]]` tables).
    #[default]
    #[serde(rename = "single")]
    Single,
    /// Every member holds the same KEK material; any one that is up serves.
    #[serde(rename = "replicas")]
    Replicas,
    /// Independent HSMs, each with its own KEK: a record carries one wrap
    /// per HSM and any one opens it (disaster recovery).
    #[serde(rename = "any-of")]
    AnyOf,
    /// Independent HSMs held by different parties: a DEK is the XOR of one
    /// share per HSM, so every one must take part (double key).
    #[serde(rename = "all-of")]
    AllOf,
}

impl KekMode {
    /// Whether records name several HSMs (format 2): any-of and all-of.
    pub fn is_set(self) -> bool {
        matches!(self, KekMode::AnyOf | KekMode::AllOf)
    }

    pub fn name(self) -> &'static str {
        match self {
            KekMode::Single => "single",
            KekMode::Replicas => "replicas",
            KekMode::AnyOf => "any-of",
            KekMode::AllOf => "all-of",
        }
    }
}

/// One `[[hsm]]` table: a further member.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmMember {
    /// Shown in logs and `status`; unique, and not "main".
    pub name: String,
    /// Its PKCS#11 module (default: the top-level `backend_module`).
    pub backend_module: Option<PathBuf>,
    /// The token that holds its copy of the KEK.
    pub token_label: String,
    /// The KEK's label there (default: the top-level `kek_label`).
    pub kek_label: Option<String>,
    /// Environment variable holding its user PIN.
    pub pin_env: Option<String>,
    /// File holding its user PIN (first line).
    pub pin_file: Option<PathBuf>,
}

/// Where a member's user PIN comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// The PIN the application gives C_Login (or the admin tool's).
    Login,
    Env(String),
    File(PathBuf),
}

impl HsmMember {
    pub fn module<'a>(&'a self, main: &'a Path) -> &'a Path {
        self.backend_module.as_deref().unwrap_or(main)
    }

    pub fn pin_source(&self) -> PinSource {
        match (&self.pin_env, &self.pin_file) {
            (Some(v), _) => PinSource::Env(v.clone()),
            (None, Some(f)) => PinSource::File(f.clone()),
            (None, None) => PinSource::Login,
        }
    }
}

impl PinSource {
    /// The PIN, or None for `Login`; every copy made here is wiped when
    /// dropped. Errors name the source, never the PIN.
    pub fn read(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        match self {
            PinSource::Login => Ok(None),
            PinSource::Env(var) => std::env::var(var)
                .map(|p| Some(Zeroizing::new(p.into_bytes())))
                .map_err(|_| Error::config(format!("pin_env: the variable {var} is not set"))),
            PinSource::File(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Error::config(format!("pin_file: cannot read {}: {e}", path.display()))
                })?);
                let line = text.lines().next().unwrap_or("");
                Ok(Some(Zeroizing::new(line.as_bytes().to_vec())))
            }
        }
    }
}

/// The first problem with the mode and members: the key and what it should
/// be, as `Config::validate` reports it.
pub fn validate(
    mode: KekMode,
    members: &[HsmMember],
    main_module: &Path,
    main_token: &str,
) -> std::result::Result<(), (&'static str, String)> {
    match mode {
        KekMode::Single if !members.is_empty() => {
            return Err((
                "kek_mode",
                "kek_mode = \"replicas\" with [[hsm]] tables (without it the module uses one HSM)"
                    .into(),
            ))
        }
        KekMode::Replicas | KekMode::AnyOf | KekMode::AllOf if members.is_empty() => {
            return Err((
                "kek_mode",
                format!(
                    "at least one [[hsm]] table with kek_mode = \"{}\" (the top-level keys are the first member)",
                    mode.name()
                ),
            ))
        }
        _ => {}
    }
    let mut seen: Vec<(&str, &Path, &str)> = vec![(MAIN_MEMBER, main_module, main_token)];
    for (i, m) in members.iter().enumerate() {
        let at = |what: String| Err(("hsm", format!("[[hsm]] number {}: {what}", i + 1)));
        if m.name.trim().is_empty() || m.name.len() > 64 {
            return at("expected a `name` of 1 to 64 bytes".into());
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if mode.is_set() && !m.name.chars().all(plain) {
            return at(format!(
                "the name '{}' is written into records: expected letters, digits, '-', '_' or '.'",
                m.name
            ));
        }
        if m.token_label.is_empty() || m.token_label.len() > 32 {
            return at("expected a `token_label` of 1 to 32 bytes".into());
        }
        if m.kek_label.as_deref() == Some("") {
            return at("expected a non-empty `kek_label` (or none: the top-level one)".into());
        }
        if m.pin_env.is_some() && m.pin_file.is_some() {
            return at("expected `pin_env` or `pin_file`, not both".into());
        }
        let module = m.module(main_module);
        for (name, other_module, other_token) in &seen {
            if *name == m.name {
                return at(format!(
                    "the name '{}' is taken; expected a unique name",
                    m.name
                ));
            }
            if *other_module == module && *other_token == m.token_label {
                return at(format!(
                    "token '{}' on {} is already member '{name}'; each member is another token",
                    m.token_label,
                    module.display()
                ));
            }
        }
        seen.push((&m.name, module, &m.token_label));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, KekMode, PinSource};

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn replicas_are_hsm_tables_with_kek_mode_replicas() {
        let c = Config::from_toml(
            "kek_mode = \"replicas\"\n[[hsm]]\nname = \"b\"\ntoken_label = \"t-b\"\npin_env = \"B_PIN\"\n\
             [[hsm]]\nname = \"c\"\nbackend_module = \"/x/c.so\"\ntoken_label = \"hsm-envelope\"\n",
        )
        .unwrap();
        assert_eq!(c.kek_mode, KekMode::Replicas);
        assert_eq!(c.hsm.len(), 2);
        assert_eq!(c.hsm[0].pin_source(), PinSource::Env("B_PIN".into()));
        assert_eq!(c.hsm[1].pin_source(), PinSource::Login);
        assert_eq!(Config::from_toml("").unwrap().kek_mode, KekMode::Single);
    }

    #[test]
    fn invalid_member_combinations_are_one_line_each() {
        let cases = [
            ("[[hsm]]\nname = \"b\"\ntoken_label = \"t\"\n", "kek_mode = \"replicas\" with [[hsm]] tables"),
            ("kek_mode = \"replicas\"\n", "at least one [[hsm]] table"),
            ("kek_mode = \"any-of\"\n", "at least one [[hsm]] table with kek_mode = \"any-of\""),
            ("kek_mode = \"all-of\"\n", "at least one [[hsm]] table with kek_mode = \"all-of\""),
            (
                "kek_mode = \"replicas\"\n[[hsm]]\nname = \"main\"\ntoken_label = \"t\"\n",
                "the name 'main' is taken",
            ),
            (
                "kek_mode = \"replicas\"\n[[hsm]]\nname = \"b\"\ntoken_label = \"hsm-envelope\"\n",
                "is already member 'main'",
            ),
            (
                "kek_mode = \"replicas\"\n[[hsm]]\nname = \"b\"\ntoken_label = \"t\"\npin_env = \"X\"\npin_file = \"/f\"\n",
                "`pin_env` or `pin_file`, not both",
            ),
            (
                "kek_mode = \"replicas\"\n[[hsm]]\nname = \"b\"\ntoken_label = \"t\"\npin = \"1234\"\n",
                "unknown key `pin` in [[hsm]] (line 5)",
            ),
            (
                "kek_mode = \"replicas\"\n[[hsm]]\nname = \"b\"\ntoken_label = 7\n",
                "key `hsm.token_label` (line 4): expected a string",
            ),
            ("hsm = 3\n", "expected [[hsm]] tables, not the number 3"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
