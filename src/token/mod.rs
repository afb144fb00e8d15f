//! PKCS#11 semantics: slots, sessions, login, objects, attributes and the
//! dispatch between software DEK operations and the backend.

#![forbid(unsafe_code)]

pub mod approved;
pub mod crypt;
pub mod digest_key;
pub mod forward;
pub mod general;
pub mod health_thread;
pub mod kek_guard;
pub mod mac;
pub mod message;
pub mod module;
pub mod object;
pub mod session;
pub mod store_sync;
pub mod wrapping;
