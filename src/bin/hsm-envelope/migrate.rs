//! `hsm-envelope store migrate --to URL`: the configured store copied into
//! another (SQLite into PostgreSQL, typically), row for row with records
//! still wrapped, then checked row by row and with a sample of records
//! opened through the HSM (see `hsm_envelope::store::copy`).
//!
//! The stores are opened and the target checked before the PIN is read:
//! a bad URL, an unreachable server or a target that is not empty costs
//! no login. The source is only read.

use std::time::{Duration, Instant};

use serde_json::json;

use hsm_envelope::admin::Admin;
use hsm_envelope::config::Config;
use hsm_envelope::error::Error;
use hsm_envelope::store::copy::{Copier, CopyError, Tally, Verified};
use hsm_envelope::store::{Location, Store, StoreError};

use crate::cli::MigrateArgs;
use crate::migrate_sample::{self as sample, Picker};
use crate::migrate_target as target;
use crate::output::{hex, table, Failure, Report};
use crate::{code_of, exit};

/// Both stores open and the target checked: what `run` needs.
pub struct Plan {
    source: Store,
    target: Store,
    batch: u32,
    /// `--to` as given: the next step repeats it (if it holds no password).
    given: String,
    /// Where a resumed copy carries on (after this id), if it is one.
    resume: Option<Option<[u8; 16]>>,
    /// How long checking the target's rows for `--resume` took.
    resume_secs: f64,
}

fn store_failure(which: &str, e: StoreError) -> Failure {
    let e = Error::from(e);
    Failure::new(code_of(&e), format!("{which}: {e}"))
}

fn copy_failure(e: CopyError) -> Failure {
    match e {
        CopyError::Store(e) => store_failure("store migrate", e),
        CopyError::Mismatch(m) => Failure::new(
            exit::FAILED,
            format!("--resume refused: {m}; copy into an empty store instead"),
        ),
    }
}

/// Parses `--to`, opens both stores and checks that the target is empty
/// (or, with `--resume`, holds the start of a copy of the source).
pub fn prepare(config: &Config, args: &MigrateArgs) -> Result<Plan, Failure> {
    let to =
        target::parse(&args.to).map_err(|m| Failure::new(exit::USAGE, format!("--to: {m}")))?;
    // A PostgreSQL target is reached with the configuration's TLS files
    // (store_tls_ca, client certificate), as it will be once it is the store.
    let to = match to {
        Location::Postgres(url) => {
            let mut files = config.store_tls_files();
            if let Some(ca) = &args.tls_ca {
                files.ca = Some(ca.clone());
            }
            Location::Postgres(url.with_tls_files(files))
        }
        sqlite => sqlite,
    };
    let from = config.store_location();
    if target::same(&from, &to) {
        return Err(Failure::new(
            exit::USAGE,
            format!("--to names the configured store itself ({from}): nothing to copy"),
        ));
    }
    // Opening a SQLite path makes the file: the source must exist already.
    if let Location::Sqlite(path) = &from {
        if !path.is_file() {
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "the configured store {} (store_path) does not exist: nothing to migrate",
                    path.display()
                ),
            ));
        }
    }
    let source = Store::open_at(&from).map_err(|e| store_failure("the configured store", e))?;
    let target = Store::open_at(&to).map_err(|e| store_failure("the target", e))?;
    let held = Tally::of(&*target).map_err(|e| store_failure("the target", e))?;
    let empty = held.rows() == 0 && held.kek_versions == 0;
    let checking = Instant::now();
    let resume = if empty {
        args.resume.then_some(None)
    } else if args.resume {
        let copier = Copier {
            from: &*source,
            to: &*target,
            batch: args.batch,
        };
        Some(copier.resume_point().map_err(copy_failure)?)
    } else {
        return Err(Failure::new(
            exit::FAILED,
            format!(
                "the target {to} already holds {} DEK row(s) and {} KEK version(s): store migrate copies into an empty store (a new database, or a new file); --resume carries on a copy that stopped",
                held.rows(),
                held.kek_versions
            ),
        ));
    };
    Ok(Plan {
        source,
        target,
        batch: args.batch,
        given: args.to.clone(),
        resume,
        resume_secs: checking.elapsed().as_secs_f64(),
    })
}

/// Progress on stderr, a line a second.
struct Progress {
    started: Instant,
    last: Instant,
    total: u64,
}

impl Progress {
    fn update(&mut self, done: u64) {
        if self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "store migrate: {done}/{} rows copied, {:.0} rows/s",
            self.total,
            done as f64 / secs.max(1e-9)
        );
    }
}

pub fn run(admin: &Admin, plan: Plan) -> Result<Report, Failure> {
    let started = Instant::now();
    let (from, to) = (&*plan.source, &*plan.target);
    let copier = Copier {
        from,
        to,
        batch: plan.batch,
    };
    let before = Tally::of(from).map_err(|e| store_failure("the configured store", e))?;
    let after = plan.resume.flatten();
    // KEK versions first (a row never names a version the target lacks),
    // then rows, then the GCM counts and purge protection, as late as can
    // be: counts taken last are the highest.
    copier.kek_versions().map_err(copy_failure)?;
    let mut progress = Progress {
        started,
        last: started,
        total: before.rows(),
    };
    let mut so_far = 0;
    let copied = copier
        .rows(after, &mut |n| {
            so_far = n;
            progress.update(n)
        })
        .map_err(|e| {
            let f = store_failure("store migrate", e);
            // Every batch copied is committed: the rest can follow.
            Failure::new(
                f.code,
                format!(
                    "{}; stopped after {so_far} row(s): run it again with --resume to carry on",
                    f.message
                ),
            )
        })?;
    copier
        .gcm_usage()
        .map_err(|e| store_failure("store migrate", e))?;
    copier
        .purge_protection()
        .map_err(|e| store_failure("store migrate", e))?;
    let copy_secs = started.elapsed().as_secs_f64();

    let kek_label = admin.env.kek_label().to_string();
    let ours: u64 = before
        .per_version
        .iter()
        .filter(|(l, _, _)| *l == kek_label)
        .map(|(_, _, n)| n)
        .sum();
    let mut picker = Picker::new(&kek_label, ours);
    let verified = copier
        .verify(&mut |s, t| picker.offer(s, t))
        .map_err(|e| store_failure("store migrate (check)", e))?;
    let picked = std::mem::take(&mut picker.picked);
    let sampled = sample::check(&admin.env, &picked);
    let elapsed = started.elapsed().as_secs_f64();

    let facts = Facts {
        from: plan.source.location(),
        to: plan.target.location(),
        given: &plan.given,
        resumed: plan.resume.is_some(),
        after,
        copied,
        v: &verified,
        sample_size: picked.len() as u64,
        sampled: &sampled,
        copy_secs,
        resume_secs: plan.resume_secs,
        elapsed,
    };
    let report = facts.report();
    let problems = facts.problems();
    if problems.is_empty() {
        hsm_envelope::log_info!(
            "store migrate: {} -> {}: {copied} rows copied and checked, {elapsed:.1} s",
            facts.from,
            facts.to
        );
        return Ok(report);
    }
    Err(Failure::new(
        exit::FAILED,
        format!(
            "the copy in {} is not the same as the source: {}; do not switch to it (stop every process using the store, then copy again into an empty store)",
            facts.to,
            problems.join("; ")
        ),
    )
    .with_report(report))
}

/// Everything the summary says.
struct Facts<'a> {
    from: &'a Location,
    to: &'a Location,
    given: &'a str,
    resumed: bool,
    after: Option<[u8; 16]>,
    copied: u64,
    v: &'a Verified,
    sample_size: u64,
    sampled: &'a sample::Outcome,
    copy_secs: f64,
    resume_secs: f64,
    elapsed: f64,
}

impl Facts<'_> {
    /// Why the copy must not be used; empty when it may.
    fn problems(&self) -> Vec<String> {
        let v = self.v;
        let mut p = Vec::new();
        if v.row_differences > 0 {
            p.push(format!(
                "{} row(s) differ ({})",
                v.row_differences,
                v.examples.join(", ")
            ));
        }
        if v.source.per_version != v.target.per_version || v.source.deleted != v.target.deleted {
            p.push("the records per KEK version or the soft-deleted count differ".into());
        }
        if !v.kek_versions_equal {
            p.push("the KEK versions differ".into());
        }
        if v.gcm_kept < v.gcm_keys {
            p.push(format!(
                "{} GCM count(s) are lower in the target",
                v.gcm_keys - v.gcm_kept
            ));
        }
        if v.source.purge_protection && !v.target.purge_protection {
            p.push("purge protection is off in the target".into());
        }
        if !self.sampled.failed.is_empty() {
            p.push(format!(
                "sample record(s) {} do not open from the target as from the source",
                self.sampled.failed.join(", ")
            ));
        }
        p
    }

    fn report(&self) -> Report {
        let v = self.v;
        let s = self.sampled;
        let next = target::config_line(self.to, self.given);
        let opened = self.sample_size - s.unopenable;
        let mut text = format!(
            "store migrate    {} {} -> {} {}\n",
            self.from.engine_name(),
            self.from,
            self.to.engine_name(),
            self.to
        );
        if self.resumed {
            text.push_str(&format!(
                "resumed          after {}\n",
                self.after.map_or("the start".into(), |id| hex(&id))
            ));
        }
        let in_all = if self.resumed {
            format!("{} in all, ", v.source.rows())
        } else {
            String::new()
        };
        text.push_str(&format!(
            "copied           {} DEK row(s) ({in_all}{} soft-deleted), {} KEK version(s), GCM counts of {} key(s) ({} invocations), purge protection {}\n",
            self.copied,
            v.source.deleted,
            v.source.kek_versions,
            v.gcm_keys,
            v.gcm_invocations,
            if v.source.purge_protection { "on" } else { "off" },
        ));
        let rows: Vec<Vec<String>> = v
            .source
            .per_version
            .iter()
            .map(|(l, n, c)| vec![format!("  {l}"), format!("v{n}"), c.to_string()])
            .collect();
        text.push_str(&table(&["  KEK", "VERSION", "RECORDS"], &rows));
        text.push_str(&format!(
            "checked          {} of {} row(s) equal in both stores; records per KEK version and soft-deleted count {}; KEK versions {}; GCM counts {}/{} kept\n",
            v.rows_equal,
            v.source.rows(),
            if v.source.per_version == v.target.per_version && v.source.deleted == v.target.deleted { "equal" } else { "DIFFER" },
            if v.kek_versions_equal { "equal" } else { "DIFFER" },
            v.gcm_kept,
            v.gcm_keys,
        ));
        text.push_str(&format!(
            "sample           {}/{opened} record(s) opened from the target through the HSM, the same keys as from the source{}\n",
            s.matched,
            if s.unopenable > 0 {
                format!(" ({} more did not open from the source either; see the log)", s.unopenable)
            } else {
                String::new()
            }
        ));
        let resume_check = if self.resumed {
            format!("resume check {:.2} s, ", self.resume_secs)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "time             {:.2} s ({resume_check}copy {:.2} s, check {:.2} s)\n",
            self.resume_secs + self.elapsed,
            self.copy_secs,
            self.elapsed - self.copy_secs
        ));
        if self.problems().is_empty() {
            text.push_str(&format!(
                "next             with every process that used the old store stopped, set in the configuration:\n                   {next}\n"
            ));
            let note = match self.to {
                Location::Sqlite(_) => "(and no store_url)",
                Location::Postgres(_) if target::password_left_out(self.given) => {
                    "(add the password of --to, not shown here, and any other options it had)"
                }
                Location::Postgres(_) => "",
            };
            if !note.is_empty() {
                text.push_str(&format!("                 {note}\n"));
            }
            text.push_str("                 then start them again\n");
        }
        let doc = json!({
            "source": {"engine": self.from.engine_name(), "location": self.from.to_string()},
            "target": {"engine": self.to.engine_name(), "location": self.to.to_string()},
            "resumed": self.resumed,
            "resumed_after": self.after.map(|id| hex(&id)),
            "rows_copied": self.copied,
            "rows": v.source.rows(),
            "deleted_rows": v.source.deleted,
            "kek_versions": v.source.kek_versions,
            "gcm_keys": v.gcm_keys,
            "gcm_invocations": v.gcm_invocations,
            "purge_protection": v.source.purge_protection,
            "records_per_version": v.source.per_version.iter().map(|(l, n, c)| json!({
                "kek_label": l, "kek_version": n, "records": c,
            })).collect::<Vec<_>>(),
            "check": {
                "ok": self.problems().is_empty(),
                "rows_compared": v.rows_compared,
                "rows_equal": v.rows_equal,
                "row_differences": v.row_differences,
                "differences": v.examples,
                "target_records_per_version": v.target.per_version.iter().map(|(l, n, c)| json!({
                    "kek_label": l, "kek_version": n, "records": c,
                })).collect::<Vec<_>>(),
                "target_deleted_rows": v.target.deleted,
                "kek_versions_equal": v.kek_versions_equal,
                "gcm_kept": v.gcm_kept,
                "target_purge_protection": v.target.purge_protection,
            },
            "sample": {
                "size": self.sample_size,
                "matched": s.matched,
                "not_openable_from_source": s.unopenable,
                "failed": s.failed,
            },
            "resume_check_secs": self.resume_secs,
            "copy_secs": self.copy_secs,
            "elapsed_secs": self.resume_secs + self.elapsed,
            "next_step": next,
        });
        Report::new(text, doc)
    }
}
