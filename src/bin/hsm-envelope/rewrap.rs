//! `hsm-envelope rewrap`: every record under the primary KEK version.
//!
//! Resumable by construction: each batch selects records *not under the
//! primary version*, so a run killed at any point leaves every record either
//! old (still selected next time) or new (never selected again), and each
//! record is replaced in a store transaction only if unchanged meanwhile.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use hsm_envelope::admin::Admin;
use hsm_envelope::envelope::rewrap::{RewrapBatch, RewrapJob};
use hsm_envelope::envelope::set_rewrap::SetRewrap;
use hsm_envelope::envelope::Envelope;

use crate::cli::RewrapArgs;
use crate::exit;
use crate::output::{Failure, Report};

/// Progress on stderr: a bar on a terminal, a plain line per second otherwise.
enum Progress {
    Bar(ProgressBar),
    Lines { last: Instant, total: u64 },
    Silent,
}

impl Progress {
    fn new(total: u64) -> Self {
        if total == 0 {
            return Progress::Silent;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "re-wrap {bar:40.cyan/blue} {pos}/{len} ({percent}%)  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress::Bar(bar)
        } else {
            eprintln!("re-wrap: {total} record(s) to re-wrap");
            Progress::Lines {
                last: Instant::now(),
                total,
            }
        }
    }

    fn update(&mut self, done: u64, skipped: u64, started: Instant) {
        match self {
            Progress::Bar(bar) => {
                if done > bar.length().unwrap_or(0) {
                    bar.set_length(done);
                }
                bar.set_position(done);
                let secs = started.elapsed().as_secs_f64();
                let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
                let mut msg = format!("{rate:.0} records/s");
                if skipped > 0 {
                    msg.push_str(&format!(", {skipped} skipped"));
                }
                bar.set_message(msg);
            }
            Progress::Lines { last, total } => {
                if last.elapsed() >= Duration::from_secs(1) {
                    *last = Instant::now();
                    eprintln!("{}", line(done, (*total).max(done), skipped, started));
                }
            }
            Progress::Silent => {}
        }
    }

    fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn line(done: u64, total: u64, skipped: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = if rate > 0.0 {
        format!("{:.0} s", total.saturating_sub(done) as f64 / rate)
    } else {
        "-".into()
    };
    format!("re-wrap: {done}/{total}, {skipped} skipped, {rate:.0} records/s, ETA {eta}")
}

/// The one-KEK job, or the job of a set of HSMs (any-of, all-of).
enum Job<'a> {
    One(RewrapJob<'a>),
    Set(SetRewrap<'a>),
}

impl<'a> Job<'a> {
    fn new(admin: &'a Admin, args: &RewrapArgs) -> hsm_envelope::error::Result<Self> {
        let env = &admin.env;
        if env.kek_mode().is_set() {
            return Ok(Job::Set(SetRewrap::new(env, args.threads())?));
        }
        Ok(Job::One(RewrapJob::new(
            env,
            admin.backend(),
            args.threads(),
        )?))
    }

    fn primary(&self) -> u32 {
        match self {
            Job::One(j) => j.primary(),
            Job::Set(j) => j.primary(),
        }
    }

    fn batch(&self, after: i64, limit: u32) -> hsm_envelope::error::Result<RewrapBatch> {
        match self {
            Job::One(j) => j.batch(after, limit),
            Job::Set(j) => j.batch(after, limit),
        }
    }

    /// What records end up under, in words.
    fn target(&self, env: &Envelope) -> String {
        match self {
            Job::One(j) => format!("KEK '{}' v{}", env.kek_label(), j.primary()),
            Job::Set(j) => format!(
                "KEK set '{}' v{} ({})",
                env.set_label(),
                j.primary(),
                j.combination()
            ),
        }
    }
}

pub fn run(admin: &Admin, args: &RewrapArgs) -> Result<Report, Failure> {
    let env = &admin.env;
    let job = Job::new(admin, args)?;
    let primary = job.primary();
    let target = job.target(env);
    let pending_before = env.pending_rewrap()?;
    let started = Instant::now();
    let mut progress = Progress::new(pending_before);
    let (mut scanned, mut rewrapped, mut skipped) = (0u64, 0u64, 0u64);
    let mut after = 0i64;
    let mut batches = 0u64;
    let outcome = loop {
        if pending_before == 0 {
            break Ok(());
        }
        let batch = match job.batch(after, args.batch) {
            Ok(batch) => batch,
            Err(e) => break Err(e),
        };
        batches += 1;
        scanned += batch.scanned as u64;
        rewrapped += batch.rewrapped as u64;
        skipped += batch.skipped as u64;
        progress.update(scanned, skipped, started);
        match batch.next {
            // A short batch is the last one.
            Some(next) if batch.scanned >= args.batch as usize => after = next,
            _ => break Ok(()),
        }
    };
    progress.finish();
    let elapsed = started.elapsed().as_secs_f64();
    let rate = if elapsed > 0.0 {
        rewrapped as f64 / elapsed
    } else {
        0.0
    };
    if let Err(e) = outcome {
        hsm_envelope::log_warn!(
            "rewrap stopped after {rewrapped} record(s) re-wrapped, {skipped} skipped: {e}"
        );
        let f = Failure::from(e);
        let msg = format!(
            "re-wrap stopped after {rewrapped} record(s) ({:.1} s): {}; run it again to continue",
            elapsed, f.message
        );
        return Err(Failure::new(f.code, msg).with_extra(json!({
            "rewrapped": rewrapped,
            "skipped": skipped,
            "elapsed_secs": elapsed,
        })));
    }
    let remaining = env.pending_rewrap()?;
    hsm_envelope::log_info!(
        "rewrap: {rewrapped} re-wrapped under v{primary}, {skipped} skipped, {remaining} remaining, {elapsed:.1} s"
    );
    let mut text = format!(
        "re-wrap under {target}: {rewrapped} re-wrapped, {skipped} skipped, {elapsed:.2} s, {rate:.0} records/s\n"
    );
    if pending_before == 0 {
        text = format!("re-wrap: nothing to do, every record is under {target}\n");
    }
    let doc = json!({
        "kek_label": env.kek_label(),
        "kek_mode": env.kek_mode().name(),
        "target": target,
        "primary": primary,
        "pending_before": pending_before,
        "scanned": scanned,
        "rewrapped": rewrapped,
        "skipped": skipped,
        "remaining": remaining,
        "batches": batches,
        "batch_size": args.batch,
        "threads": args.threads(),
        "elapsed_secs": elapsed,
        "rate_per_sec": rate,
    });
    if remaining > 0 {
        text.push_str(&format!(
            "{remaining} record(s) are still under older versions (failed to open or changed meanwhile; see the log); run again\n"
        ));
        return Err(Failure::new(
            exit::FAILED,
            format!("{remaining} record(s) still under older KEK versions"),
        )
        .with_report(Report::new(text, doc)));
    }
    Ok(Report::new(text, doc))
}
