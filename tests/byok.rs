//! RSA KEKs and bring-your-own-key (issue 3): RSA-2048/3072 versions made
//! on the HSM, and customer key material imported through the HSM's import
//! key. The independent party is openssl: it wraps the material
//! (scripts/byok-wrap.sh uses nothing else) and opens what the module wraps
//! under the imported keys, next to RustCrypto's aes-gcm.
//!
//! Each test runs in its own process (cargo nextest) with its own token.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use common::cli::*;
use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use hsm_envelope::envelope::record::{WrapAlg, WrappedRecord};
use hsm_envelope::token::object::template::Attrs;
use sha2::Digest;

const CKR_HSME_RECORD_INVALID: u64 = 0xC845_0002;

/// `(version, kind, state)` of every KEK version.
fn kinds(t: &TestToken) -> Vec<(u64, String, String)> {
    kek_list(t)
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["kind"].as_str().unwrap().to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// `kek import --type KIND --in BLOB [--primary]`.
fn import_args<'a>(kind: &'a str, blob: &'a str, primary: bool) -> Vec<&'a str> {
    let mut args = vec!["kek", "import", "--type", kind, "--in", blob];
    if primary {
        args.push("--primary");
    }
    args
}

/// A new RSA private key from openssl (exponent 65537 unless `exp`).
fn rsa_key(path: &Path, bits: u32, exp: Option<u32>) {
    let bits = format!("rsa_keygen_bits:{bits}");
    let exp = exp.map(|e| format!("rsa_keygen_pubexp:{e}"));
    let mut args = vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", &bits];
    if let Some(e) = &exp {
        args.extend(["-pkeyopt", e.as_str()]);
    }
    args.extend(["-out", path.to_str().unwrap()]);
    openssl(&args);
}

/// The public half of an openssl private key, as PEM at `out`.
fn public_of(private: &Path, out: &Path) {
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        out.to_str().unwrap(),
    ]);
}

/// openssl's RSA-OAEP (SHA-1) encryption of the file `input`.
fn oaep_encrypt(public: &Path, input: &Path) -> Vec<u8> {
    openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        public.to_str().unwrap(),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha1",
        "-in",
        input.to_str().unwrap(),
    ])
}

/// A transfer blob made by hand with openssl, for material the script
/// refuses to wrap (its length checks are what is being tested).
fn hand_made_blob(dir: &Path, public: &Path, material: &[u8]) -> Vec<u8> {
    let eph = random_bytes(32);
    let eph_path = dir.join("eph.bin");
    std::fs::write(&eph_path, &eph).unwrap();
    let material_path = dir.join("material.bin");
    std::fs::write(&material_path, material).unwrap();
    let hex: String = eph.iter().map(|b| format!("{b:02x}")).collect();
    let wrapped = openssl(&[
        "enc",
        "-id-aes256-wrap-pad",
        "-K",
        &hex,
        "-iv",
        "A65959A6",
        "-in",
        material_path.to_str().unwrap(),
    ]);
    [oaep_encrypt(public, &eph_path), wrapped].concat()
}

/// `kek import-key --out DIR/import.pem`; the PEM path. SoftHSM2 takes only
/// SHA-1 for OAEP, and the tool must say so.
fn import_key(t: &TestToken) -> PathBuf {
    let pem = t.path().join("import.pem");
    let doc = ok_json(t, &["kek", "import-key", "--out", pem.to_str().unwrap()]);
    assert_eq!(doc["oaep_hash"], "sha1", "{doc:#}");
    assert_eq!(doc["bits"], 3072, "{doc:#}");
    // openssl reads the public half as a 3072-bit RSA key.
    let text = openssl(&[
        "pkey",
        "-pubin",
        "-in",
        pem.to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(
        String::from_utf8_lossy(&text).contains("3072 bit"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert_eq!(
        doc["public_key_pem"],
        std::fs::read_to_string(&pem).unwrap()
    );
    pem
}

/// A token DEK with a known value, made through the module, and a GCM
/// ciphertext of `data` under it; the module is finalized afterwards so
/// the store can be read.
fn known_dek(label: &str, value: &[u8], data: &[u8]) -> Vec<u8> {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let h = import(
        &s,
        value,
        true,
        vec![Attribute::Label(label.as_bytes().to_vec())],
    );
    let ct = gcm_encrypt(&s, h, &[3; 12], b"", data).unwrap();
    drop(s);
    p.finalize().unwrap();
    ct
}

/// The stored row of the DEK labelled `label`: its record, and the AAD the
/// record binds (id and security attributes, as the record format says).
fn stored(t: &TestToken, label: &str) -> (WrappedRecord, Vec<u8>) {
    let conn = rusqlite::Connection::open(&t.store_path).unwrap();
    let (id, attrs, record): (Vec<u8>, Vec<u8>, Vec<u8>) = conn
        .query_row(
            "SELECT id, attrs, record FROM dek WHERE label = ?1",
            [label.as_bytes()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let rec = WrappedRecord::decode(&record).unwrap();
    let id: [u8; 16] = id.try_into().unwrap();
    let aad = rec.aad(&id, &Attrs::decode(&attrs).unwrap().bound_encoding());
    (rec, aad)
}

fn set_record(t: &TestToken, label: &str, record: &[u8]) {
    let conn = rusqlite::Connection::open(&t.store_path).unwrap();
    conn.execute(
        "UPDATE dek SET record = ?1 WHERE label = ?2",
        rusqlite::params![record, label.as_bytes()],
    )
    .unwrap();
}

/// A DEK decrypts its old ciphertext after a restart of the module (so its
/// record is opened on the HSM again).
fn decrypts_after_restart(label: &str, ct: &[u8], data: &[u8]) {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let h = s
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()[0];
    assert_eq!(gcm_decrypt(&s, h, &[3; 12], b"", ct).unwrap(), data);
    drop(s);
    p.finalize().unwrap();
}

/// Backend objects named like the KEK with this CKA_ID.
fn hsm_objects(id: &[u8]) -> Vec<ObjectHandle> {
    let hsm = init_pkcs11(&softhsm_module_path());
    let s = user_session_raw(&hsm);
    s.find_objects(&[
        Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ])
    .unwrap()
}

#[test]
fn rsa_2048_kek_round_trip() {
    let t = TestToken::new();
    let doc = ok_json(&t, &["kek", "create", "--type", "rsa2048", "--primary"]);
    assert_eq!(doc["version"], 2);
    assert_eq!(kinds(&t)[1], (2, "rsa2048".into(), "primary".into()));

    let data = b"under an RSA KEK".to_vec();
    let ct_a = known_dek("a", &[0xA1; 32], &data);
    let ct_b = known_dek("b", &[0xB2; 32], &data);
    let (rec, _) = stored(&t, "a");
    // SoftHSM2 2.6 refuses SHA-256 for OAEP: the record says SHA-1.
    assert_eq!(rec.alg, WrapAlg::RsaOaepSha1);
    assert_eq!(rec.kek_version, 2);
    assert!(rec.iv.is_empty());
    // An OAEP block and a PSS signature, 256 bytes each.
    assert_eq!(rec.ciphertext.len(), 512);
    decrypts_after_restart("a", &ct_a, &data);
    decrypts_after_restart("b", &ct_b, &data);

    // The record binds its row: b's record on a's row, or a changed block,
    // does not open.
    let (rec_b, _) = stored(&t, "b");
    let good = rec.encode();
    set_record(&t, "a", &rec_b.encode());
    let mut flipped = rec.clone();
    flipped.ciphertext[100] ^= 1;
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let h = s.find_objects(&[Attribute::Label(b"a".to_vec())]).unwrap()[0];
    let e = gcm_decrypt(&s, h, &[3; 12], b"", &ct_a).unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_RECORD_INVALID));
    drop(s);
    p.finalize().unwrap();
    set_record(&t, "a", &flipped.encode());
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let h = s.find_objects(&[Attribute::Label(b"a".to_vec())]).unwrap()[0];
    let e = gcm_decrypt(&s, h, &[3; 12], b"", &ct_a).unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_RECORD_INVALID));

    // The RSA KEK is guarded like the AES one: callers cannot decrypt with
    // its private half through the module.
    let kek = s
        .find_objects(&[
            Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .unwrap();
    assert_eq!(kek.len(), 1);
    let e = s
        .decrypt(&Mechanism::RsaPkcs, kek[0], rec.rsa_parts().0)
        .unwrap_err();
    assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
    // Nor sign with it: a signing oracle would forge records.
    let pss = Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    });
    let e = s.sign(&pss, kek[0], b"a record").unwrap_err();
    assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
    drop(s);
    p.finalize().unwrap();
    set_record(&t, "a", &good);
    decrypts_after_restart("a", &ct_a, &data);

    // On the HSM: a sensitive, never-extractable private key and a public
    // key, both with CKA_ID 02.
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let pair = hs
        .find_objects(&[
            Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
            Attribute::Id(vec![2]),
        ])
        .unwrap();
    assert_eq!(pair.len(), 2);
    for h in pair {
        let a = hs
            .get_attributes(h, &[AttributeType::Class, AttributeType::KeyType])
            .unwrap();
        assert!(a.contains(&Attribute::KeyType(KeyType::RSA)), "{a:?}");
        if a.contains(&Attribute::Class(ObjectClass::PRIVATE_KEY)) {
            assert!(bool_attr(&hs, h, AttributeType::Sensitive));
            assert!(!bool_attr(&hs, h, AttributeType::Extractable));
        }
    }
    drop(hs);
    hsm.finalize().unwrap();

    // A rotation keeps the primary's type; RSA-3072 can be made too; and
    // records move between AES and RSA versions with `rewrap`.
    ok(&t, &["kek", "rotate"]);
    ok(&t, &["kek", "create", "--type", "rsa3072"]);
    let k = kinds(&t);
    assert_eq!(k[2], (3, "rsa2048".into(), "primary".into()));
    assert_eq!(k[3], (4, "rsa3072".into(), "decrypt-only".into()));
    ok(&t, &["kek", "set-primary", "1"]);
    ok(&t, &["rewrap"]);
    let (rec, _) = stored(&t, "a");
    assert_eq!((rec.alg, rec.kek_version), (WrapAlg::AesGcm256, 1));
    decrypts_after_restart("a", &ct_a, &data);
    ok(&t, &["kek", "set-primary", "4"]);
    ok(&t, &["rewrap"]);
    let (rec, _) = stored(&t, "b");
    assert_eq!((rec.kek_version, rec.ciphertext.len()), (4, 768));
    decrypts_after_restart("b", &ct_b, &data);
}

#[test]
fn imported_aes_kek_wraps_as_an_independent_implementation_expects() {
    let t = TestToken::new();
    let pem = import_key(&t);
    // A second call shows the same key; --new replaces it.
    let again = ok_json(&t, &["kek", "import-key"]);
    assert_eq!(
        again["public_key_pem"],
        std::fs::read_to_string(&pem).unwrap()
    );

    let kek = random_bytes(32);
    let material = t.path().join("kek.bin");
    std::fs::write(&material, &kek).unwrap();
    let blob = t.path().join("kek.blob");
    byok_wrap(&pem, &material, &blob, false);
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), 384 + 40);

    let doc = ok_json(&t, &import_args("aes256", blob.to_str().unwrap(), true));
    assert_eq!(
        (doc["version"].as_u64(), doc["kind"].as_str()),
        (Some(2), Some("aes256"))
    );
    assert_eq!(kinds(&t)[1], (2, "aes256".into(), "primary".into()));
    // One import per import key: it is gone, and the blob cannot be
    // replayed.
    assert!(hsm_objects(b"byok-import").is_empty());
    let o = cli(&t, &import_args("aes256", blob.to_str().unwrap(), false));
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("no import key"), "{}", show(&o));

    // A DEK with a known value, wrapped under the imported KEK by the HSM,
    // opens with the customer's key material in RustCrypto's AES-GCM.
    let dek = random_bytes(32);
    let data = b"bring your own key".to_vec();
    let ct = known_dek("mine", &dek, &data);
    let (rec, aad) = stored(&t, "mine");
    assert_eq!((rec.alg, rec.kek_version), (WrapAlg::AesGcm256, 2));
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&kek).unwrap();
    let opened = cipher
        .decrypt(
            rec.iv.as_slice().try_into().unwrap(),
            Payload {
                msg: &rec.ciphertext,
                aad: &aad,
            },
        )
        .expect("the record opens with the imported key material");
    assert_eq!(opened, dek);
    // And the DEK's ciphertext is plain AES-GCM under the known value.
    let dek_cipher = aes_gcm::Aes256Gcm::new_from_slice(&dek).unwrap();
    assert_eq!(
        dek_cipher
            .decrypt((&[3u8; 12]).into(), ct.as_slice())
            .unwrap(),
        data
    );
    decrypts_after_restart("mine", &ct, &data);
}

#[test]
fn imported_rsa_kek_wraps_as_openssl_expects() {
    let t = TestToken::new();
    let dir = t.path();
    let key = dir.join("rsa.pem");
    let small = dir.join("rsa1024.pem");
    rsa_key(&key, 2048, None);
    rsa_key(&small, 1024, None);
    let pem = import_key(&t);

    // An RSA-1024 key is refused, and leaves nothing behind; the import key
    // stays for the next try.
    let blob_small = dir.join("small.blob");
    byok_wrap(&pem, &small, &blob_small, true);
    let o = cli(&t, &import_args("rsa", blob_small.to_str().unwrap(), false));
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("1024 bits"), "{}", show(&o));
    assert_eq!(kinds(&t).len(), 1);
    assert!(hsm_objects(&[2]).is_empty());
    assert_eq!(hsm_objects(b"byok-import").len(), 2);

    let blob = dir.join("rsa.blob");
    byok_wrap(&pem, &key, &blob, true);
    let doc = ok_json(&t, &import_args("rsa", blob.to_str().unwrap(), true));
    assert_eq!(doc["kind"], "rsa2048", "{doc:#}");

    let dek = random_bytes(32);
    let data = b"customer's own RSA root key".to_vec();
    let ct = known_dek("mine", &dek, &data);
    let (rec, aad) = stored(&t, "mine");
    assert_eq!((rec.alg, rec.kek_version), (WrapAlg::RsaOaepSha1, 2));
    // openssl, with the customer's private key, opens the record: SHA-256
    // of the AAD, then the DEK.
    let (oaep_block, signature) = rec.rsa_parts();
    let block = dir.join("block.bin");
    std::fs::write(&block, oaep_block).unwrap();
    let plain = openssl(&[
        "pkeyutl",
        "-decrypt",
        "-inkey",
        key.to_str().unwrap(),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha1",
        "-in",
        block.to_str().unwrap(),
    ]);
    assert_eq!(&plain[..32], sha2::Sha256::digest(&aad).as_slice());
    assert_eq!(&plain[32..], dek.as_slice());
    // And the record's RSA-PSS signature over AAD || block verifies with
    // the customer's public key.
    let public = dir.join("rsa.pub");
    public_of(&key, &public);
    let signed = dir.join("signed.bin");
    std::fs::write(&signed, [aad.as_slice(), oaep_block].concat()).unwrap();
    let sig = dir.join("sig.bin");
    std::fs::write(&sig, signature).unwrap();
    let verified = openssl(&[
        "dgst",
        "-sha256",
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:32",
        "-verify",
        public.to_str().unwrap(),
        "-signature",
        sig.to_str().unwrap(),
        signed.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&verified).contains("Verified OK"));
    decrypts_after_restart("mine", &ct, &data);

    // A forgery: whoever holds the public key can make an OAEP block that
    // binds the row (its AAD digest) and a DEK value of their choosing.
    // Without the HSM's signature the module refuses it.
    let chosen = [0x66u8; 32];
    let forged_plain = dir.join("forged.plain");
    std::fs::write(
        &forged_plain,
        [sha2::Sha256::digest(&aad).as_slice(), &chosen].concat(),
    )
    .unwrap();
    let forged_block = oaep_encrypt(&public, &forged_plain);
    let (_, other_aad) = stored(&t, "mine");
    assert_eq!(other_aad, aad);
    for sig in [signature.to_vec(), vec![0x42; 256]] {
        let forged = WrappedRecord {
            ciphertext: [forged_block.as_slice(), &sig].concat(),
            ..rec.clone()
        };
        set_record(&t, "mine", &forged.encode());
        let p = ours();
        let s = user_session(&p, token_slot(&p));
        let h = s
            .find_objects(&[Attribute::Label(b"mine".to_vec())])
            .unwrap()[0];
        let e = gcm_encrypt(&s, h, &[3; 12], b"", b"x").unwrap_err();
        assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_RECORD_INVALID));
        drop(s);
        p.finalize().unwrap();
    }
}

#[test]
fn import_refuses_bad_input_and_leaves_nothing_behind() {
    let t = TestToken::new();
    let dir = t.path();
    let blob_arg = |p: &Path| p.to_str().unwrap().to_string();
    let refused = |args: &[&str], want: &str, exit: i32| {
        let o = cli(&t, args);
        assert_eq!(code(&o), exit, "{args:?}: {}", show(&o));
        assert!(
            stderr(&o).contains(want),
            "{args:?}: want {want:?}: {}",
            show(&o)
        );
    };

    let material = dir.join("kek.bin");
    std::fs::write(&material, random_bytes(32)).unwrap();
    // Made for a stranger's key before this HSM has an import key.
    let stranger = dir.join("stranger.pem");
    rsa_key(&stranger, 2048, None);
    let stranger_pub = dir.join("stranger.pub");
    public_of(&stranger, &stranger_pub);
    let foreign = dir.join("foreign.blob");
    byok_wrap(&stranger_pub, &material, &foreign, false);
    refused(
        &import_args("aes256", &blob_arg(&foreign), false),
        "no import key",
        1,
    );

    let pem = import_key(&t);
    // Wrapped to another public key (the same length as ours would not be
    // needed: any block that does not open is refused).
    let foreign3072 = dir.join("foreign3072.blob");
    let stranger3072 = dir.join("stranger3072.pem");
    rsa_key(&stranger3072, 3072, None);
    let s3072_pub = dir.join("s3072.pub");
    public_of(&stranger3072, &s3072_pub);
    byok_wrap(&s3072_pub, &material, &foreign3072, false);
    refused(
        &import_args("aes256", &blob_arg(&foreign3072), false),
        "do not open with this HSM's import key",
        1,
    );

    let good = dir.join("good.blob");
    byok_wrap(&pem, &material, &good, false);
    let bytes = std::fs::read(&good).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    // Truncated; a corrupted key-wrap part; AES material imported as RSA.
    refused(
        &import_args("aes256", &blob_arg(&write("short", &bytes[..390])), false),
        "too short",
        1,
    );
    let mut corrupt = bytes.clone();
    corrupt[400] ^= 1;
    refused(
        &import_args("aes256", &blob_arg(&write("corrupt", &corrupt)), false),
        "does not unwrap",
        1,
    );
    refused(
        &import_args("rsa", &blob_arg(&good), false),
        "does not unwrap",
        1,
    );
    // A 16-byte key is no AES-256 KEK (the script refuses to make such a
    // blob; openssl alone makes one).
    let aes128 = write("aes128", &hand_made_blob(&dir, &pem, &random_bytes(16)));
    refused(
        &import_args("aes256", &blob_arg(&aes128), false),
        "not an AES-256 key",
        1,
    );
    // 31 bytes wrap to the 40 bytes of a 32-byte key; the trial seal and
    // open of the new version catches it, and its object is destroyed.
    let blob31 = hand_made_blob(&dir, &pem, &random_bytes(31));
    assert_eq!(blob31.len(), 384 + 40);
    let aes248 = write("aes248", &blob31);
    refused(
        &import_args("aes256", &blob_arg(&aes248), false),
        "does not work as a KEK",
        1,
    );
    // An RSA key with public exponent 3.
    let e3 = dir.join("e3.pem");
    rsa_key(&e3, 2048, Some(3));
    let e3_blob = dir.join("e3.blob");
    byok_wrap(&pem, &e3, &e3_blob, true);
    refused(
        &import_args("rsa", &blob_arg(&e3_blob), false),
        "exponent",
        1,
    );
    // Files that are no transfer blob at all: usage errors, before any PIN.
    refused(
        &import_args("aes256", "/nonexistent/blob", false),
        "cannot read the transfer file",
        2,
    );
    refused(
        &[
            "kek",
            "import",
            "--type",
            "aes256",
            "--in",
            &blob_arg(&write("big", &vec![0; 100_000])),
        ],
        "not a key transfer file",
        2,
    );
    let o = wrap_script(&["--oaep-hash", "md5", "a", "b", "c"]);
    assert_eq!(o.status.code(), Some(2));
    let k16 = write("k16", &random_bytes(16));
    let o = wrap_script(&[pem.to_str().unwrap(), k16.to_str().unwrap(), "/dev/null"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Nothing was added, on the store or the HSM; the import key is still
    // there, and the good blob still imports.
    assert_eq!(kinds(&t).len(), 1);
    assert!(hsm_objects(&[2]).is_empty());
    assert_eq!(hsm_objects(b"byok-import").len(), 2);
    ok(&t, &import_args("aes256", &blob_arg(&good), false));
    assert_eq!(kinds(&t)[1], (2, "aes256".into(), "decrypt-only".into()));
}
