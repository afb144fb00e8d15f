//! A small logger owned by the module. A PKCS#11 module must not install a
//! global `log`/`tracing` subscriber in its host program, so it writes its own
//! lines to the configured file (or stderr for warnings and errors).
//! Callers pass only non-secret facts: never key bytes, PINs or plaintext.

use std::fmt::Arguments;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

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
}

struct Sink {
    file: Option<File>,
    level: Level,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    file: None,
    level: Level::Warn,
});

/// Point the logger at `file` (or stderr) with `level`. Failure to open the
/// file is reported on stderr and logging falls back to stderr.
pub fn configure(file: Option<&Path>, level: Level) {
    let f = file.and_then(
        |p| match OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("hsm-envelope: cannot open log file {}: {e}", p.display());
                None
            }
        },
    );
    if let Ok(mut s) = SINK.lock() {
        s.level = if f.is_some() {
            level
        } else {
            level.min(Level::Warn)
        };
        s.file = f;
    }
}

pub fn write(level: Level, args: Arguments<'_>) {
    let Ok(mut s) = SINK.lock() else { return };
    if level > s.level {
        return;
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let line = format!("{secs} pid={} {level:?} {args}\n", std::process::id());
    match s.file.as_mut() {
        Some(f) => {
            let _ = f.write_all(line.as_bytes());
        }
        None => eprint!("hsm-envelope: {line}"),
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
