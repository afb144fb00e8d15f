//! The command line (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hsm_envelope::backend::import::Material;
use hsm_envelope::backend::kek::KekType;

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the operation failed or was refused (the reason is printed)
  2  usage or configuration error: bad arguments, unreadable or invalid
     configuration, store file not openable, no PIN
  3  backend error: backend module not loadable, token not found, login
     failed (wrong PIN), a KEK version missing, or an HSM call failed

PIN: from the environment variable HSM_ENVELOPE_PIN, else prompted without
echo when standard input is a terminal; never from the command line.
With --json, stdout holds exactly one JSON document, also on failure
({\"error\": ..., \"exit_code\": ...}); messages and progress go to stderr.";

#[derive(Parser, Debug)]
#[command(
    name = "hsm-envelope",
    version,
    about = "Operator tool for hsm-envelope: KEK versions, rotation, re-wrap, DEKs (list, recover, purge), audit log, health, store migration",
    long_about = "Operator tool for hsm-envelope, the PKCS#11 module that keeps KEKs on the \
backend HSM and stores DEKs wrapped by them. It reads the module's TOML configuration \
(--config, else HSM_ENVELOPE_CONF, else the defaults) and logs in to the backend token \
as the user.",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// The module's TOML configuration file [default: the built-in defaults]
    #[arg(long, global = true, env = "HSM_ENVELOPE_CONF", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Machine-readable output: one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage KEK versions on the HSM: create, import, rotate, list, promote, destroy
    #[command(after_help = EXIT_CODES)]
    Kek {
        /// The member this is about (its `name` in the configuration;
        /// default: the top-level KEK, member "main"): with kek_mode
        /// "any-of" or "all-of" its own KEK; with "replicas" a replica, for
        /// `import-key` and `import --kek-version N`
        #[arg(long, global = true, value_name = "NAME")]
        hsm: Option<String>,
        #[command(subcommand)]
        command: KekCommand,
    },
    /// Re-wrap every DEK record under the primary KEK version
    ///
    /// Each record is unwrapped with its old KEK version and wrapped with the
    /// primary one, both on the HSM, and replaced atomically; the data the
    /// DEKs encrypt is not touched. Batched and resumable: stopping it at any
    /// point (even kill -9) and running it again carries on, and a run with
    /// nothing to do changes nothing. Exit 1 if records remain under older
    /// versions at the end (e.g. ones that failed to open; see the log).
    #[command(after_help = EXIT_CODES)]
    Rewrap(RewrapArgs),
    /// Token DEKs: list, list soft-deleted ones, recover, purge
    #[command(after_help = EXIT_CODES)]
    Dek {
        #[command(subcommand)]
        command: DekCommand,
    },
    /// The tamper-evident audit log
    #[command(after_help = EXIT_CODES)]
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Health: backend module, token, login, KEK versions, record counts,
    /// deleted DEKs and purge protection
    #[command(after_help = EXIT_CODES)]
    Status,
    /// The store itself: copy it into another (SQLite into PostgreSQL)
    #[command(after_help = EXIT_CODES)]
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy the configured store into another one, e.g. a PostgreSQL
    /// database, and check the copy
    ///
    /// Copies, row for row and still wrapped: every token DEK (soft-deleted
    /// ones too, with their purge dates), every KEK version with its state,
    /// the GCM invocation counts and purge protection. Leases are not
    /// copied. The configured store's rows are only read. The target must hold no
    /// DEK and no KEK version (exit 1 otherwise), unless --resume.
    ///
    /// Stop every process that uses the store first: rows written during
    /// the copy are not copied, and the check at the end then fails. The
    /// check compares every row, the counts per KEK version, the deleted
    /// count and the GCM counts, and opens a sample of records from the
    /// target through the HSM. Then set `store_url` (or `store_path`) in
    /// the configuration to the target.
    #[command(after_help = EXIT_CODES)]
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The target store: postgresql://user@host:port/db (or a `host=...
    /// dbname=...` string), or a SQLite file: sqlite:///path or a path
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Rows per batch (each batch is one transaction in the target)
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Carry on a copy that stopped: allowed only if the target holds
    /// exactly the source's KEK versions and its first rows (checked row by
    /// row before anything is written)
    #[arg(long)]
    pub resume: bool,
    /// PEM file of the CA certificates that signed the target server's
    /// certificate (as `store_tls_ca` will say once it is the store;
    /// default: the configuration's store_tls_ca, else the system's roots)
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum KekCommand {
    /// Generate a new KEK version on the HSM (decrypt-only unless --primary)
    ///
    /// A version made ahead of time can be promoted later with `kek set-primary`.
    #[command(after_help = EXIT_CODES)]
    Create {
        /// Key type of the new version
        #[arg(long = "type", value_enum, default_value_t = KekKind::Aes256)]
        kind: KekKind,
        /// Make the new version primary at once (as `kek rotate` does)
        #[arg(long)]
        primary: bool,
    },
    /// Make (or show) the HSM import key that BYOK key material is wrapped to
    ///
    /// Writes its public half as PEM (SubjectPublicKeyInfo) and says how to
    /// wrap: an ephemeral AES-256 key encrypted with RSA-OAEP to this public
    /// key, followed by the key material wrapped with that AES key by AES-KWP
    /// (RFC 5649) — the format Azure, AWS KMS and Vault import, and what
    /// `scripts/byok-wrap.sh` makes with openssl. The private half never
    /// leaves the HSM; a successful `kek import` destroys the pair.
    #[command(after_help = EXIT_CODES)]
    ImportKey {
        /// Write the public key here (default: standard output)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace an existing import key with a new one
        #[arg(long)]
        new: bool,
        /// Size of a new import key
        #[arg(long, default_value_t = 3072, value_parser = clap::value_parser!(u32).range(2048..=4096))]
        bits: u32,
    },
    /// Import customer key material (BYOK) as a new KEK version
    ///
    /// FILE is the transfer blob made against the public key of `kek
    /// import-key`. The new version is decrypt-only unless --primary.
    #[command(after_help = EXIT_CODES)]
    Import {
        /// What the blob carries
        #[arg(long = "type", value_enum)]
        kind: ImportKind,
        /// The transfer blob
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Make the new version primary at once
        #[arg(long, conflicts_with = "kek_version")]
        primary: bool,
        /// With kek_mode "replicas" and --hsm naming a replica: the version
        /// of main this material is (the replica must open what main seals
        /// under it, else the import is undone)
        #[arg(long = "kek-version", value_name = "N")]
        kek_version: Option<u32>,
    },
    /// Generate a new KEK version on the HSM and make it primary
    ///
    /// The new version has the primary's type. New DEKs wrap under it at once here, and in every running process
    /// within `refresh_secs`. Existing records stay under their versions
    /// until `hsm-envelope rewrap` (or their next use, with lazy_rewrap).
    #[command(after_help = EXIT_CODES)]
    Rotate,
    /// List KEK versions: kind, state, created, primary since, records under each
    #[command(after_help = EXIT_CODES)]
    List,
    /// Make an existing version primary
    #[command(after_help = EXIT_CODES)]
    SetPrimary {
        /// The KEK version
        #[arg(value_name = "VERSION")]
        kek_version: u32,
    },
    /// Destroy a KEK version on the HSM
    ///
    /// Refused for the primary version, and while any record (soft-deleted
    /// ones included) still needs it: run `hsm-envelope rewrap` first. Also
    /// refused within `refresh_secs` of the version's retirement, while
    /// running processes may still wrap new DEKs under it.
    #[command(after_help = EXIT_CODES)]
    DestroyVersion {
        /// The KEK version
        #[arg(value_name = "VERSION")]
        kek_version: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum DekCommand {
    /// List token DEKs: label, id, CKA_ID, KEK version, created, last used,
    /// AES-GCM invocations
    ///
    /// Soft-deleted DEKs are not listed; their records still count for their
    /// KEK version (`kek list`, `status`). GCM USES is how many AES-GCM
    /// encryptions processes have reserved for the DEK's key material, of
    /// `gcm_invocation_limit` (reservations run ahead of the encryptions by
    /// at most `gcm_invocation_block` per process); at the limit, further
    /// encryptions are refused (CKR_HSME_INVOCATION_LIMIT).
    #[command(after_help = EXIT_CODES)]
    List {
        /// Only the DEKs whose key has used PERCENT of its GCM invocation
        /// limit or more [default PERCENT: 90]
        #[arg(
            long,
            value_name = "PERCENT",
            num_args = 0..=1,
            default_missing_value = "90",
            value_parser = clap::value_parser!(u8).range(0..=100)
        )]
        near_limit: Option<u8>,
    },
    /// List soft-deleted DEKs: when they were deleted, from when they may be
    /// purged, and whether they may be purged now
    ///
    /// Destroying a token DEK through the module only marks it deleted: it
    /// stays recoverable for `retention_days`. Under purge protection it can
    /// be purged only once that period has passed; without it, at any time.
    #[command(after_help = EXIT_CODES)]
    Deleted,
    /// Restore a soft-deleted DEK with its attributes
    ///
    /// Applications find it again, and data it encrypted decrypts again.
    #[command(after_help = EXIT_CODES)]
    Recover {
        /// The DEK's id: 32 hex digits, as `dek deleted` shows it
        #[arg(value_name = "ID", value_parser = parse_dek_id)]
        id: [u8; 16],
    },
    /// Remove a soft-deleted DEK for good (it cannot be recovered after)
    ///
    /// Refused (exit 1) while purge protection is on and the DEK's retention
    /// period has not passed. The record's bytes are overwritten in the store;
    /// data encrypted under the DEK can no longer be decrypted.
    #[command(after_help = EXIT_CODES)]
    Purge {
        /// The DEK's id: 32 hex digits, as `dek deleted` shows it
        #[arg(value_name = "ID", value_parser = parse_dek_id)]
        id: [u8; 16],
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the audit log: the hash chain of every line, and every
    /// checkpoint's HMAC with the key on the HSM (`audit_hmac_label`)
    ///
    /// Names the first edited, removed, inserted or reordered line and why
    /// (exit 1). Lines after the last checkpoint are chain-checked but not
    /// authenticated: their number is reported.
    #[command(after_help = EXIT_CODES)]
    Verify {
        /// The log file [default: `audit_log` from the configuration]
        #[arg(long, value_name = "PATH")]
        log: Option<PathBuf>,
    },
}

/// A DEK id as `dek list` and `dek deleted` show it: 32 hex digits.
pub fn parse_dek_id(s: &str) -> Result<[u8; 16], String> {
    let t = s.trim();
    let expected = "expected the DEK's id: 32 hex digits, as `hsm-envelope dek deleted` shows it";
    if t.len() != 32 {
        return Err(format!("{expected} (got {} characters)", t.chars().count()));
    }
    if let Some(c) = t.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("{expected} ({c:?} is not a hex digit)"));
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| expected.to_string())?;
    }
    Ok(id)
}

#[derive(Args, Debug)]
pub struct RewrapArgs {
    /// Records per batch (each batch is one store transaction)
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Worker threads, each with a backend session of its own. One is
    /// fastest on SoftHSM2, which serialises its work; a network HSM gains
    /// from several requests in flight (try 4 to 16)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
}

impl RewrapArgs {
    pub fn threads(&self) -> usize {
        self.threads as usize
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum KekKind {
    /// AES-256, generated on the HSM
    Aes256,
    /// RSA-2048 key pair, generated on the HSM; DEKs wrap with RSA-OAEP
    Rsa2048,
    /// RSA-3072 key pair, generated on the HSM; DEKs wrap with RSA-OAEP
    Rsa3072,
}

impl KekKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KekKind::Aes256 => "aes256",
            KekKind::Rsa2048 => "rsa2048",
            KekKind::Rsa3072 => "rsa3072",
        }
    }

    pub fn kek_type(self) -> KekType {
        match self {
            KekKind::Aes256 => KekType::Aes256,
            KekKind::Rsa2048 => KekType::Rsa(2048),
            KekKind::Rsa3072 => KekType::Rsa(3072),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportKind {
    /// A 32-byte AES key
    Aes256,
    /// An RSA private key of 2048 bits or more, as PKCS#8 PrivateKeyInfo (DER)
    Rsa,
}

impl ImportKind {
    pub fn material(self) -> Material {
        match self {
            ImportKind::Aes256 => Material::Aes256,
            ImportKind::Rsa => Material::Rsa,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn dek_ids_are_32_hex_digits() {
        let id = super::parse_dek_id("00112233445566778899aabbccddeeFF").unwrap();
        assert_eq!(id[0], 0x00);
        assert_eq!(id[1], 0x11);
        assert_eq!(id[15], 0xff);
        for bad in ["", "0011", &"0".repeat(33), &format!("{}g", "0".repeat(31))] {
            assert!(super::parse_dek_id(bad).is_err(), "{bad:?}");
        }
        // Multi-byte characters are refused, not sliced.
        let s = format!("{}é", "0".repeat(30));
        assert_eq!(s.len(), 32);
        assert!(super::parse_dek_id(&s).is_err());
    }
}
