//! hsm-envelope: a PKCS#11 module that keeps key-encryption keys (KEKs) on a
//! backend HSM, wraps data-encryption keys (DEKs) there, and runs bulk AES in
//! software on the unwrapped DEK.
//!
//! Layers, outermost first:
//! - [`ffi`]: the C ABI only (thin `extern "C"` shims, function lists).
//! - [`token`]: PKCS#11 semantics (slots, sessions, login, objects, attributes).
//! - [`envelope`]: the KEK/DEK hierarchy (record format, key cache).
//! - [`backend`]: the HSM behind us, reached through `cryptoki`.
//! - [`crypto`]: software AES engines.
//! - [`store`]: persistence of wrapped DEK records (SQLite).
//! - [`audit`]: the tamper-evident audit log.
//!
//! Leaves, which every layer may use and which name none of them:
//! [`secret`] (locked, zeroized key memory), [`clock`], [`runtime`]
//! (lifecycle, fork detection, stamped locks, handle hashing), [`config`],
//! [`error`], [`rv_name`], [`hex`], [`logging`], [`vendor`].

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod audit;
pub mod backend;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod envelope;
pub mod error;
pub mod ffi;
pub mod hex;
pub mod logging;
pub mod runtime;
pub mod rv_name;
pub mod secret;
pub mod store;
pub mod token;
pub mod vendor;

pub use error::{Error, Result};
