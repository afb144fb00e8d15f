//! What the envelope needs from the configuration.

use std::time::Duration;

use crate::config::Config;
use crate::store::Location;

#[derive(Clone, Debug)]
pub struct Settings {
    pub kek_label: String,
    pub store: Location,
    /// How long a process trusts its view of the primary KEK version.
    pub refresh: Duration,
    /// Rotate when the primary version is older than this.
    pub rotate_after: Option<Duration>,
    /// Re-wrap a record under the primary version when it is used.
    pub lazy_rewrap: bool,
    /// Refuse to open records under older versions.
    pub min_decrypt_version: Option<u32>,
    /// How long a destroyed token DEK stays recoverable.
    pub retention: Duration,
    /// Purge protection as configured (None: as the store says).
    pub purge_protection: Option<bool>,
    /// Cached DEKs are re-checked against their KEK version this often.
    pub soft_ttl: Duration,
    /// Cached DEKs outlive an unreachable HSM this long (zero: not at all).
    pub hard_ttl: Duration,
    /// Unwrapped DEKs kept in memory at most.
    pub cache_max_keys: usize,
    /// AES-GCM encryptions allowed per key material (see `gcm_budget`).
    pub gcm_limit: u64,
    /// Most GCM invocations a process reserves in the store at once.
    pub gcm_block: u64,
    /// A KEK call on an HSM that takes longer is given up (`member_kek`).
    pub hsm_timeout: Option<Duration>,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Settings {
        Settings {
            kek_label: c.kek_label.clone(),
            store: c.store_location(),
            refresh: std::time::Duration::from_secs(c.refresh_secs),
            rotate_after: c
                .rotate_after_days
                .map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400)),
            lazy_rewrap: c.lazy_rewrap,
            min_decrypt_version: c.min_decrypt_version,
            retention: std::time::Duration::from_secs(u64::from(c.retention_days) * 86_400),
            purge_protection: c.purge_protection,
            soft_ttl: std::time::Duration::from_secs(c.cache_soft_ttl_secs),
            hard_ttl: std::time::Duration::from_secs(c.cache_hard_ttl_secs),
            cache_max_keys: usize::try_from(c.cache_max_keys).unwrap_or(usize::MAX),
            gcm_limit: c.gcm_invocation_limit,
            gcm_block: c.gcm_invocation_block,
            hsm_timeout: (c.hsm_timeout_ms > 0).then(|| Duration::from_millis(c.hsm_timeout_ms)),
        }
    }
}
