//! A small logger owned by the module. A PKCS#11 module must not install a
//! global `log`/`tracing` subscriber in its host program, so it writes its own
//! lines to the configured file (or stderr for warnings and errors).
//! Callers pass only non-secret facts: never key bytes, PINs or plaintext.
//!
//! A line is `TIME pid=PID LEVEL message`: TIME in RFC 3339 UTC (the module
//! clock, `clock::now_rfc3339`), LEVEL one of [`Level::name`]. Messages name
//! return values by their `CKR_*` names and carry no Rust debug text.

use std::fmt::Arguments;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

/// Mode of a log file this module creates (an existing file keeps its own).
pub const DEFAULT_FILE_MODE: u32 = 0o600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }

    /// The level as written on a log line.
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

struct Sink {
    file: Option<File>,
    level: Level,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    file: None,
    level: Level::Warn,
});

/// Point the logger at `file` (or stderr) with `level`; a file that does
/// not exist yet is created with `mode` (see [`DEFAULT_FILE_MODE`]). Failure
/// to open the file is reported on stderr and logging falls back to stderr.
pub fn configure(file: Option<&Path>, level: Level, mode: u32) {
    let f = file.and_then(|p| {
        match OpenOptions::new()
            .create(true)
            .append(true)
            .mode(mode)
            .open(p)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("hsm-envelope: cannot open log file {}: {e}", p.display());
                None
            }
        }
    });
    if let Ok(mut s) = SINK.lock() {
        s.level = if f.is_some() {
            level
        } else {
            level.min(Level::Warn)
        };
        s.file = f;
    }
}

/// One log line, as [`write`] puts it in the file.
pub fn format_line(level: Level, args: Arguments<'_>) -> String {
    format!(
        "{} pid={} {} {args}\n",
        crate::clock::now_rfc3339(),
        std::process::id(),
        level.name()
    )
}

pub fn write(level: Level, args: Arguments<'_>) {
    let Ok(mut s) = SINK.lock() else { return };
    if level > s.level {
        return;
    }
    let line = format_line(level, args);
    match s.file.as_mut() {
        Some(f) => {
            let _ = f.write_all(line.as_bytes());
        }
        None => eprint!("hsm-envelope: {line}"),
    }
}

/// An error the user must see whatever the log settings: one line on
/// stderr (`hsm-envelope: MESSAGE`), and the same message in the log file
/// when there is one.
pub fn error_to_user(args: Arguments<'_>) {
    let Ok(mut s) = SINK.lock() else {
        eprintln!("hsm-envelope: {args}");
        return;
    };
    eprintln!("hsm-envelope: {args}");
    if let Some(f) = s.file.as_mut() {
        let _ = f.write_all(format_line(Level::Error, args).as_bytes());
    }
}

#[macro_export]
macro_rules! log_error { ($($t:tt)*) => { $crate::logging::write($crate::logging::Level::Error, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_warn { ($($t:tt)*) => { $crate::logging::write($crate::logging::Level::Warn, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_info { ($($t:tt)*) => { $crate::logging::write($crate::logging::Level::Info, format_args!($($t)*)) } }
#[macro_export]
macro_rules! log_debug { ($($t:tt)*) => { $crate::logging::write($crate::logging::Level::Debug, format_args!($($t)*)) } }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_an_rfc3339_utc_time_the_pid_and_a_level_name() {
        let line = format_line(Level::Warn, format_args!("C_Login: CKR_PIN_INCORRECT"));
        let (time, rest) = line.split_once(' ').unwrap();
        // 2026-11-28T10:00:00Z
        assert_eq!(time.len(), 20, "{line}");
        assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{line}");
        assert!(time[..4].chars().all(|c| c.is_ascii_digit()), "{line}");
        assert_eq!(
            rest,
            format!(
                "pid={} WARN C_Login: CKR_PIN_INCORRECT\n",
                std::process::id()
            )
        );
        for (l, n) in [
            (Level::Error, "ERROR"),
            (Level::Warn, "WARN"),
            (Level::Info, "INFO"),
            (Level::Debug, "DEBUG"),
        ] {
            assert_eq!(l.name(), n);
            assert!(format_line(l, format_args!("x")).contains(&format!(" {n} x")));
        }
    }
}
