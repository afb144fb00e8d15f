//! AES-GCM IVs the module makes (PKCS#11 3.0 IV generators in
//! `CK_GCM_MESSAGE_PARAMS`). The caller's IV buffer gives the length and
//! its first `fixed_bits` bits (most significant first), which are kept;
//! the module writes the rest:
//!
//! - **counter** (`CKG_GENERATE`, `CKG_GENERATE_COUNTER`; SP 800-38D
//!   8.2.1, the deterministic construction): the last 32 bits are the
//!   invocation number, the bits before them (up to 128) a random prefix
//!   the caller draws once per key and process; bits between the fixed
//!   field and the prefix, if any, are zero. At least 32 bits must be free.
//! - **random** (`CKG_GENERATE_RANDOM`; SP 800-38D 8.2.2): every free bit
//!   random, and at least 96 of them.
//!
//! Pure functions: where the invocation number and the prefix come from
//! (and why they are unique) is the caller's business.

use super::CryptoError;

/// Bits of the invocation number at the end of a counter IV.
pub const COUNTER_BITS: usize = 32;
/// Fewest free bits a random IV may have (SP 800-38D 8.2.2: r >= 96).
pub const MIN_RANDOM_BITS: usize = 96;
/// Most bits of the random prefix of a counter IV.
pub const MAX_PREFIX_BITS: usize = 128;

/// How many bits of an `iv_len`-byte IV the module writes, or `Param` if
/// the fixed field does not fit in the IV.
pub fn free_bits(iv_len: usize, fixed_bits: usize) -> Result<usize, CryptoError> {
    iv_len
        .checked_mul(8)
        .and_then(|bits| bits.checked_sub(fixed_bits))
        .ok_or(CryptoError::Param)
}

/// The random prefix's width for a counter IV with `free` free bits.
pub fn prefix_bits(free: usize) -> usize {
    free.saturating_sub(COUNTER_BITS).min(MAX_PREFIX_BITS)
}

/// Zero every bit of `iv` from bit `from` (most significant first) on.
fn clear_from(iv: &mut [u8], from: usize) {
    let first = from / 8;
    if let Some((head, tail)) = iv.get_mut(first..).and_then(|r| r.split_first_mut()) {
        *head &= !(0xffu8 >> (from % 8));
        tail.fill(0);
    }
}

/// Write the low `bits` bits of `value` into the low end of `buf`, leaving
/// its other bits alone.
fn put_low_bits(buf: &mut [u8], mut value: u128, bits: usize) {
    let mut left = bits;
    for b in buf.iter_mut().rev() {
        if left == 0 {
            break;
        }
        let k = left.min(8);
        let mask = if k == 8 { 0xff } else { (1u8 << k) - 1 };
        *b = (*b & !mask) | (value as u8 & mask);
        value >>= 8;
        left -= k;
    }
}

/// A counter IV (see the module's text): `iv`'s fixed field kept, then
/// zeros, `prefix`'s low bits, and `count` in the last 32 bits.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn counter(
    iv: &mut [u8],
    fixed_bits: usize,
    prefix: u128,
    count: u32,
) -> Result<(), CryptoError> {
    match <&mut [u8; 12]>::try_from(&mut *iv) {
        Ok(iv) => counter_96(iv, fixed_bits, prefix, count),
        Err(_) => counter_any(iv, fixed_bits, prefix, count),
    }
}

/// `counter` for the usual 96-bit IV, made in one register and stored
/// whole: the cipher reads the IV back at once, and an IV written in
/// pieces of other widths (`counter_any`'s copies) stalls that read.
#[inline(always)]
fn counter_96(
    iv: &mut [u8; 12],
    fixed_bits: usize,
    prefix: u128,
    count: u32,
) -> Result<(), CryptoError> {
    let free = free_bits(12, fixed_bits)?;
    if free < COUNTER_BITS {
        return Err(CryptoError::Param);
    }
    // Free bits: the prefix's low `free - 32` bits, then the count (no
    // zeros between: at most 64 prefix bits are wanted).
    let free_mask = (1u128 << free) - 1;
    let made = ((prefix << COUNTER_BITS) | u128::from(count)) & free_mask;
    // Without a fixed field nothing of the caller's buffer is kept, and it
    // is not read (the shim copies in only the fixed field's bytes).
    let fixed = if fixed_bits == 0 {
        0
    } else {
        let mut wide = [0u8; 16];
        wide[4..].copy_from_slice(iv);
        u128::from_be_bytes(wide) & !free_mask
    };
    let bytes = (fixed | made).to_be_bytes();
    let mut out = [0u8; 12];
    out.copy_from_slice(&bytes[4..]);
    *iv = out;
    Ok(())
}

/// `counter` for an IV of any length.
fn counter_any(
    iv: &mut [u8],
    fixed_bits: usize,
    prefix: u128,
    count: u32,
) -> Result<(), CryptoError> {
    let free = free_bits(iv.len(), fixed_bits)?;
    if free < COUNTER_BITS {
        return Err(CryptoError::Param);
    }
    let split = iv.len() - COUNTER_BITS / 8;
    let (head, tail) = iv.split_at_mut(split);
    tail.copy_from_slice(&count.to_be_bytes());
    let bits = prefix_bits(free);
    if fixed_bits.is_multiple_of(8) {
        // Whole bytes (the usual case): zeros, then the prefix's low bytes.
        let (between, low) = head
            .get_mut(fixed_bits / 8..)
            .ok_or(CryptoError::Param)?
            .split_at_mut(free / 8 - COUNTER_BITS / 8 - bits / 8);
        between.fill(0);
        low.copy_from_slice(&prefix.to_be_bytes()[16 - bits / 8..]);
        return Ok(());
    }
    clear_from(head, fixed_bits);
    put_low_bits(head, prefix, bits);
    Ok(())
}

/// A random IV: `iv`'s fixed field kept, every other bit from `fill`.
pub fn random(
    iv: &mut [u8],
    fixed_bits: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), CryptoError>,
) -> Result<(), CryptoError> {
    let free = free_bits(iv.len(), fixed_bits)?;
    if free < MIN_RANDOM_BITS {
        return Err(CryptoError::Param);
    }
    let first = fixed_bits / 8;
    let keep_mask = !(0xffu8 >> (fixed_bits % 8));
    let region = iv.get_mut(first..).ok_or(CryptoError::Param)?;
    let kept = region.first().copied().unwrap_or(0) & keep_mask;
    fill(region)?;
    if let Some(b) = region.first_mut() {
        *b = kept | (*b & !keep_mask);
    }
    Ok(())
}

/// Bytes from a cryptographically secure generator: aws-lc's DRBG where
/// built in (user space, fork-safe), else the operating system's.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    #[cfg(feature = "aws-lc")]
    {
        aws_lc_rs::rand::fill(buf).map_err(|_| CryptoError::Param)
    }
    #[cfg(not(feature = "aws-lc"))]
    {
        getrandom::fill(buf).map_err(|_| CryptoError::Param)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_iv_keeps_the_fixed_field_and_ends_with_the_count() {
        // 96-bit IV, nothing fixed: 64-bit prefix, 32-bit count.
        let mut iv = [0xaa; 12];
        counter(&mut iv, 0, 0x0102_0304_0506_0708, 0x0a0b_0c0d).unwrap();
        assert_eq!(iv, [1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d]);
        // 32 fixed bits: 32-bit prefix (the prefix's low bits).
        let mut iv = [0xaa; 12];
        counter(&mut iv, 32, 0xffff_ffff_1122_3344, 7).unwrap();
        assert_eq!(
            iv,
            [0xaa, 0xaa, 0xaa, 0xaa, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 7]
        );
        // 33 fixed bits: the first bit of byte 4 is the caller's.
        let mut iv = [0xff; 12];
        counter(&mut iv, 33, 0, 1).unwrap();
        assert_eq!(iv, [0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1]);
        // 64 fixed bits: nothing left for a prefix.
        let mut iv = [0x55; 12];
        counter(&mut iv, 64, u128::MAX, 2).unwrap();
        assert_eq!(
            iv,
            [0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0x55, 0, 0, 0, 2]
        );
        // A long IV: zeros between the fixed field and the 128-bit prefix.
        let mut iv = [0xff; 24];
        counter(&mut iv, 8, u128::MAX, 3).unwrap();
        assert_eq!(iv[0], 0xff);
        assert_eq!(&iv[1..4], &[0, 0, 0]);
        assert_eq!(&iv[4..20], &[0xff; 16]);
        assert_eq!(&iv[20..], &[0, 0, 0, 3]);
    }

    #[test]
    fn the_96_bit_counter_iv_is_the_general_one() {
        let mut rng = crate::crypto::test_util::Rng(0x9e37_79b9_7f4a_7c15);
        for fixed_bits in 0..=97 {
            for _ in 0..50 {
                let mut start = [0u8; 12];
                start.copy_from_slice(&rng.bytes(12));
                let prefix = u128::from(rng.next()) << 64 | u128::from(rng.next());
                let count = rng.next() as u32;
                let (mut fast, mut general) = (start, start);
                let a = counter_96(&mut fast, fixed_bits, prefix, count);
                let b = counter_any(&mut general, fixed_bits, prefix, count);
                assert_eq!(a, b, "fixed_bits {fixed_bits}");
                assert_eq!(fast, general, "fixed_bits {fixed_bits}");
            }
        }
    }

    #[test]
    fn a_counter_iv_needs_32_free_bits() {
        assert_eq!(counter(&mut [0; 12], 65, 0, 0), Err(CryptoError::Param));
        assert_eq!(counter(&mut [0; 12], 97, 0, 0), Err(CryptoError::Param));
        assert_eq!(counter(&mut [0; 3], 0, 0, 0), Err(CryptoError::Param));
        assert!(counter(&mut [0; 4], 0, 0, 0).is_ok());
    }

    #[test]
    fn a_random_iv_keeps_the_fixed_field_and_needs_96_free_bits() {
        let mut iv = [0xff; 16];
        random(&mut iv, 20, |b| {
            b.fill(0);
            Ok(())
        })
        .unwrap();
        assert_eq!(&iv[..3], &[0xff, 0xff, 0xf0]);
        assert!(iv[3..].iter().all(|b| *b == 0));
        let fill = |b: &mut [u8]| random_bytes(b);
        assert_eq!(random(&mut [0; 12], 1, fill), Err(CryptoError::Param));
        assert!(random(&mut [0; 12], 0, fill).is_ok());
        assert!(random(&mut [0; 16], 32, fill).is_ok());
        assert_eq!(random(&mut [0; 12], 200, fill), Err(CryptoError::Param));
    }

    #[test]
    fn random_ivs_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut iv = [0u8; 12];
            random(&mut iv, 0, random_bytes).unwrap();
            assert!(seen.insert(iv));
        }
    }
}
