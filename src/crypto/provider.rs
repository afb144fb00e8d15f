//! Which software AES provider runs what, chosen once at build time (the
//! shape of rustls's `CryptoProvider`): one interface (the `crypto` module's
//! functions), the implementations behind it, the same known-answer tests
//! on each (`crypto::kat`).
//!
//! | build                     | providers, in order    | what the first cannot do |
//! |---------------------------|------------------------|--------------------------|
//! | default (`aws-lc`)        | aws-lc-rs, RustCrypto  | goes to RustCrypto       |
//! | FIPS (`--features fips`)  | aws-lc-rs (FIPS module)| is refused               |
//! | portable (no features)    | RustCrypto             | (it does everything)     |
//!
//! The FIPS build compiles no RustCrypto AES code into the module: the
//! `rustcrypto` provider is not built there, so no path reaches it.

use super::CryptoError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// aws-lc-rs: AWS-LC, or AWS-LC's FIPS module in the FIPS build.
    #[cfg(feature = "aws-lc")]
    AwsLc,
    /// RustCrypto's `aes`, `aes-gcm`, `aes-kw` and `cmac`.
    #[cfg(not(feature = "fips"))]
    RustCrypto,
}

impl Provider {
    /// Every provider of this build, in the order they are asked.
    pub const ALL: &'static [Provider] = &[
        #[cfg(feature = "aws-lc")]
        Provider::AwsLc,
        #[cfg(not(feature = "fips"))]
        Provider::RustCrypto,
    ];

    pub fn name(self) -> &'static str {
        match self {
            #[cfg(all(feature = "aws-lc", feature = "fips"))]
            Provider::AwsLc => "aws-lc-rs (AWS-LC FIPS module)",
            #[cfg(all(feature = "aws-lc", not(feature = "fips")))]
            Provider::AwsLc => "aws-lc-rs",
            #[cfg(not(feature = "fips"))]
            Provider::RustCrypto => "RustCrypto",
        }
    }
}

/// Whether this is the FIPS build (`--features fips`).
pub const FIPS_BUILD: bool = cfg!(feature = "fips");

/// `f` on the first provider that can do it: one that answers
/// `Unsupported` passes it to the next; past the last, `Unsupported`
/// stands (the FIPS build's refusal).
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn first<T>(mut f: impl FnMut(Provider) -> Result<T, CryptoError>) -> Result<T, CryptoError> {
    for p in Provider::ALL {
        match f(*p) {
            Err(CryptoError::Unsupported) => continue,
            r => return r,
        }
    }
    Err(CryptoError::Unsupported)
}

/// The names of this build's providers, for `status` and the log.
pub fn names() -> String {
    Provider::ALL
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", then ")
}

/// What the build's AES module says of itself (`C_Initialize`'s FIPS
/// check, `hsm-envelope status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleState {
    /// The library and its version ("AWS-LC FIPS 4.2.0"; "RustCrypto" in
    /// the portable build).
    pub version: String,
    /// FIPS mode with its self-tests passed, or why not.
    pub fips: Result<(), String>,
}

/// Asks the module now (in the FIPS build this runs AWS-LC's self-tests
/// again: see `awslc::module_state::state`).
pub fn module_state() -> ModuleState {
    #[cfg(feature = "aws-lc")]
    {
        super::awslc::module_state::state()
    }
    #[cfg(not(feature = "aws-lc"))]
    {
        ModuleState {
            version: "RustCrypto".to_string(),
            fips: Err("not the FIPS build of AWS-LC".to_string()),
        }
    }
}
