//! `hsm-envelope`: the operator's tool. It reads the module's TOML
//! configuration, logs in to the backend token with the user PIN, and manages
//! KEK versions, re-wraps DEK records, lists, recovers and purges DEKs,
//! verifies the audit log, reports health and copies the store into another.
//!
//! One file per command group under `src/bin/hsm-envelope/`; this file holds
//! the command line, the PIN, the exit codes and the output plumbing.
//!
//! Nothing secret is printed or logged: no PIN, no key bytes, no records.

// A crate root looks for modules beside itself; ours are in a directory
// named after the binary.
mod audit;
mod cli;
mod dek;
mod kek;
mod migrate;
mod migrate_sample;
mod migrate_target;
mod output;
mod rewrap;
mod status;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use zeroize::Zeroizing;

use hsm_envelope::admin::Admin;
use hsm_envelope::config::Config;
use hsm_envelope::error::Error;
use hsm_envelope::store::StoreError;

use cli::{AuditCommand, Cli, Command, DekCommand, KekCommand, StoreCommand};
use output::{Failure, Report};

/// The environment variable holding the user PIN (never a command-line
/// argument: those show in `ps`).
pub const PIN_ENV: &str = "HSM_ENVELOPE_PIN";

/// Exit codes; documented in `--help` (see `cli::EXIT_CODES`).
pub mod exit {
    pub const OK: u8 = 0;
    /// The operation failed or was refused.
    pub const FAILED: u8 = 1;
    /// Usage or configuration error (clap also exits with 2 on bad usage).
    pub const USAGE: u8 = 2;
    /// The backend: module not loadable, token not found, login failed, or
    /// the HSM answered an error.
    pub const BACKEND: u8 = 3;
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // --help / --version exit 0; usage errors exit 2 (with --json, as
        // one JSON document too).
        Err(e) => usage_error(e),
    };
    let json = cli.json;
    match run(cli) {
        Ok(report) => {
            report.print(json);
            ExitCode::from(exit::OK)
        }
        Err(f) => {
            f.print(json);
            ExitCode::from(f.code)
        }
    }
}

/// Exits for a command line clap refused: clap's message on stderr and, with
/// `--json`, the usual `{"error", "exit_code"}` document on stdout.
fn usage_error(e: clap::Error) -> ! {
    if !e.use_stderr() || !std::env::args_os().skip(1).any(|a| a == "--json") {
        e.exit()
    }
    let _ = e.print();
    let rendered = e.render().to_string();
    let msg = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_string();
    let doc = serde_json::json!({ "error": msg, "exit_code": exit::USAGE });
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
    );
    std::process::exit(i32::from(exit::USAGE))
}

fn run(cli: Cli) -> Result<Report, Failure> {
    let config = load_config(&cli)?;
    hsm_envelope::logging::configure(
        config.log_file.as_deref(),
        hsm_envelope::logging::Level::parse(&config.log_level)
            .unwrap_or(hsm_envelope::logging::Level::Info),
        config.log_file_mode,
    );
    // Refusals that need no HSM come before the PIN.
    let blob = match &cli.command {
        Command::Kek {
            command: KekCommand::Import { input, .. },
            ..
        } => Some(kek::read_blob(input)?),
        _ => None,
    };
    let audit_log = match &cli.command {
        Command::Audit {
            command: AuditCommand::Verify { log },
        } => Some(audit::log_path(log.as_deref(), &config)?),
        _ => None,
    };
    let migration = match &cli.command {
        Command::Store {
            command: StoreCommand::Migrate(args),
        } => Some(migrate::prepare(&config, args)?),
        _ => None,
    };
    let pin = read_pin()?;
    if matches!(cli.command, Command::Status) {
        return status::run(config, &pin);
    }
    let admin = connect(config, &pin)?;
    drop(pin);
    let result = match &cli.command {
        Command::Kek { hsm, command } => {
            let hsm = hsm.as_deref();
            match command {
                KekCommand::Create { kind, primary } => kek::create(&admin, hsm, *kind, *primary),
                KekCommand::ImportKey { out, new, bits } => {
                    kek::import_key(&admin, hsm, out.as_deref(), *new, *bits)
                }
                KekCommand::Import {
                    kind,
                    primary,
                    kek_version,
                    ..
                } => {
                    let blob = blob.as_ref().map_or(&[][..], |b| b.as_slice());
                    match kek_version {
                        Some(v) => kek::import_into_replica(&admin, hsm, *kind, blob, *v),
                        None => kek::import(&admin, hsm, *kind, blob, *primary),
                    }
                }
                KekCommand::Rotate => kek::rotate(&admin, hsm),
                KekCommand::List => kek::list(&admin, hsm),
                KekCommand::SetPrimary { kek_version } => {
                    kek::set_primary(&admin, hsm, *kek_version)
                }
                KekCommand::DestroyVersion { kek_version } => {
                    kek::destroy_version(&admin, hsm, *kek_version)
                }
            }
        }
        Command::Rewrap(args) => rewrap::run(&admin, args),
        Command::Dek { command } => match command {
            DekCommand::List { near_limit } => dek::list(&admin, *near_limit),
            DekCommand::Deleted => dek::deleted(&admin),
            DekCommand::Recover { id } => dek::recover(&admin, id),
            DekCommand::Purge { id } => dek::purge(&admin, id),
        },
        Command::Audit {
            command: AuditCommand::Verify { .. },
        } => match &audit_log {
            Some(path) => audit::verify(&admin, path),
            None => unreachable!("resolved before the PIN"),
        },
        Command::Store {
            command: StoreCommand::Migrate(_),
        } => match migration {
            Some(plan) => migrate::run(&admin, plan),
            None => unreachable!("prepared before the PIN"),
        },
        Command::Status => unreachable!("handled above"),
    };
    admin.close();
    result
}

/// `--config PATH`, else `HSM_ENVELOPE_CONF` (clap reads it into the same
/// argument), else the defaults, as the module does.
fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let Some(path) = cli.config.as_deref().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            exit::USAGE,
            format!(
                "configuration: cannot read {} (from --config or HSM_ENVELOPE_CONF): {e}",
                path.display()
            ),
        )
    })?;
    Config::from_toml(&text).map_err(|e| {
        let msg = match e {
            Error::Config(m) => format!("configuration: {}: {m}", path.display()),
            other => other.to_string(),
        };
        Failure::new(exit::USAGE, msg)
    })
}

/// The user PIN from `HSM_ENVELOPE_PIN`, else prompted without echo when
/// standard input is a terminal.
fn read_pin() -> Result<Zeroizing<String>, Failure> {
    if let Some(v) = std::env::var_os(PIN_ENV).filter(|v| !v.is_empty()) {
        return v
            .into_string()
            .map(Zeroizing::new)
            .map_err(|_| Failure::new(exit::USAGE, format!("{PIN_ENV} is not valid UTF-8")));
    }
    if std::io::stdin().is_terminal() {
        let pin = rpassword::prompt_password("User PIN of the backend token: ")
            .map(Zeroizing::new)
            .map_err(|e| Failure::new(exit::USAGE, format!("cannot read the PIN: {e}")))?;
        if pin.is_empty() {
            return Err(Failure::new(exit::USAGE, "empty PIN"));
        }
        return Ok(pin);
    }
    Err(Failure::new(
        exit::USAGE,
        format!(
            "no PIN: set {PIN_ENV}, or run on a terminal to be prompted for it (it is never read from the command line)"
        ),
    ))
}

/// Load the backend, find the token, log in: any failure is a backend error.
pub fn connect(config: Config, pin: &str) -> Result<Admin, Failure> {
    Admin::connect(config, pin).map_err(|e| Failure::new(exit::BACKEND, connect_message(&e)))
}

/// The operator-facing text of a failure to reach the token.
pub fn connect_message(e: &Error) -> String {
    match e {
        Error::Backend(b) if b.func == "C_Login" => format!(
            "login to the backend token failed: {}",
            hsm_envelope::error::rv_name(b.rv)
        ),
        other => other.to_string(),
    }
}

/// The exit code of a library error met while carrying out a command.
pub fn code_of(e: &Error) -> u8 {
    match e {
        Error::Config(_) => exit::USAGE,
        Error::Store(s) if matches!(**s, StoreError::Open { .. } | StoreError::Schema { .. }) => {
            exit::USAGE
        }
        Error::Backend { .. } | Error::BackendLoad(_) => exit::BACKEND,
        Error::Rv(rv) if *rv == hsm_envelope::vendor::CKR_HSME_KEK_UNAVAILABLE => exit::BACKEND,
        _ => exit::FAILED,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let msg = match &e {
            Error::Rv(rv) if *rv == hsm_envelope::vendor::CKR_HSME_KEK_UNAVAILABLE => format!(
                "{e}: a KEK version is missing on the backend token or unusable (see the log)"
            ),
            _ => e.to_string(),
        };
        Failure::new(code_of(&e), msg)
    }
}
