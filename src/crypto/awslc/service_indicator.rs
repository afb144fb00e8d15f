//! The FIPS build's proof, from AWS-LC's own FIPS service indicator, that
//! what `fips_mode = true` runs are approved services of the validated
//! module, and that what it refuses would not be (the indicator's counter
//! moves only when an approved service completes; aws-lc-rs keeps its own
//! reading private, so the tests read it through aws-lc-fips-sys).

use aws_lc_fips_sys::{FIPS_service_indicator_after_call, FIPS_service_indicator_before_call};

use crate::crypto::gcm_message::{self, Data};
use crate::crypto::key_wrap::{self, KeyWrap};
use crate::crypto::test_util::oneshot;
use crate::crypto::{new_op, CmacOp, Direction, Mode, PreparedKey};
use crate::secret::SecretBytes;

/// Whether `f` ran at least one approved service of the module (the
/// indicator is per thread, and `f` runs on this one).
fn approved(f: impl FnOnce()) -> bool {
    // SAFETY: both calls only read and return the calling thread's counter.
    let before = unsafe { FIPS_service_indicator_before_call() };
    f();
    // SAFETY: as above.
    let after = unsafe { FIPS_service_indicator_after_call() };
    after != before
}

fn key(len: usize) -> PreparedKey {
    PreparedKey::new(SecretBytes::from_slice(&vec![0x5a; len])).unwrap()
}

#[test]
fn fips_mode_gcm_is_approved_and_a_caller_iv_would_not_be() {
    for len in [16, 32] {
        let k = key(len);
        let (mut iv, mut tag) = ([0u8; 12], [0u8; 16]);
        let mut buf = *b"message in place";
        assert!(
            approved(|| gcm_message::seal_module_iv(
                &k,
                &mut iv,
                b"a",
                Data::InPlace(&mut buf),
                &mut tag
            )
            .unwrap()),
            "AES-{} GCM under the module's own IV",
            len * 8
        );
        assert!(approved(|| gcm_message::open(
            &k,
            &iv,
            b"a",
            Data::InPlace(&mut buf),
            &tag
        )
        .unwrap()));
        assert_eq!(&buf, b"message in place");
        // What fips_mode refuses: an IV chosen outside the module.
        assert!(!approved(|| {
            gcm_message::seal(&k, &[1; 12], b"a", Data::InPlace(&mut buf), &mut tag).unwrap()
        }));
    }
    // And AES-192-GCM, which it refuses too.
    let k = key(24);
    let mut buf = [0u8; 16];
    let mut tag = [0u8; 16];
    gcm_message::seal(&k, &[1; 12], b"", Data::InPlace(&mut buf), &mut tag).unwrap();
    assert!(!approved(|| gcm_message::open(
        &k,
        &[1; 12],
        b"",
        Data::InPlace(&mut buf),
        &tag
    )
    .unwrap()));
}

#[test]
fn the_block_modes_are_approved_with_every_key_size() {
    let iv = [7u8; 16];
    let modes = [
        Mode::Ecb,
        Mode::Cbc { iv },
        Mode::CbcPad { iv },
        Mode::Ctr {
            iv,
            counter_bits: 32,
        },
    ];
    for len in [16, 24, 32] {
        for mode in modes {
            for dir in [Direction::Encrypt, Direction::Decrypt] {
                let mut op = new_op(&vec![3; len], &mode, dir).unwrap();
                let input = match (mode, dir) {
                    (Mode::CbcPad { .. }, Direction::Decrypt) => {
                        let mut e = new_op(&vec![3; len], &mode, Direction::Encrypt).unwrap();
                        oneshot(&mut *e, &[1; 32]).unwrap()
                    }
                    _ => vec![1; 32],
                };
                assert!(
                    approved(|| {
                        oneshot(&mut *op, &input).unwrap();
                    }),
                    "{mode:?} {dir:?} AES-{}",
                    len * 8
                );
            }
        }
    }
}

#[test]
fn cmac_and_key_wrap_are_approved_with_the_key_sizes_fips_mode_allows() {
    for len in [16, 32] {
        let mut op = CmacOp::new(&vec![9; len], 16).unwrap();
        op.update(b"data");
        assert!(approved(|| {
            op.mac().unwrap();
        }));
        let w = key_wrap::wrap(&vec![9; len], KeyWrap::Kwp, &[4; 32]).unwrap();
        assert!(approved(|| {
            crate::crypto::key_wrap::wrap(
                &vec![9; len],
                crate::crypto::key_wrap::KeyWrap::Kw,
                &[4; 32],
            )
            .unwrap();
        }));
        assert!(approved(|| {
            crate::crypto::key_wrap::unwrap(
                &vec![9; len],
                crate::crypto::key_wrap::KeyWrap::Kwp,
                &w,
            )
            .unwrap();
        }));
    }
    // AES-192-CMAC, which fips_mode refuses, is not.
    let mut op = CmacOp::new(&[9; 24], 16).unwrap();
    op.update(b"data");
    assert!(!approved(|| {
        op.mac().unwrap();
    }));
}
