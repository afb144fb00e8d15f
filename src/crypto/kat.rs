//! The same known-answer and call-rule tests on every provider of the
//! build (`Provider::ALL`): NIST SP 800-38A (ECB, CBC, CTR) and SP 800-38D
//! (GCM) vectors, CBC-PAD against its unpadded vectors, splits into random
//! parts, short buffers that change nothing, tampering that releases
//! nothing. In the FIPS build they run on AWS-LC's FIPS module alone, and
//! what its API does not offer must be refused, not done elsewhere.

use super::provider::Provider;
use super::test_util::{hex, multipart, oneshot, random_chunks, Rng};
use super::{new_op_with, CipherOp, CryptoError, Direction, Mode};

fn op(p: Provider, key: &[u8], mode: &Mode, dir: Direction) -> Box<dyn CipherOp> {
    new_op_with(p, key, mode, dir).unwrap_or_else(|e| panic!("{p:?} {mode:?}: {e}"))
}

const K128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const K192: &str = "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b";
const K256: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
const IV: &str = "000102030405060708090a0b0c0d0e0f";
const CTR0: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
const PT: &str = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
                  30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";

/// SP 800-38A F.1 (ECB), F.2 (CBC) and F.5 (CTR), AES-128/192/256.
fn sp800_38a() -> Vec<(Mode<'static>, &'static str, &'static str)> {
    let iv: [u8; 16] = hex(IV).try_into().unwrap();
    let ctr: [u8; 16] = hex(CTR0).try_into().unwrap();
    let ctr_mode = |bits| Mode::Ctr {
        iv: ctr,
        counter_bits: bits,
    };
    vec![
        (Mode::Ecb, K128, "3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf43b1cd7f598ece23881b00e3ed0306887b0c785e27e8ad3f8223207104725dd4"),
        (Mode::Ecb, K192, "bd334f1d6e45f25ff712a214571fa5cc974104846d0ad3ad7734ecb3ecee4eefef7afd2270e2e60adce0ba2face6444e9a4b41ba738d6c72fb16691603c18e0e"),
        (Mode::Ecb, K256, "f3eed1bdb5d2a03c064b5a7e3db181f8591ccb10d410ed26dc5ba74a31362870b6ed21b99ca6f4f9f153e7b1beafed1d23304b7a39f9f3ff067d8d8f9e24ecc7"),
        (Mode::Cbc { iv }, K128, "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b273bed6b8e3c1743b7116e69e222295163ff1caa1681fac09120eca307586e1a7"),
        (Mode::Cbc { iv }, K192, "4f021db243bc633d7178183a9fa071e8b4d9ada9ad7dedf4e5e738763f69145a571b242012fb7ae07fa9baac3df102e008b0e27988598881d920a9e64f5615cd"),
        (Mode::Cbc { iv }, K256, "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b"),
        (ctr_mode(128), K128, "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"),
        (ctr_mode(32), K192, "1abc932417521ca24f2b0459fe7e6e0b090339ec0aa6faefd5ccc2c6f4ce8e941e36b26bd1ebc670d1bd1d665620abf74f78a7f6d29809585a97daec58c6b050"),
        (ctr_mode(16), K256, "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c52b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"),
    ]
}

#[test]
fn sp800_38a_vectors_whole_and_in_random_parts() {
    let pt = hex(PT);
    let mut rng = Rng(0x38a);
    for p in Provider::ALL {
        for (mode, key, ct) in sp800_38a() {
            let (key, ct) = (hex(key), hex(ct));
            let what = format!("{p:?} {mode:?} key {}", key.len());
            let enc = || op(*p, &key, &mode, Direction::Encrypt);
            let dec = || op(*p, &key, &mode, Direction::Decrypt);
            assert_eq!(oneshot(&mut *enc(), &pt).unwrap(), ct, "{what}");
            assert_eq!(oneshot(&mut *dec(), &ct).unwrap(), pt, "{what}");
            for _ in 0..12 {
                let cuts = random_chunks(&mut rng, pt.len());
                assert_eq!(
                    multipart(&mut *enc(), &pt, &cuts).unwrap(),
                    ct,
                    "{what} {cuts:?}"
                );
                assert_eq!(
                    multipart(&mut *dec(), &ct, &cuts).unwrap(),
                    pt,
                    "{what} {cuts:?}"
                );
            }
        }
    }
}

/// CBC-PAD: the unpadded vector's ciphertext, then E(16 x 0x10 ^ the last
/// block) as the padding block; and every length 0..=40 round-trips,
/// whole and in random parts, the same on every provider.
#[test]
fn cbc_pad_known_answers_and_round_trips() {
    let (iv, pt) = (hex(IV), hex(PT));
    let ivb: [u8; 16] = iv.clone().try_into().unwrap();
    let mut rng = Rng(0xcbc);
    for p in Provider::ALL {
        for (mode, key, ct) in sp800_38a() {
            if !matches!(mode, Mode::Cbc { .. }) {
                continue;
            }
            let (key, ct) = (hex(key), hex(ct));
            let pad = Mode::CbcPad { iv: ivb };
            let sealed = oneshot(&mut *op(*p, &key, &pad, Direction::Encrypt), &pt).unwrap();
            assert_eq!(sealed[..64], ct[..], "{p:?}");
            let last: [u8; 16] = ct[48..].try_into().unwrap();
            let tail = oneshot(
                &mut *op(*p, &key, &Mode::Ecb, Direction::Encrypt),
                &last.map(|b| b ^ 0x10),
            )
            .unwrap();
            assert_eq!(sealed[64..], tail[..], "{p:?}");
            let back = oneshot(&mut *op(*p, &key, &pad, Direction::Decrypt), &sealed).unwrap();
            assert_eq!(back, pt);
        }
        let key = rng.bytes(32);
        let pad = Mode::CbcPad { iv: ivb };
        for len in 0..=40 {
            let msg = rng.bytes(len);
            let e = op(*p, &key, &pad, Direction::Encrypt);
            assert_eq!(e.oneshot_len(len), (len / 16 + 1) * 16);
            let sealed = oneshot(&mut *op(*p, &key, &pad, Direction::Encrypt), &msg).unwrap();
            assert_eq!(sealed.len(), (len / 16 + 1) * 16);
            for _ in 0..4 {
                let cuts = random_chunks(&mut rng, len);
                let mut e = op(*p, &key, &pad, Direction::Encrypt);
                assert_eq!(
                    multipart(&mut *e, &msg, &cuts).unwrap(),
                    sealed,
                    "{p:?} {len}"
                );
                let cuts = random_chunks(&mut rng, sealed.len());
                let mut d = op(*p, &key, &pad, Direction::Decrypt);
                assert_eq!(
                    multipart(&mut *d, &sealed, &cuts).unwrap(),
                    msg,
                    "{p:?} {len}"
                );
            }
        }
    }
}

/// Every provider gives the same bytes for the same random inputs, in
/// every mode (the cross-check beyond the fixed vectors).
#[test]
fn providers_agree_on_random_inputs() {
    let mut rng = Rng(0xa9ee);
    for _ in 0..30 {
        let key_len = [16, 24, 32][rng.below(3)];
        let key = rng.bytes(key_len);
        let iv: [u8; 16] = rng.bytes(16).try_into().unwrap();
        let gcm_iv = rng.bytes(12);
        let aad_len = rng.below(40);
        let aad = rng.bytes(aad_len);
        let modes = [
            Mode::Ecb,
            Mode::Cbc { iv },
            Mode::CbcPad { iv },
            Mode::Ctr {
                iv,
                counter_bits: 64,
            },
            Mode::Gcm {
                iv: &gcm_iv,
                aad: &aad,
                tag_len: 16,
            },
        ];
        for mode in modes {
            let len = match mode {
                Mode::Ecb | Mode::Cbc { .. } => rng.below(20) * 16,
                _ => rng.below(300),
            };
            let msg = rng.bytes(len);
            let outs: Vec<Vec<u8>> = Provider::ALL
                .iter()
                .map(|p| oneshot(&mut *op(*p, &key, &mode, Direction::Encrypt), &msg).unwrap())
                .collect();
            assert!(outs.windows(2).all(|w| w[0] == w[1]), "{mode:?}");
            for p in Provider::ALL {
                let back = oneshot(&mut *op(*p, &key, &mode, Direction::Decrypt), &outs[0]);
                assert_eq!(back.unwrap(), msg, "{p:?} {mode:?}");
            }
        }
    }
}

/// McGrew-Viega GCM test cases 2, 4, 10 and 16 (96-bit IVs, full tags;
/// SP 800-38D's vectors), AES-128/192/256, whole and in parts.
#[test]
fn gcm_known_answers() {
    let k = "feffe9928665731c6d6a8f9467308308";
    let p60 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
               1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
    let aad = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    let iv = "cafebabefacedbaddecaf888";
    let cases = [
        ("00000000000000000000000000000000".to_string(), "000000000000000000000000", "", "00000000000000000000000000000000".to_string(), "0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf"),
        (k.to_string(), iv, aad, p60.to_string(), "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e0915bc94fbc3221a5db94fae95ae7121a47"),
        (format!("{k}feffe9928665731c"), iv, aad, p60.to_string(), "3980ca0b3c00e841eb06fac4872a2757859e1ceaa6efd984628593b40ca1e19c7d773d00c144c525ac619d18c84a3f4718e2448b2fe324d9ccda27102519498e80f1478f37ba55bd6d27618c"),
        (format!("{k}{k}"), iv, aad, p60.to_string(), "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f66276fc6ece0f4e1768cddf8853bb2d551b"),
    ];
    let mut rng = Rng(0x38d);
    for p in Provider::ALL {
        for (key, iv, aad, pt, want) in &cases {
            let (key, iv, aad, pt, want) = (hex(key), hex(iv), hex(aad), hex(pt), hex(want));
            let mode = Mode::Gcm {
                iv: &iv,
                aad: &aad,
                tag_len: 16,
            };
            let what = format!("{p:?} key {}", key.len());
            let sealed = oneshot(&mut *op(*p, &key, &mode, Direction::Encrypt), &pt).unwrap();
            assert_eq!(sealed, want, "{what}");
            let back = oneshot(&mut *op(*p, &key, &mode, Direction::Decrypt), &want).unwrap();
            assert_eq!(back, pt, "{what}");
            for _ in 0..4 {
                let cuts = random_chunks(&mut rng, pt.len());
                let mut e = op(*p, &key, &mode, Direction::Encrypt);
                assert_eq!(multipart(&mut *e, &pt, &cuts).unwrap(), want, "{what}");
                let cuts = random_chunks(&mut rng, want.len());
                let mut d = op(*p, &key, &mode, Direction::Decrypt);
                assert_eq!(multipart(&mut *d, &want, &cuts).unwrap(), pt, "{what}");
            }
        }
    }
}

/// A flipped bit anywhere fails the tag, one-shot and multi-part, and
/// leaves nothing in the caller's buffer: untouched (RustCrypto checks the
/// tag first) or zeroized (aws-lc decrypts as it checks).
#[test]
fn gcm_tampering_releases_nothing() {
    for p in Provider::ALL {
        let (key, iv) = ([7u8; 32], [1u8; 12]);
        let mode = Mode::Gcm {
            iv: &iv,
            aad: b"hdr",
            tag_len: 16,
        };
        let sealed = oneshot(&mut *op(*p, &key, &mode, Direction::Encrypt), &[0x41; 50]).unwrap();
        for bit in (0..sealed.len() * 8).step_by(13) {
            let mut bad = sealed.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut out = vec![0xa5u8; sealed.len()];
            let mut d = op(*p, &key, &mode, Direction::Decrypt);
            assert_eq!(
                d.oneshot(&bad, &mut out),
                Err(CryptoError::Invalid),
                "{p:?}"
            );
            let wiped = out.iter().all(|b| *b == 0 || *b == 0xa5);
            assert!(wiped, "{p:?}: unverified plaintext left");
            let mut d = op(*p, &key, &mode, Direction::Decrypt);
            assert_eq!(d.update(&bad, &mut []), Ok(0));
            assert_eq!(d.finish(&mut out), Err(CryptoError::Invalid), "{p:?}");
        }
    }
}

/// PKCS#11's retry rule: a short buffer is reported with the length
/// needed and changes nothing; the retry gives the same bytes.
#[test]
fn a_short_buffer_changes_nothing() {
    let mut rng = Rng(0x5b7);
    for p in Provider::ALL {
        let key = rng.bytes(16);
        let iv: [u8; 16] = rng.bytes(16).try_into().unwrap();
        let gcm_iv = rng.bytes(12);
        let msg = rng.bytes(37);
        let modes = [
            Mode::CbcPad { iv },
            Mode::Ctr {
                iv,
                counter_bits: 32,
            },
            Mode::Gcm {
                iv: &gcm_iv,
                aad: &[],
                tag_len: 16,
            },
        ];
        for mode in modes {
            let want = oneshot(&mut *op(*p, &key, &mode, Direction::Encrypt), &msg).unwrap();
            let mut e = op(*p, &key, &mode, Direction::Encrypt);
            let mut small = vec![0u8; want.len() - 1];
            assert_eq!(
                e.oneshot(&msg, &mut small),
                Err(CryptoError::BufferTooSmall { needed: want.len() }),
                "{p:?} {mode:?}"
            );
            assert_eq!(oneshot(&mut *e, &msg).unwrap(), want, "{p:?} {mode:?}");
            let mut d = op(*p, &key, &mode, Direction::Decrypt);
            let mut small = vec![0x77u8; msg.len() - 1];
            assert_eq!(
                d.oneshot(&want, &mut small),
                Err(CryptoError::BufferTooSmall { needed: msg.len() }),
                "{p:?} {mode:?}"
            );
            assert!(small.iter().all(|b| *b == 0x77));
            assert_eq!(oneshot(&mut *d, &want).unwrap(), msg, "{p:?} {mode:?}");
        }
        // CBC-PAD's final decrypt call: the unpadded length, retried.
        let pad = Mode::CbcPad { iv };
        let sealed = oneshot(&mut *op(*p, &key, &pad, Direction::Encrypt), &msg).unwrap();
        let mut d = op(*p, &key, &pad, Direction::Decrypt);
        let mut out = vec![0u8; 32];
        assert_eq!(d.update(&sealed, &mut out), Ok(32));
        assert_eq!(
            d.finish(&mut [0; 4]),
            Err(CryptoError::BufferTooSmall { needed: 5 }),
            "{p:?}"
        );
        let mut fin = [0u8; 5];
        assert_eq!(d.finish(&mut fin), Ok(5));
        assert_eq!([out, fin.to_vec()].concat(), msg);
    }
}

/// Bad padding is `Invalid` and writes nothing, whole or at the final call.
#[test]
fn bad_cbc_padding_is_invalid_and_writes_nothing() {
    for p in Provider::ALL {
        let key = [5u8; 32];
        let mode = Mode::CbcPad { iv: [0; 16] };
        let sealed = oneshot(&mut *op(*p, &key, &mode, Direction::Encrypt), &[0xab; 14]).unwrap();
        // IV byte 15 flipped: the padding ends 02 00 instead of 02 02.
        let mut iv = [0u8; 16];
        iv[15] = 0x02;
        let bad = Mode::CbcPad { iv };
        let mut out = vec![0x5au8; 16];
        let mut d = op(*p, &key, &bad, Direction::Decrypt);
        assert_eq!(
            d.oneshot(&sealed, &mut out),
            Err(CryptoError::Invalid),
            "{p:?}"
        );
        assert!(out.iter().all(|b| *b == 0x5a));
        let mut d = op(*p, &key, &bad, Direction::Decrypt);
        assert_eq!(d.update(&sealed, &mut out), Ok(0));
        assert_eq!(d.finish(&mut out), Err(CryptoError::Invalid), "{p:?}");
        assert!(out.iter().all(|b| *b == 0x5a));
    }
}

/// A counter field that would wrap is refused before any keystream is
/// reused; the bits above the field never change.
#[test]
fn ctr_refuses_a_wrapping_counter() {
    for p in Provider::ALL {
        let key = [0x42u8; 16];
        let m8 = |iv| Mode::Ctr {
            iv,
            counter_bits: 8,
        };
        let mut e = op(*p, &key, &m8([0; 16]), Direction::Encrypt);
        let mut out = vec![0u8; 256 * 16];
        assert_eq!(
            e.update(&vec![0; 256 * 16], &mut out),
            Ok(256 * 16),
            "{p:?}"
        );
        assert_eq!(e.update(&[0], &mut [0]), Err(CryptoError::DataLen), "{p:?}");
        // Counter at 0xfe: two blocks, a partial one's rest still usable.
        let mut iv = [0xaau8; 16];
        iv[15] = 0xfe;
        let mut e = op(*p, &key, &m8(iv), Direction::Encrypt);
        assert_eq!(e.update(&[0; 17], &mut [0; 17]), Ok(17));
        assert_eq!(e.update(&[0; 15], &mut [0; 15]), Ok(15));
        assert_eq!(
            e.update(&[0; 1], &mut [0; 1]),
            Err(CryptoError::DataLen),
            "{p:?}"
        );
        // The 8-bit counter at 0xff: one block, equal to the 128-bit one's first.
        iv[15] = 0xff;
        let ks = oneshot(&mut *op(*p, &key, &m8(iv), Direction::Encrypt), &[0; 16]).unwrap();
        let wide = Mode::Ctr {
            iv,
            counter_bits: 128,
        };
        let ks128 = oneshot(&mut *op(*p, &key, &wide, Direction::Encrypt), &[0; 32]).unwrap();
        assert_eq!(ks[..], ks128[..16], "{p:?}");
    }
}

/// The aws-lc-rs provider refuses, as `Unsupported`, what its API does
/// not offer; the default build hands that to RustCrypto (`new_op`
/// succeeds), the FIPS build refuses it (`new_op` fails the same way).
#[cfg(feature = "aws-lc")]
#[test]
fn what_aws_lc_cannot_do_is_unsupported() {
    let key = [3u8; 16];
    let long_iv = [1u8; 16];
    let cases = [
        Mode::Gcm {
            iv: &long_iv,
            aad: &[],
            tag_len: 16,
        },
        Mode::Gcm {
            iv: &long_iv[..12],
            aad: &[],
            tag_len: 12,
        },
        Mode::Gcm {
            iv: &long_iv[..8],
            aad: &[],
            tag_len: 16,
        },
    ];
    for mode in cases {
        for dir in [Direction::Encrypt, Direction::Decrypt] {
            let r = new_op_with(Provider::AwsLc, &key, &mode, dir);
            assert_eq!(r.err(), Some(CryptoError::Unsupported), "{mode:?}");
            let front = super::new_op(&key, &mode, dir);
            if cfg!(feature = "fips") {
                assert_eq!(front.err(), Some(CryptoError::Unsupported), "{mode:?}");
            } else {
                assert!(front.is_ok(), "{mode:?}");
            }
        }
    }
}

/// The FIPS build links no other AES: its only provider is aws-lc-rs, and
/// AWS-LC reports itself as the FIPS module in FIPS mode.
#[cfg(feature = "fips")]
#[test]
fn the_fips_build_has_one_provider_in_fips_mode() {
    assert_eq!(Provider::ALL, &[Provider::AwsLc]);
    let state = super::module_state();
    assert_eq!(state.fips, Ok(()), "{state:?}");
    assert!(state.version.starts_with("AWS-LC FIPS "), "{state:?}");
}
