//! One error type for the whole module, and its single mapping to `CK_RV`.

use cryptoki_sys::*;

use crate::crypto::CryptoError;
pub use crate::rv_name::rv_name;
use crate::store::StoreError;
use crate::vendor;

pub type Result<T> = std::result::Result<T, Error>;

/// Sixteen bytes: every `Result` on the hot path is as large as its error,
/// and is copied at each layer of every call (`Result<()>` returns in
/// registers). Whatever is larger (a message, the store's error) is boxed:
/// it is rare, and built only when something failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plain PKCS#11 outcome decided by this module.
    #[error("{}", rv_name(*.0))]
    Rv(CK_RV),
    /// The caller's output buffer is short; this many bytes are needed
    /// (`CKR_BUFFER_TOO_SMALL`, and the length written back).
    #[error("output buffer too small, {0} bytes needed")]
    BufferTooSmall(usize),
    /// The backend HSM answered a call with an error.
    #[error("{0}")]
    Backend(Box<BackendFailure>),
    /// The backend module could not be loaded or used at all.
    #[error("backend module: {0}")]
    BackendLoad(Box<String>),
    #[error("configuration: {0}")]
    Config(Box<String>),
    /// An administrative action refused, with the reason for the operator.
    #[error("{0}")]
    Admin(Box<String>),
    #[error(transparent)]
    Store(Box<StoreError>),
    /// A stored record that does not parse (see `envelope::record`).
    #[error("wrapped DEK record: {0}")]
    Record(Box<String>),
}

/// A backend call and the code it failed with.
#[derive(Debug, thiserror::Error)]
#[error("backend {func} failed: {}", rv_name(*rv))]
pub struct BackendFailure {
    pub func: &'static str,
    pub rv: CK_RV,
}

const _: () = assert!(size_of::<Error>() == 16 && size_of::<Result<CK_RV>>() == 16);

impl Error {
    /// The one place errors become `CK_RV`.
    pub fn rv(&self) -> CK_RV {
        match self {
            Error::Rv(rv) => *rv,
            Error::BufferTooSmall(_) => CKR_BUFFER_TOO_SMALL,
            Error::Backend(b) => b.rv,
            Error::BackendLoad(_) => CKR_GENERAL_ERROR,
            Error::Config(_) => CKR_GENERAL_ERROR,
            Error::Admin(_) => CKR_FUNCTION_FAILED,
            Error::Store(_) => vendor::CKR_HSME_STORE_ERROR,
            Error::Record(_) => vendor::CKR_HSME_RECORD_INVALID,
        }
    }

    pub fn backend(func: &'static str, rv: CK_RV) -> Self {
        Error::Backend(Box::new(BackendFailure { func, rv }))
    }

    pub fn backend_load(msg: impl Into<String>) -> Self {
        Error::BackendLoad(Box::new(msg.into()))
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(Box::new(msg.into()))
    }

    pub fn admin(msg: impl Into<String>) -> Self {
        Error::Admin(Box::new(msg.into()))
    }

    pub fn record(msg: impl Into<String>) -> Self {
        Error::Record(Box::new(msg.into()))
    }

    /// The backend's code when `self` is a backend call's failure.
    pub fn backend_rv(&self) -> Option<CK_RV> {
        match self {
            Error::Backend(b) => Some(b.rv),
            _ => None,
        }
    }

    /// Map a cryptoki error from a backend call, keeping the backend's code.
    pub fn from_cryptoki(func: &'static str, e: cryptoki::error::Error) -> Self {
        match e {
            cryptoki::error::Error::Pkcs11(rv, _) => Error::backend(func, rv_error_code(rv)),
            other => Error::backend_load(format!("{func}: {other}")),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(Box::new(e))
    }
}

/// A software cipher's refusal, as the PKCS#11 code it stands for. The
/// crypto layer keeps its own error type (no `CK_RV` below the token).
impl From<CryptoError> for Error {
    fn from(e: CryptoError) -> Self {
        Error::Rv(match e {
            CryptoError::BufferTooSmall { needed } => return Error::BufferTooSmall(needed),
            CryptoError::KeySize => CKR_KEY_SIZE_RANGE,
            CryptoError::Param => CKR_MECHANISM_PARAM_INVALID,
            CryptoError::DataLen => CKR_DATA_LEN_RANGE,
            CryptoError::Invalid => CKR_ENCRYPTED_DATA_INVALID,
            CryptoError::Unsupported => CKR_MECHANISM_PARAM_INVALID,
        })
    }
}

impl From<CK_RV> for Error {
    fn from(rv: CK_RV) -> Self {
        Error::Rv(rv)
    }
}

/// cryptoki has no `RvError -> CK_RV`; recover the code by searching the
/// standard range (all standard codes are below 0x200), once.
fn rv_error_code(e: cryptoki::error::RvError) -> CK_RV {
    use cryptoki::error::{Rv, RvError};
    match e {
        RvError::VendorDefined(c) | RvError::UnknownErrorCode(c) => c,
        _ => (1..0x200)
            .find(|&c| Rv::from(c) == Rv::Error(e))
            .unwrap_or(CKR_GENERAL_ERROR),
    }
}
