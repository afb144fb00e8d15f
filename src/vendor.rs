//! Vendor-defined constants, mirrored in `include/hsm_envelope.h`.
//! The prefix 0x4845 spells "HE" (hsm-envelope) so the values are easy to
//! recognise in logs and unlikely to clash with other vendors.

use cryptoki_sys::{CKA_VENDOR_DEFINED, CKR_VENDOR_DEFINED, CK_ATTRIBUTE_TYPE, CK_RV, CK_ULONG};

const BASE: CK_ULONG = 0x4845_0000;

/// The KEK needed for this DEK is not usable on the backend (absent, or the
/// user is not logged in to the backend token).
pub const CKR_HSME_KEK_UNAVAILABLE: CK_RV = CKR_VENDOR_DEFINED | BASE | 0x01;
/// A stored wrapped-DEK record failed to parse or to authenticate: it was
/// altered, or moved onto another key's row.
pub const CKR_HSME_RECORD_INVALID: CK_RV = CKR_VENDOR_DEFINED | BASE | 0x02;
/// The wrapped-DEK store could not be read or written.
pub const CKR_HSME_STORE_ERROR: CK_RV = CKR_VENDOR_DEFINED | BASE | 0x03;
/// The KEK version this DEK needs was deleted or disabled on the HSM
/// (CKA_DECRYPT or CKA_UNWRAP turned off): the DEK is revoked.
pub const CKR_HSME_KEK_REVOKED: CK_RV = CKR_VENDOR_DEFINED | BASE | 0x04;
/// The HSM cannot be reached (device error, token gone, sessions lost) and
/// the DEK is not cached, or its grace period (cache_hard_ttl_secs) is over.
pub const CKR_HSME_HSM_UNAVAILABLE: CK_RV = CKR_VENDOR_DEFINED | BASE | 0x05;
/// The key's AES-GCM invocation limit (gcm_invocation_limit in the
/// configuration) is reached: no further GCM encryption under this key
/// material, through any function; decryption still works. Rotate to a new
/// DEK.
pub const CKR_HSME_INVOCATION_LIMIT: CK_RV = CKR_VENDOR_DEFINED | BASE | 0x06;

/// CK_ULONG, read-only: the KEK version a token DEK is wrapped under.
pub const CKA_HSME_KEK_VERSION: CK_ATTRIBUTE_TYPE = CKA_VENDOR_DEFINED | BASE | 0x01;
/// CK_BBOOL, template-only: in C_GenerateKey / C_CreateObject / C_UnwrapKey,
/// CK_TRUE makes the key a plain backend object instead of a DEK.
pub const CKA_HSME_ON_BACKEND: CK_ATTRIBUTE_TYPE = CKA_VENDOR_DEFINED | BASE | 0x02;
