//! PKCS#11 semantics: slots, sessions, login, objects, attributes and the
//! dispatch between software DEK operations and the backend.

pub mod attributes;
pub mod crypt;
pub mod dek;
pub mod find;
pub mod general;
pub mod guard;
pub mod handle_hash;
mod inflight;
pub mod module;
pub mod object_ops;
pub mod objects;
pub mod policy;
pub mod remembered;
pub mod session;
mod session_cache;
pub mod sessions;
pub mod stamped;
pub mod sync;
pub mod wrapping;
