//! All-of (double key) shares: a DEK value split into one share per HSM so
//! that the value is the XOR of every share. Any set of shares short of all
//! of them is uniformly random and says nothing about the value (n-of-n
//! secret sharing), and a value of the application's choosing (imported,
//! unwrapped) splits as well as a generated one.

use cryptoki_sys::CKR_FUNCTION_FAILED;

use crate::error::{Error, Result};
use crate::secret::SecretBytes;

/// Split `value` into `n` (at least 1) shares: n-1 random, the last the
/// value XOR all of them.
pub fn split(value: &[u8], n: usize) -> Result<Vec<SecretBytes>> {
    let mut last = SecretBytes::from_slice(value);
    let mut out = Vec::with_capacity(n);
    for _ in 1..n {
        let mut share = SecretBytes::new(value.len());
        getrandom::fill(share.as_mut_slice()).map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))?;
        xor_into(last.as_mut_slice(), share.as_slice());
        out.push(share);
    }
    out.push(last);
    Ok(out)
}

/// The value the shares make; None when they differ in length or there
/// are none.
pub fn join(shares: &[SecretBytes]) -> Option<SecretBytes> {
    let first = shares.first()?;
    if shares.iter().any(|s| s.len() != first.len()) {
        return None;
    }
    let mut value = first.try_clone();
    for s in &shares[1..] {
        xor_into(value.as_mut_slice(), s.as_slice());
    }
    Some(value)
}

fn xor_into(acc: &mut [u8], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_is_needed() {
        let value = [0x42u8; 32];
        for n in 1..=4 {
            let shares = split(&value, n).unwrap();
            assert_eq!(shares.len(), n);
            assert_eq!(join(&shares).unwrap().as_slice(), value);
            if n > 1 {
                // Any n-1 shares give something else (with overwhelming
                // probability), and no share is the value.
                for skip in 0..n {
                    let some: Vec<SecretBytes> = shares
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != skip)
                        .map(|(_, s)| s.try_clone())
                        .collect();
                    assert_ne!(join(&some).unwrap().as_slice(), value);
                    assert_ne!(shares[skip].as_slice(), value);
                }
            }
        }
        assert!(join(&[]).is_none());
        let odd = [
            SecretBytes::from_slice(&[1; 16]),
            SecretBytes::from_slice(&[1; 32]),
        ];
        assert!(join(&odd).is_none());
    }
}
