//! The KEK/DEK hierarchy: wrapped-record format and the attributes it
//! binds, the key cache, and the service that seals and opens DEK values
//! with the KEK on the HSM.

#![forbid(unsafe_code)]

pub mod agreement;
pub mod app_key_wrap;
pub mod attrs;
pub mod byok;
pub mod cache;
pub mod deletion;
pub mod feed;
pub mod gcm_budget;
pub mod health;
pub mod instance;
pub mod kek_handles;
pub mod kek_scope;
pub mod last_used;
pub mod member_kek;
pub mod members;
pub mod record;
pub mod record_set;
pub mod rewrap;
pub mod service;
pub mod set_rewrap;
pub mod set_versions;
pub mod sets;
pub mod settings;
pub mod shares;
pub mod versions;

pub use service::{DekRef, Envelope};
