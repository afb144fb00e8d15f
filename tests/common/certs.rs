//! Certificates for the TLS tests, made with the `openssl` command-line
//! tool (the Debian package `openssl`, which `scripts/deps.sh` installs): a
//! CA of the test's own and certificates it signs, EC P-256, valid for two
//! days. Depends on nothing but std, so that the store's unit tests and
//! the configuration's can include it with `#[path]` as well.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A self-signed CA: `NAME.pem` and `NAME.key` in its directory.
pub struct TestCa {
    dir: PathBuf,
    name: String,
}

/// A certificate the CA signed and its private key (PKCS#8 PEM).
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl (install the Debian package `openssl`): {e}")
        });
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` arguments for a new P-256 key without a passphrase.
const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl TestCa {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let (pem, key, subject) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("/CN={name}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(NEW_KEY);
        args.extend([
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &args);
        TestCa {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// The CA's certificate (what a client trusts).
    pub fn cert(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A server certificate for `names` (subjectAltName entries such as
    /// `DNS:localhost`, `IP:127.0.0.1`), files `STEM.pem` and `STEM.key`.
    pub fn server(&self, stem: &str, names: &[&str]) -> Issued {
        self.issue(stem, "server", "serverAuth", Some(&names.join(",")))
    }

    /// A client certificate whose common name is `user` (what
    /// PostgreSQL's `cert` authentication compares with the user name).
    pub fn client(&self, stem: &str, user: &str) -> Issued {
        self.issue(stem, user, "clientAuth", None)
    }

    fn issue(&self, stem: &str, cn: &str, purpose: &str, names: Option<&str>) -> Issued {
        let (pem, key, csr, ext) = (
            format!("{stem}.pem"),
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.ext"),
        );
        let mut extensions = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage={purpose}\n"
        );
        if let Some(names) = names {
            extensions.push_str(&format!("subjectAltName={names}\n"));
        }
        std::fs::write(self.dir.join(&ext), extensions).expect("write the extensions file");
        let subject = format!("/CN={cn}");
        let mut args = vec!["req", "-new"];
        args.extend(NEW_KEY);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(&self.dir, &args);
        let (ca_pem, ca_key) = (format!("{}.pem", self.name), format!("{}.key", self.name));
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
        Issued {
            cert: self.dir.join(pem),
            key: self.dir.join(key),
        }
    }
}
