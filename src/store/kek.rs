//! KEK version metadata and leases in the store. The KEK objects live on the
//! HSM; here is what every process must agree on: which version is primary,
//! which are decrypt-only or destroyed, and who holds a lease to rotate.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekState {
    /// New DEKs wrap under it. Exactly one per KEK label.
    Primary,
    /// Opens existing records only.
    DecryptOnly,
    /// Gone from the HSM.
    Destroyed,
}

impl KekState {
    pub fn as_str(self) -> &'static str {
        match self {
            KekState::Primary => "primary",
            KekState::DecryptOnly => "decrypt-only",
            KekState::Destroyed => "destroyed",
        }
    }
    /// The state named by [`KekState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "primary" => KekState::Primary,
            "decrypt-only" => KekState::DecryptOnly,
            "destroyed" => KekState::Destroyed,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KekVersionRow {
    pub kek_label: String,
    pub version: u32,
    /// "aes256", "rsa2048", "rsa3072".
    pub kind: String,
    pub state: KekState,
    pub created: i64,
    pub primary_since: Option<i64>,
    pub retired: Option<i64>,
}
