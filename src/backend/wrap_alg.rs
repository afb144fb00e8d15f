//! How the HSM wraps a DEK value under a KEK: the record's algorithm byte
//! names one of these (see `envelope::record`).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WrapAlg {
    /// DEK value encrypted with `CKM_AES_GCM` on the HSM under an AES-256
    /// KEK, 12-byte IV, 16-byte tag appended to the ciphertext.
    AesGcm256 = 1,
    /// DEK value (behind the AAD digest) encrypted with `CKM_RSA_PKCS_OAEP`,
    /// SHA-1 and MGF1-SHA-1, under an RSA KEK's public key, and signed with
    /// `CKM_SHA256_RSA_PKCS_PSS` by its private key: the backend took no
    /// SHA-256 for OAEP (SoftHSM2 2.6 takes only SHA-1).
    RsaOaepSha1 = 2,
    /// As `RsaOaepSha1` with SHA-256 and MGF1-SHA-256.
    RsaOaepSha256 = 3,
}

impl WrapAlg {
    pub fn from_u8(b: u8) -> Option<WrapAlg> {
        match b {
            1 => Some(WrapAlg::AesGcm256),
            2 => Some(WrapAlg::RsaOaepSha1),
            3 => Some(WrapAlg::RsaOaepSha256),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, WrapAlg::RsaOaepSha1 | WrapAlg::RsaOaepSha256)
    }

    pub fn name(self) -> &'static str {
        match self {
            WrapAlg::AesGcm256 => "AES-256-GCM",
            WrapAlg::RsaOaepSha1 => "RSA-OAEP-SHA1",
            WrapAlg::RsaOaepSha256 => "RSA-OAEP-SHA256",
        }
    }
}

/// Smallest and largest RSA block (OAEP block or signature) a record may
/// hold: 2048- to 8192-bit keys.
pub const RSA_MIN_BLOCK: usize = 256;
pub const RSA_MAX_BLOCK: usize = 1024;
