//! One error type for the whole module, and its single mapping to `CK_RV`.

use cryptoki_sys::*;

use crate::crypto::CryptoError;
pub use crate::rv_name::rv_name;
use crate::store::StoreError;
use crate::vendor;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plain PKCS#11 outcome decided by this module.
    #[error("{}", rv_name(*.0))]
    Rv(CK_RV),
    /// The backend HSM answered a call with an error.
    #[error("backend {func} failed: {}", rv_name(*rv))]
    Backend { func: &'static str, rv: CK_RV },
    /// The backend module could not be loaded or used at all.
    #[error("backend module: {0}")]
    BackendLoad(String),
    #[error("configuration: {0}")]
    Config(String),
    /// An administrative action refused, with the reason for the operator.
    #[error("{0}")]
    Admin(String),
    /// Boxed: a store error is large (64 bytes) and rare, and every
    /// `Result` on the hot path is as large as its error; at this size it
    /// is copied through each layer of every call.
    #[error(transparent)]
    Store(Box<StoreError>),
    /// A stored record that does not parse (see `envelope::record`).
    #[error("wrapped DEK record: {0}")]
    Record(String),
    #[error("software cipher: {0}")]
    Crypto(#[from] CryptoError),
}

impl Error {
    /// The one place errors become `CK_RV`.
    pub fn rv(&self) -> CK_RV {
        match self {
            Error::Rv(rv) => *rv,
            Error::Backend { rv, .. } => *rv,
            Error::BackendLoad(_) => CKR_GENERAL_ERROR,
            Error::Config(_) => CKR_GENERAL_ERROR,
            Error::Admin(_) => CKR_FUNCTION_FAILED,
            Error::Store(_) => vendor::CKR_HSME_STORE_ERROR,
            Error::Record(_) => vendor::CKR_HSME_RECORD_INVALID,
            Error::Crypto(e) => match e {
                CryptoError::BufferTooSmall { .. } => CKR_BUFFER_TOO_SMALL,
                CryptoError::KeySize => CKR_KEY_SIZE_RANGE,
                CryptoError::Param => CKR_MECHANISM_PARAM_INVALID,
                CryptoError::DataLen => CKR_DATA_LEN_RANGE,
                CryptoError::Invalid => CKR_ENCRYPTED_DATA_INVALID,
                CryptoError::Unsupported => CKR_MECHANISM_PARAM_INVALID,
            },
        }
    }

    /// Map a cryptoki error from a backend call, keeping the backend's code.
    pub fn from_cryptoki(func: &'static str, e: cryptoki::error::Error) -> Self {
        match e {
            cryptoki::error::Error::Pkcs11(rv, _) => Error::Backend {
                func,
                rv: rv_error_code(rv),
            },
            other => Error::BackendLoad(format!("{func}: {other}")),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(Box::new(e))
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
