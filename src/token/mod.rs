//! PKCS#11 semantics: slots, sessions, login, objects, attributes and the
//! dispatch between software DEK operations and the backend.

pub mod attributes;
pub mod crypt;
pub mod general;
pub mod keys;
pub mod module;
pub mod objects;
pub mod policy;
pub mod session;
pub mod sessions;
pub mod sync;
