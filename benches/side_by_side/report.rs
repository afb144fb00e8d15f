//! The table, the target check and the CSV files.

use std::fmt::Write as _;
use std::path::Path;

use crate::p11::Dir;
use crate::Res;

/// Single-part (Init + C_Encrypt) or multi-part (Init + Update(s) + Final).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Single,
    Multi,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Multi => "multi",
        }
    }
}

pub fn dir_label(d: Dir) -> &'static str {
    match d {
        Dir::Enc => "encrypt",
        Dir::Dec => "decrypt",
    }
}

/// One line of the table: aggregate ops/s of each implementation (None: not
/// measured or not supported). The raw libraries have no multi-part API, so
/// a multi-part row repeats their one-shot numbers.
#[derive(Clone, Debug)]
pub struct Row {
    pub size: usize,
    pub dir: Dir,
    pub mode: Mode,
    pub threads: usize,
    pub awslc: Option<f64>,
    pub aesgcm: Option<f64>,
    pub ours: Option<f64>,
    pub softhsm: Option<f64>,
    /// ours at `threads` / ours at 1 thread (same size, op, mode).
    pub ours_scaling: Option<f64>,
    pub softhsm_scaling: Option<f64>,
}

impl Row {
    pub fn ours_over_awslc(&self) -> Option<f64> {
        ratio(self.ours, self.awslc)
    }
    pub fn ours_over_softhsm(&self) -> Option<f64> {
        ratio(self.ours, self.softhsm)
    }
    /// Per-thread time per operation, ours minus raw aws-lc-rs, in ns.
    pub fn overhead_ns(&self) -> Option<f64> {
        let t = self.threads as f64;
        match (self.ours, self.awslc) {
            (Some(o), Some(a)) if o > 0.0 && a > 0.0 => Some(t * 1e9 / o - t * 1e9 / a),
            _ => None,
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub fn gbps(ops: f64, size: usize) -> f64 {
    ops * size as f64 / 1e9
}

pub fn size_label(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

fn ops_label(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(x) if x >= 1e6 => format!("{:.2}M", x / 1e6),
        Some(x) if x >= 1e3 => format!("{:.1}k", x / 1e3),
        Some(x) => format!("{x:.0}"),
    }
}

fn gbps_label(v: Option<f64>, size: usize) -> String {
    v.map(|x| format!("{:.3}", gbps(x, size)))
        .unwrap_or_else(|| "n/a".into())
}

fn x_label(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}x"))
        .unwrap_or_else(|| "-".into())
}

/// The table shows the per-call overhead only where the AES work is small
/// enough for it to mean something (the CSV has it for every row).
const OVERHEAD_MAX_SIZE: usize = 4096;

pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7} {:<7} {:<6} {:>3} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>7} {:>8} {:>8} {:>6}",
        "", "", "", "", "aws-lc-rs", "", "aes-gcm", "", "ours", "", "SoftHSM2", "", "ours/", "ours/", "overhead", "ours"
    );
    let _ = writeln!(
        s,
        "{:>7} {:<7} {:<6} {:>3} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>7} {:>8} {:>8} {:>6}",
        "size", "op", "mode", "thr", "ops/s", "GB/s", "ops/s", "GB/s", "ops/s", "GB/s", "ops/s", "GB/s",
        "aws-lc", "SoftHSM", "ns/op", "xN/x1"
    );
    let _ = writeln!(s, "{}", "-".repeat(133));
    let mut last = None;
    for r in rows {
        if last.is_some_and(|l| l != r.size) {
            let _ = writeln!(s);
        }
        last = Some(r.size);
        let _ = writeln!(
            s,
            "{:>7} {:<7} {:<6} {:>3} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>8} {:>6} | {:>7} {:>8} {:>8} {:>6}",
            size_label(r.size),
            dir_label(r.dir),
            r.mode.label(),
            r.threads,
            ops_label(r.awslc),
            gbps_label(r.awslc, r.size),
            ops_label(r.aesgcm),
            gbps_label(r.aesgcm, r.size),
            ops_label(r.ours),
            gbps_label(r.ours, r.size),
            ops_label(r.softhsm),
            gbps_label(r.softhsm, r.size),
            x_label(r.ours_over_awslc(), 2),
            x_label(r.ours_over_softhsm(), 1),
            r.overhead_ns()
                .filter(|_| r.size <= OVERHEAD_MAX_SIZE)
                .map(|x| format!("{x:.0}"))
                .unwrap_or_else(|| "-".into()),
            x_label(r.ours_scaling, 2),
        );
    }
    s
}

/// The issue-4 targets, checked against this run's rows.
pub fn targets(rows: &[Row], n_threads: usize) -> String {
    let mut s = String::new();
    let find = |size: usize, dir: Dir, threads: usize| {
        rows.iter().find(|r| {
            r.size == size && r.dir == dir && r.mode == Mode::Single && r.threads == threads
        })
    };
    let mut line = |what: String, got: Option<f64>, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let got = got.map(|g| format!("{g:.2}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "  {what:<62} {got:>9}  {verdict}");
    };
    for dir in [Dir::Enc, Dir::Dec] {
        let d = dir_label(dir);
        let r = find(1 << 20, dir, 1);
        let v = r.and_then(Row::ours_over_awslc);
        line(
            format!("1 MiB {d}: ours / raw aws-lc-rs >= 0.85"),
            v,
            v.map(|x| x >= 0.85),
        );
        let v = r.and_then(Row::ours_over_softhsm);
        line(
            format!("1 MiB {d}: ours / SoftHSM2 >= 8"),
            v,
            v.map(|x| x >= 8.0),
        );
        let r = find(4096, dir, 1);
        let v = r.and_then(|r| r.ours).map(|x| x / 1e6);
        line(
            format!("4 KiB {d}: ours M ops/s per thread >= 1"),
            v,
            v.map(|x| x >= 1.0),
        );
        let v = r.and_then(Row::ours_over_softhsm);
        line(
            format!("4 KiB {d}: ours / SoftHSM2 >= 15"),
            v,
            v.map(|x| x >= 15.0),
        );
        let r = find(64, dir, 1);
        let v = r.and_then(Row::overhead_ns);
        line(
            format!("64 B {d}: per-call overhead over raw aws-lc-rs <= 150 ns"),
            v,
            v.map(|x| x <= 150.0),
        );
        let v = r.and_then(Row::ours_over_softhsm);
        line(
            format!("64 B {d}: ours / SoftHSM2 ops/s >= 30"),
            v,
            v.map(|x| x >= 30.0),
        );
    }
    if n_threads > 1 {
        let worst = rows
            .iter()
            .filter(|r| r.threads == n_threads)
            .filter_map(|r| r.ours_scaling.map(|x| (x, r)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let (v, what) = match worst {
            Some((x, r)) => (
                Some(x),
                format!(
                    "{n_threads} threads / 1 thread, worst row ({} {} {})",
                    size_label(r.size),
                    dir_label(r.dir),
                    r.mode.label()
                ),
            ),
            None => (None, format!("{n_threads} threads / 1 thread")),
        };
        let want = if n_threads == 2 {
            1.85
        } else {
            0.925 * n_threads as f64
        };
        line(format!("{what} >= {want:.2}"), v, v.map(|x| x >= want));
    }
    s
}

fn f(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

pub fn write_table_csv(path: &Path, rows: &[Row]) -> Res<()> {
    let mut s = String::from(
        "size_bytes,op,mode,threads,\
         awslc_ops_per_s,awslc_gb_per_s,aesgcm_ops_per_s,aesgcm_gb_per_s,\
         ours_ops_per_s,ours_gb_per_s,softhsm_ops_per_s,softhsm_gb_per_s,\
         ours_over_awslc,ours_over_softhsm,ours_overhead_ns_per_op,\
         ours_thread_scaling,softhsm_thread_scaling\n",
    );
    for r in rows {
        let g = |v: Option<f64>| f(v.map(|x| gbps(x, r.size)));
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.size,
            dir_label(r.dir),
            r.mode.label(),
            r.threads,
            f(r.awslc),
            g(r.awslc),
            f(r.aesgcm),
            g(r.aesgcm),
            f(r.ours),
            g(r.ours),
            f(r.softhsm),
            g(r.softhsm),
            f(r.ours_over_awslc()),
            f(r.ours_over_softhsm()),
            f(r.overhead_ns()),
            f(r.ours_scaling),
            f(r.softhsm_scaling),
        );
    }
    write(path, &s)
}

/// One measured (or computed) number from the extra sections.
pub struct Extra {
    pub section: &'static str,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
    pub note: String,
}

pub fn write_extra_csv(path: &Path, extras: &[Extra]) -> Res<()> {
    let mut s = String::from("section,metric,value,unit,note\n");
    for e in extras {
        let _ = writeln!(
            s,
            "{},{},{:.6},{},{}",
            e.section,
            csv_field(&e.metric),
            e.value,
            e.unit,
            csv_field(&e.note)
        );
    }
    write(path, &s)
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

fn write(path: &Path, text: &str) -> Res<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
