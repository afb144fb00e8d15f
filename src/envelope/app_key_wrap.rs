//! Key wrap and unwrap of DEK values with the application's own backend
//! keys (C_WrapKey / C_UnwrapKey), and random bytes from the HSM.

use cryptoki_sys::*;

use super::service::Envelope;
use crate::backend::kek;
use crate::error::Result;
use crate::secret::SecretBytes;

impl Envelope {
    /// Random bytes (DEK values) from the first member that answers, in
    /// locked memory until copied out.
    pub fn random(&self, out: &mut [u8]) -> Result<()> {
        let bytes = self.on_members(|m| {
            m.pool.with(m.backend()?.pkcs11(), |s| {
                let mut buf = SecretBytes::new(out.len());
                kek::random(s, buf.as_mut_slice())?;
                Ok(buf)
            })
        })?;
        out.copy_from_slice(bytes.as_slice());
        Ok(())
    }

    /// Wrap `value` with the backend key `wrapping` (any AES key the
    /// caller may use, the KEK included) using an AES key-wrap mechanism.
    pub fn keywrap(
        &self,
        wrapping: CK_OBJECT_HANDLE,
        mech: CK_MECHANISM_TYPE,
        value: &[u8],
    ) -> Result<Vec<u8>> {
        let backend = self.backend();
        let w = kek::object_handle(wrapping);
        self.with_session(|s| kek::keywrap(backend, &self.temp_gate, s, w, mech, value))
    }

    pub fn keyunwrap(
        &self,
        unwrapping: CK_OBJECT_HANDLE,
        mech: CK_MECHANISM_TYPE,
        wrapped: &[u8],
    ) -> Result<SecretBytes> {
        let backend = self.backend();
        let w = kek::object_handle(unwrapping);
        self.with_session(|s| kek::keyunwrap(backend, &self.temp_gate, s, w, mech, wrapped))
    }
}
