//! The KEK/DEK hierarchy: wrapped-record format, protected key memory and
//! the service that seals and opens DEK values with the KEK on the HSM.

pub mod byok;
pub mod cache;
pub mod deletion;
pub mod health;
pub mod record;
pub mod rewrap;
pub mod secret;
pub mod service;
pub mod versions;

pub use service::Envelope;
