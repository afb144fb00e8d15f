//! The operator's side: what the `hsm-envelope` command drives. It uses the
//! same backend, store and envelope code as the module, in its own process,
//! logged in to the backend token with the user PIN.

#![forbid(unsafe_code)]

use std::sync::Arc;

use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use cryptoki_sys::*;

use crate::backend::label_of;
use crate::backend::Backend;
use crate::config::Config;
use crate::envelope::Envelope;
use crate::error::{Error, Result};

pub struct Admin {
    pub config: Config,
    backend: Arc<Backend>,
    pub env: Envelope,
    /// The token's slot on the backend.
    pub slot: Slot,
    /// The same slot as the module numbers it (its slot ids are indexes
    /// into the backend's initialised tokens, in the backend's order):
    /// what pkcs11-tool and applications see.
    pub module_slot: usize,
}

impl Admin {
    /// Load the backend, find the KEK's token, log in as the user.
    pub fn connect(config: Config, pin: &str) -> Result<Admin> {
        let backend = Arc::new(Backend::load(&config.backend_module)?);
        let mut found = None;
        for (index, id) in backend.token_slots()?.into_iter().enumerate() {
            if label_of(&backend.token_info(id)?.label) == config.token_label {
                let slot = Slot::try_from(id).map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?;
                found = Some((slot, index));
                break;
            }
        }
        let (slot, module_slot) = found.ok_or_else(|| {
            Error::admin(format!(
                "no backend token labelled '{}'",
                config.token_label
            ))
        })?;
        let env = Envelope::new(
            crate::envelope::service::Settings::from(&config),
            slot,
            backend.clone(),
        );
        env.with_session(
            |s| match s.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
                Ok(())
                | Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::UserAlreadyLoggedIn,
                    _,
                )) => Ok(()),
                Err(e) => Err(Error::from_cryptoki("C_Login", e)),
            },
        )?;
        // Replica HSMs log in with their own PIN source or this PIN, and
        // prove they hold the same KEK (`status` shows the outcome).
        let mut env = env;
        env.add_replicas(&config)?;
        if !config.hsm.is_empty() {
            env.remember_pin(pin.as_bytes());
        }
        env.open_audit(&config)?;
        Ok(Admin {
            config,
            backend,
            env,
            slot,
            module_slot,
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Close the backend sessions and release the backend.
    pub fn close(self) {
        if let Some(a) = self.env.audit() {
            a.flush();
        }
        self.env.close();
        let Admin { backend, env, .. } = self;
        let replicas = env.replica_backends();
        // The envelope holds the only other reference to the backend.
        drop(env);
        for b in replicas {
            if let Ok(b) = Arc::try_unwrap(b) {
                b.finalize();
            }
        }
        if let Ok(b) = Arc::try_unwrap(backend) {
            b.finalize();
        }
    }
}
