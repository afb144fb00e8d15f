//! Per-process cache of unwrapped DEK values and their key schedules, keyed
//! by record id. Values sit in zeroized, locked memory; dropping an entry zeroizes it once the last
//! in-flight operation using it has finished.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::secret::SecretBytes;
use crate::crypto::{CryptoError, PreparedKey};

#[derive(Default)]
pub struct KeyCache {
    map: RwLock<HashMap<[u8; 16], Arc<PreparedKey>>>,
}

impl KeyCache {
    /// Hits take only a read lock.
    pub fn get(&self, id: &[u8; 16]) -> Option<Arc<PreparedKey>> {
        self.map.read().ok()?.get(id).cloned()
    }

    /// Cache a value with its key schedules, built once here.
    pub fn insert(
        &self,
        id: [u8; 16],
        value: SecretBytes,
    ) -> Result<Arc<PreparedKey>, CryptoError> {
        let v = Arc::new(PreparedKey::new(value)?);
        if let Ok(mut m) = self.map.write() {
            m.insert(id, v.clone());
        }
        Ok(v)
    }

    pub fn remove(&self, id: &[u8; 16]) {
        if let Ok(mut m) = self.map.write() {
            m.remove(id);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.map.write() {
            m.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
