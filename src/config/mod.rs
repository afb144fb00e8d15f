//! The module's configuration: a TOML file named by `HSM_ENVELOPE_CONF`
//! (PKCS#11 modules cannot take arguments). Every key has a default that
//! works with a local SoftHSM2 token made by `softhsm-config/new-token.sh`.
//!
//! A mistake in the file is one line in plain words naming the key and its
//! line (see `schema`); the file is checked against the list of keys before
//! serde reads it.

pub mod hsms;
pub mod schema;
mod store_tls;

pub use hsms::{HsmMember, KekMode, PinSource, MAIN_MEMBER};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

pub const CONF_ENV: &str = "HSM_ENVELOPE_CONF";

/// Names SoftHSM2's PKCS#11 module, ahead of [`SOFTHSM2_CANDIDATES`].
pub const SOFTHSM2_MODULE_ENV: &str = "SOFTHSM2_MODULE";

/// Where SoftHSM2's PKCS#11 module is looked for, in order; the first is the
/// default `backend_module`. The scripts' copy is `scripts/softhsm2-path.sh`
/// (tests/token_setup.rs checks that the two agree).
pub const SOFTHSM2_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];

/// SoftHSM2's PKCS#11 module: `$SOFTHSM2_MODULE` if set (the file must
/// exist), else the first of [`SOFTHSM2_CANDIDATES`] that exists. For the
/// tests, benches and tools that drive SoftHSM2 directly.
pub fn find_softhsm2() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(SOFTHSM2_MODULE_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::config(format!(
                "{SOFTHSM2_MODULE_ENV}={}: no such file",
                p.display()
            )))
        };
    }
    SOFTHSM2_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::config(format!(
                "SoftHSM2 module libsofthsm2.so not found (looked at {}); install the \
                 Debian package softhsm2 (scripts/deps.sh) or set {SOFTHSM2_MODULE_ENV}",
                SOFTHSM2_CANDIDATES.join(", ")
            ))
        })
}

/// Which DEKs the module lets applications make (`key_export`): a policy
/// the security team sets in the configuration, which no template can
/// override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyExport {
    /// Any DEK the PKCS#11 attribute rules allow (the default).
    Any,
    /// Only sensitive DEKs: a value may leave the module wrapped, never in
    /// clear.
    Wrapped,
    /// Only sensitive, non-extractable DEKs: a value never leaves the module.
    None,
}

impl KeyExport {
    /// The value as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            KeyExport::Any => "any",
            KeyExport::Wrapped => "wrapped",
            KeyExport::None => "none",
        }
    }
}

/// `cache_max_keys` when the configuration says nothing.
pub const DEFAULT_CACHE_MAX_KEYS: u64 = 100_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Path of the backend HSM's PKCS#11 module.
    pub backend_module: PathBuf,
    /// Label of the backend token that holds the KEK; its DEKs live there.
    pub token_label: String,
    /// Label of the AES-256 KEK on that token.
    pub kek_label: String,
    /// The module makes no DEKs and passes every call through to the
    /// backend. Without it, a `token_label` that matches no token makes
    /// C_Initialize fail.
    pub passthrough_only: bool,
    /// Which DEKs may be made (see [`KeyExport`]).
    pub key_export: KeyExport,
    /// SQLite file holding wrapped DEK records (created on first use).
    /// Unused when `store_url` is set.
    pub store_path: PathBuf,
    /// PostgreSQL database holding them instead (a connection string,
    /// `postgresql://user@host:port/db`); shared by many hosts.
    pub store_url: Option<crate::store::postgresql::Url>,
    /// PEM file of the CA certificates that TLS to `store_url` trusts
    /// (None: the system's).
    pub store_tls_ca: Option<PathBuf>,
    /// PEM files of a client certificate chain and its private key, for a
    /// server that asks for one.
    pub store_tls_cert: Option<PathBuf>,
    pub store_tls_key: Option<PathBuf>,
    /// Optional log file (appended to). Without it, warnings go to stderr.
    pub log_file: Option<PathBuf>,
    /// Mode of the log file when this module creates it.
    #[serde(deserialize_with = "file_mode")]
    pub log_file_mode: u32,
    /// One of error, warn, info, debug.
    pub log_level: String,
    /// Rotate the KEK when its primary version is this many days old (the
    /// first process or command to notice does it). None: only on demand.
    pub rotate_after_days: Option<u32>,
    /// Seconds a process trusts its view of the primary KEK version: after
    /// a rotation, every process wraps new DEKs under the new version
    /// within this time.
    pub refresh_secs: u64,
    /// Re-wrap a token DEK under the primary KEK version when it is used.
    pub lazy_rewrap: bool,
    /// Refuse to unwrap records under KEK versions below this one.
    pub min_decrypt_version: Option<u32>,
    /// Days a destroyed token DEK stays recoverable before it may be purged
    /// (7 to 90).
    pub retention_days: u32,
    /// Turn purge protection on for the store (for good: once on, a
    /// configuration saying false is refused). Unset: whatever the store says.
    pub purge_protection: Option<bool>,
    /// Seconds a cached DEK is used before its KEK version is checked again
    /// on the HSM (revocation is noticed within this time).
    pub cache_soft_ttl_secs: u64,
    /// Seconds cached DEKs keep working while the HSM cannot be reached
    /// (0: no grace).
    pub cache_hard_ttl_secs: u64,
    /// Unwrapped DEKs kept in memory at most (least recently used go first;
    /// an evicted DEK is unwrapped on the HSM again at its next use).
    pub cache_max_keys: u64,
    /// Tamper-evident audit log (JSON lines, appended). None: no audit log.
    pub audit_log: Option<PathBuf>,
    /// Mode of the audit log when this module creates it.
    #[serde(deserialize_with = "file_mode")]
    pub audit_log_mode: u32,
    /// A checkpoint authenticated on the HSM every this many lines...
    pub audit_checkpoint_lines: u32,
    /// ...or after this many seconds, whichever comes first.
    pub audit_checkpoint_secs: u64,
    /// Label of the HMAC key on the backend token that authenticates checkpoints.
    pub audit_hmac_label: String,
    /// DEK use is logged as counts per DEK per this many seconds.
    pub audit_use_interval_secs: u64,
    /// Who chooses the IVs of AES-GCM encryption under DEKs (issue 12).
    pub gcm_iv: GcmIv,
    /// AES-GCM encryptions allowed under one key material (1000 to 2^32):
    /// further ones are refused with CKR_HSME_INVOCATION_LIMIT.
    pub gcm_invocation_limit: u64,
    /// Most GCM invocations a process reserves in the store at once (1 to
    /// 2^24; blocks start small and double up to this). A process that
    /// dies loses at most the rest of its block.
    pub gcm_invocation_block: u64,
    /// How the KEK's members relate (issue 13): "single", or "replicas"
    /// with the `[[hsm]]` tables below.
    pub kek_mode: KekMode,
    /// Further HSMs holding the KEK; the top-level keys are the first.
    pub hsm: Vec<HsmMember>,
    /// A KEK call (wrap, unwrap, the health check's KEK status) on an HSM
    /// that takes longer than this is given up: the HSM is taken as down
    /// and, with several, the next one serves. 0: no time-out (calls wait
    /// as long as the HSM's own library does).
    pub hsm_timeout_ms: u64,
    /// Approved-only (issue 15): only FIPS-approved mechanisms, key sizes
    /// and parameters, AES-GCM encryption under IVs AWS-LC's FIPS module
    /// draws itself. Only the FIPS build (`--features fips`) takes it.
    pub fips_mode: bool,
    /// The file this configuration was read from (None: the defaults), for
    /// messages that tell the user what to change where.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// NIST SP 800-38D's limit for random 96-bit IVs, and the largest
/// `gcm_invocation_limit` (a module IV's counter field is 32 bits).
pub const GCM_INVOCATION_LIMIT_MAX: u64 = 1 << 32;

/// `gcm_iv`: who chooses the IVs of AES-GCM encryption under DEKs.
/// Decryption always takes the caller's IV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GcmIv {
    /// The application may pass its own IV (C_EncryptInit with
    /// CK_GCM_PARAMS, C_EncryptMessage with CKG_NO_GENERATE).
    #[default]
    Caller,
    /// Only IVs the module makes (the message functions with an IV
    /// generator); encryption with a caller's IV is refused.
    Module,
}

/// A file mode written in octal as a string ("0600").
fn file_mode<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    schema::parse_mode(&s)
        .ok_or_else(|| serde::de::Error::custom("expected a file mode in octal, such as \"0600\""))
}

impl Default for Config {
    fn default() -> Self {
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        Config {
            backend_module: PathBuf::from(SOFTHSM2_CANDIDATES[0]),
            token_label: "hsm-envelope".into(),
            kek_label: "kek".into(),
            passthrough_only: false,
            key_export: KeyExport::Any,
            store_path: data.join("hsm-envelope").join("deks.sqlite"),
            store_url: None,
            store_tls_ca: None,
            store_tls_cert: None,
            store_tls_key: None,
            log_file: None,
            log_file_mode: crate::logging::DEFAULT_FILE_MODE,
            log_level: "info".into(),
            rotate_after_days: None,
            refresh_secs: 60,
            lazy_rewrap: true,
            min_decrypt_version: None,
            retention_days: 90,
            purge_protection: None,
            cache_soft_ttl_secs: 60,
            cache_hard_ttl_secs: 3600,
            cache_max_keys: crate::config::DEFAULT_CACHE_MAX_KEYS,
            audit_log: None,
            audit_log_mode: crate::logging::DEFAULT_FILE_MODE,
            audit_checkpoint_lines: 100,
            audit_checkpoint_secs: 300,
            audit_hmac_label: "audit-hmac".into(),
            audit_use_interval_secs: 60,
            gcm_iv: GcmIv::Caller,
            gcm_invocation_limit: GCM_INVOCATION_LIMIT_MAX,
            gcm_invocation_block: 1 << 20,
            kek_mode: KekMode::Single,
            hsm: Vec::new(),
            hsm_timeout_ms: 0,
            fips_mode: false,
            source: None,
        }
    }
}

impl Config {
    /// Where the store is: `store_url` (with the `store_tls_*` files) if
    /// set, else `store_path`.
    pub fn store_location(&self) -> crate::store::Location {
        let url = self
            .store_url
            .as_ref()
            .map(|u| u.clone().with_tls_files(self.store_tls_files()));
        crate::store::Location::from_config(&self.store_path, url.as_ref())
    }

    /// Load from `HSM_ENVELOPE_CONF`, or the defaults when it is unset.
    pub fn from_env() -> Result<Config> {
        match std::env::var_os(CONF_ENV) {
            Some(p) if !p.is_empty() => Config::from_file(Path::new(&p)).map_err(|e| match e {
                Error::Config(m) => Error::config(format!("{m} (the file named by {CONF_ENV})")),
                other => other,
            }),
            _ => Ok(Config::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
        let mut cfg = Config::from_toml(&text).map_err(|e| match e {
            Error::Config(msg) => Error::config(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parse and check a configuration. A mistake is one line naming the
    /// key and its line, in plain words (see `schema`).
    pub fn from_toml(text: &str) -> Result<Config> {
        if let Some(msg) = schema::check(text) {
            return Err(Error::config(msg));
        }
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // Not expected after the check; still one line.
            let at = e
                .span()
                .map(|s| format!("line {}: ", schema::position(text, s.start).0))
                .unwrap_or_default();
            Error::config(format!(
                "{at}{}",
                e.message().lines().next().unwrap_or("cannot be read")
            ))
        })?;
        cfg.validate().map_err(|(key, what)| {
            let at = schema::line_of(text, key)
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            Error::config(format!("key `{key}`{at}: {what}"))
        })?;
        Ok(cfg)
    }

    /// Where to change a setting, for messages: "in FILE", or "in a
    /// configuration file named by HSM_ENVELOPE_CONF" for the defaults.
    pub fn where_to_set(&self) -> String {
        match &self.source {
            Some(p) => format!("in {}", p.display()),
            None => format!("in a configuration file named by {CONF_ENV}"),
        }
    }

    /// The key and what it should be, for the first bad value.
    fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let bad = |key: &'static str, want: &str| Err((key, format!("expected {want}")));
        if self.kek_label.is_empty() {
            return bad("kek_label", "a non-empty label");
        }
        if self.token_label.is_empty() || self.token_label.len() > 32 {
            return bad("token_label", "a token label of 1 to 32 bytes");
        }
        if self.store_path.as_os_str().is_empty() {
            return bad("store_path", "a file path");
        }
        if let Some(url) = &self.store_url {
            if let Err(why) = url.check() {
                return Err(("store_url", why));
            }
        }
        self.validate_store_tls()?;
        if self.rotate_after_days == Some(0) {
            return bad(
                "rotate_after_days",
                "a number of days of at least 1 (or no key)",
            );
        }
        if self.refresh_secs == 0 || self.refresh_secs > 86_400 {
            return bad("refresh_secs", "seconds between 1 and 86400");
        }
        if !(7..=90).contains(&self.retention_days) {
            return bad("retention_days", "a number of days from 7 to 90");
        }
        if self.cache_soft_ttl_secs == 0 {
            return bad("cache_soft_ttl_secs", "a number of seconds of at least 1");
        }
        if self.cache_max_keys == 0 {
            return bad("cache_max_keys", "a whole number of at least 1");
        }
        if self.cache_hard_ttl_secs != 0 && self.cache_hard_ttl_secs < self.cache_soft_ttl_secs {
            return bad("cache_hard_ttl_secs", "0, or at least cache_soft_ttl_secs");
        }
        if self.audit_checkpoint_lines == 0 {
            return bad("audit_checkpoint_lines", "a number of lines of at least 1");
        }
        if self.audit_checkpoint_secs == 0 {
            return bad("audit_checkpoint_secs", "a number of seconds of at least 1");
        }
        if self.audit_use_interval_secs == 0 {
            return bad(
                "audit_use_interval_secs",
                "a number of seconds of at least 1",
            );
        }
        if self.min_decrypt_version == Some(0) {
            return bad("min_decrypt_version", "a KEK version of at least 1");
        }
        if !(1000..=GCM_INVOCATION_LIMIT_MAX).contains(&self.gcm_invocation_limit) {
            return bad(
                "gcm_invocation_limit",
                "a number of encryptions from 1000 to 4294967296 (2^32)",
            );
        }
        if !(1..=1 << 24).contains(&self.gcm_invocation_block) {
            return bad("gcm_invocation_block", "a number from 1 to 16777216 (2^24)");
        }
        if self.kek_mode == KekMode::Replicas && self.rotate_after_days.is_some() {
            return bad(
                "rotate_after_days",
                "no automatic rotation with kek_mode = \"replicas\" (a key made on one HSM cannot \
                 be copied to the others: import each version into every member)",
            );
        }
        if self.hsm_timeout_ms != 0 && !(10..=600_000).contains(&self.hsm_timeout_ms) {
            return bad(
                "hsm_timeout_ms",
                "0 (no time-out) or a number of milliseconds from 10 to 600000",
            );
        }
        if crate::logging::Level::parse(&self.log_level).is_none() {
            return bad(
                "log_level",
                "one of \"error\", \"warn\", \"info\", \"debug\"",
            );
        }
        hsms::validate(
            self.kek_mode,
            &self.hsm,
            &self.backend_module,
            &self.token_label,
        )?;
        if self.fips_mode && !crate::crypto::FIPS_BUILD {
            return Err((
                "fips_mode",
                "fips_mode = true needs the FIPS build of the module (cargo build --release \
                 --features fips; see README, FIPS mode); this build is not it"
                    .into(),
            ));
        }
        Ok(())
    }

    /// AES-GCM encryption only under IVs the module makes: `gcm_iv =
    /// "module"`, which `fips_mode` implies.
    pub fn module_ivs_only(&self) -> bool {
        self.gcm_iv == GcmIv::Module || self.fips_mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fips_mode_is_refused_outside_the_fips_build() {
        assert!(!Config::from_toml("").unwrap().fips_mode);
        let r = Config::from_toml("fips_mode = true\n");
        if crate::crypto::FIPS_BUILD {
            let c = r.unwrap();
            assert!(c.fips_mode && c.module_ivs_only());
        } else {
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains("key `fips_mode` (line 1): fips_mode = true needs the FIPS build"),
                "{e}"
            );
        }
        let e = Config::from_toml("fips_mode = \"yes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("true or false"), "{e}");
    }

    #[test]
    fn defaults_and_full_file() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.kek_label, "kek");
        let c = Config::from_toml(
            "backend_module = \"/x.so\"\ntoken_label = \"t\"\nkek_label = \"k\"\nstore_path = \"/s.db\"\nlog_file = \"/l\"\nlog_level = \"debug\"\n",
        )
        .unwrap();
        assert_eq!(c.backend_module, PathBuf::from("/x.so"));
        assert_eq!(c.log_file, Some(PathBuf::from("/l")));
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("kek_lable = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kek_lable"), "{e}");
        let e = Config::from_toml("kek_label = 3").unwrap_err().to_string();
        assert!(e.contains("kek_label") && e.contains("string"), "{e}");
        let e = Config::from_toml("log_level = \"loud\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log_level"), "{e}");
        for bad in [
            "retention_days = 6",
            "retention_days = 91",
            "cache_soft_ttl_secs = 0",
        ] {
            let e = Config::from_toml(bad).unwrap_err().to_string();
            assert!(e.contains(bad.split(' ').next().unwrap_or("")), "{e}");
        }
        assert_eq!(Config::from_toml("").unwrap().retention_days, 90);
    }

    #[test]
    fn store_url_selects_postgresql_and_is_checked() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.store_location().engine_name(), "sqlite");
        let c = Config::from_toml("store_url = \"postgresql://app:pw@%2Frun%2Fpostgresql/deks\"\n")
            .unwrap();
        let location = c.store_location();
        assert_eq!(location.engine_name(), "postgresql");
        assert_eq!(
            location.to_string(),
            "postgresql://app@/run/postgresql:5432/deks"
        );
        assert!(!format!("{c:?}").contains("pw@"), "{c:?}");
        for bad in [
            "store_url = \"postgresql://app@host\"",
            "store_url = \"sqlite:///x\"",
            "store_url = 5",
        ] {
            let e = Config::from_toml(bad).unwrap_err().to_string();
            assert!(e.contains("store_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn range_errors_name_the_key_and_its_line() {
        let e = Config::from_toml("kek_label = \"k\"\nretention_days = 6\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "configuration: key `retention_days` (line 2): expected a number of days from 7 to 90"
        );
        let e = Config::from_toml("audit_checkpoint_secs = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `audit_checkpoint_secs` (line 1)"), "{e}");
    }

    #[test]
    fn file_modes_default_to_owner_only_and_parse_as_octal() {
        let c = Config::from_toml("").unwrap();
        assert_eq!((c.log_file_mode, c.audit_log_mode), (0o600, 0o600));
        let c = Config::from_toml("log_file_mode = \"0640\"\naudit_log_mode = \"600\"\n").unwrap();
        assert_eq!((c.log_file_mode, c.audit_log_mode), (0o640, 0o600));
        let e = Config::from_toml("log_file_mode = \"0800\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `log_file_mode` (line 1)"), "{e}");
    }

    /// Every key the schema knows is a field of `Config` (deny_unknown_fields
    /// would refuse it otherwise), with a value of the kind the schema says.
    #[test]
    fn the_schema_and_the_struct_agree() {
        use schema::Kind;
        for (key, kind) in schema::KEYS {
            let value = match kind {
                Kind::Text | Kind::Path => "\"x\"".to_string(),
                Kind::Whole { .. } => "1".to_string(),
                Kind::Bool => "true".to_string(),
                Kind::OneOf(v) => format!("\"{}\"", v[0]),
                Kind::Mode => "\"0600\"".to_string(),
                // Each table needs its required keys: one full table.
                Kind::Tables(_) => "[{ name = \"x\", token_label = \"x\" }]".to_string(),
            };
            let text = format!("{key} = {value}\n");
            assert_eq!(schema::check(&text), None, "{text}");
            if let Err(e) = toml::from_str::<Config>(&text) {
                panic!("{key} = {value}: {e}");
            }
        }
        assert_eq!(
            schema::KEYS.len(),
            schema::KEYS
                .iter()
                .map(|(k, _)| k)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
    }

    #[test]
    fn passthrough_only_defaults_to_false() {
        assert!(!Config::from_toml("").unwrap().passthrough_only);
        assert!(
            Config::from_toml("passthrough_only = true")
                .unwrap()
                .passthrough_only
        );
    }

    #[test]
    fn key_export_defaults_to_any_and_takes_three_values() {
        assert_eq!(Config::from_toml("").unwrap().key_export, KeyExport::Any);
        for (v, want) in [
            ("any", KeyExport::Any),
            ("wrapped", KeyExport::Wrapped),
            ("none", KeyExport::None),
        ] {
            let c = Config::from_toml(&format!("key_export = \"{v}\"")).unwrap();
            assert_eq!(c.key_export, want);
            assert_eq!(want.name(), v);
        }
        let e = Config::from_toml("key_export = \"None\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `key_export` (line 1)"), "{e}");
    }

    #[test]
    fn where_to_set_names_the_file() {
        assert!(Config::default().where_to_set().contains(CONF_ENV));
        let dir = std::env::temp_dir().join(format!("hsme-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "kek_label = \"k\"\n").unwrap();
        let c = Config::from_file(&f).unwrap();
        assert_eq!(c.where_to_set(), format!("in {}", f.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gcm_iv_is_caller_or_module() {
        assert_eq!(Config::from_toml("").unwrap().gcm_iv, GcmIv::Caller);
        let c = Config::from_toml("gcm_iv = \"module\"\n").unwrap();
        assert_eq!(c.gcm_iv, GcmIv::Module);
        let e = Config::from_toml("gcm_iv = \"hsm\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gcm_iv") && e.contains("caller"), "{e}");
    }

    #[test]
    fn gcm_invocation_limit_and_block_are_checked() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(
            (c.gcm_invocation_limit, c.gcm_invocation_block),
            (1 << 32, 1 << 20)
        );
        let c =
            Config::from_toml("gcm_invocation_limit = 1000\ngcm_invocation_block = 1\n").unwrap();
        assert_eq!((c.gcm_invocation_limit, c.gcm_invocation_block), (1000, 1));
        for bad in [
            "gcm_invocation_limit = 999",
            "gcm_invocation_limit = 4294967297",
            "gcm_invocation_block = 0",
            "gcm_invocation_block = 16777217",
            "gcm_invocation_limit = -1",
        ] {
            let e = Config::from_toml(bad).unwrap_err().to_string();
            assert!(
                e.contains(bad.split(' ').next().unwrap_or("")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn missing_file_names_path() {
        let e = Config::from_file(Path::new("/nonexistent/hsm.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/hsm.toml"), "{e}");
    }
}
