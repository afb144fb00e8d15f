//! Calls that may hang, run under a deadline. A PKCS#11 call to an HSM
//! that stopped answering blocks its thread, and a blocked C call cannot be
//! cancelled: so the call runs on a worker thread of this runner and the
//! caller waits at most the time-out. A job past its deadline is given up
//! on and left to finish; its worker ends when it does. Only such given-up
//! jobs count against the bound: busy workers serving callers that wait
//! are as many as the callers. Idle workers wait for work a while, then
//! end.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock::unpoisoned;

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle worker waits for work before it ends.
const IDLE: Duration = Duration::from_secs(60);

/// A job's fate, shared by the caller and the worker (see `run`).
const RUNNING: u8 = 0;
const GIVEN_UP: u8 = 1;
const DONE: u8 = 2;

/// Why a job gave no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Missed {
    /// Not done within the time-out (still running).
    TimedOut,
    /// As many jobs given up on are still running as the bound allows (the
    /// callee is hung), or no thread could be started.
    NoWorker,
    /// The job panicked.
    Panicked,
}

pub struct Deadline {
    name: String,
    idle: Mutex<Vec<mpsc::Sender<Job>>>,
    /// Workers alive, idle or busy.
    alive: Arc<AtomicUsize>,
    /// Jobs given up on and still running.
    given_up: Arc<AtomicUsize>,
    max_given_up: usize,
}

impl Deadline {
    /// A runner whose threads are named `name`; past `max_given_up` jobs
    /// given up on and still running, it takes no more.
    pub fn new(name: &str, max_given_up: usize) -> Self {
        Deadline {
            name: name.chars().take(15).collect(),
            idle: Mutex::new(Vec::new()),
            alive: Arc::new(AtomicUsize::new(0)),
            given_up: Arc::new(AtomicUsize::new(0)),
            max_given_up: max_given_up.max(1),
        }
    }

    /// Run `job` on a worker; its result if it ends within `timeout`.
    pub fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Missed> {
        if self.given_up.load(Ordering::Acquire) >= self.max_given_up {
            return Err(Missed::NoWorker);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let fate = Arc::new(AtomicU8::new(RUNNING));
        let (job_fate, given_up) = (fate.clone(), self.given_up.clone());
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(AssertUnwindSafe(job));
            // A job the caller gave up on no longer counts once it ends.
            if job_fate.swap(DONE, Ordering::AcqRel) == GIVEN_UP {
                given_up.fetch_sub(1, Ordering::AcqRel);
            }
            let _ = tx.send(out.ok());
        });
        let worker = self.worker(job)?;
        let answer = match rx.recv_timeout(timeout) {
            Ok(v) => Some(v),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if fate.swap(GIVEN_UP, Ordering::AcqRel) == RUNNING {
                    self.given_up.fetch_add(1, Ordering::AcqRel);
                    return Err(Missed::TimedOut);
                }
                // It ended just now: its answer is there.
                rx.recv().ok()
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        };
        match answer {
            Some(Some(v)) => {
                unpoisoned(self.idle.lock()).push(worker);
                Ok(v)
            }
            Some(None) | None => Err(Missed::Panicked),
        }
    }

    /// Hand `job` to an idle worker, or to a new one.
    fn worker(&self, job: Job) -> Result<mpsc::Sender<Job>, Missed> {
        let mut job = job;
        loop {
            let Some(w) = unpoisoned(self.idle.lock()).pop() else {
                break;
            };
            match w.send(job) {
                Ok(()) => return Ok(w),
                // That worker has ended (idle too long): try the next.
                Err(mpsc::SendError(j)) => job = j,
            }
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let alive = self.alive.clone();
        alive.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                while let Ok(job) = rx.recv_timeout(IDLE) {
                    job();
                }
                alive.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.alive.fetch_sub(1, Ordering::AcqRel);
            return Err(Missed::NoWorker);
        }
        tx.send(job).map_err(|_| Missed::NoWorker)?;
        Ok(tx)
    }

    /// Wait until no job given up on is still running, or `within` passes
    /// (at shutdown: a call that returns into a library being finalised,
    /// or torn down at process exit, would crash the process). Whether
    /// none is left.
    pub fn wait_given_up(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        while self.given_up() > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Workers alive (for tests).
    pub fn workers(&self) -> usize {
        self.alive.load(Ordering::Acquire)
    }

    /// Jobs given up on and still running (for tests).
    pub fn given_up(&self) -> usize {
        self.given_up.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Instant;

    #[test]
    fn answers_in_time_reuse_one_worker() {
        let d = Deadline::new("t", 4);
        for i in 0..100u32 {
            assert_eq!(d.run(Duration::from_secs(5), move || i * 2), Ok(i * 2));
        }
        assert_eq!(d.workers(), 1);
    }

    #[test]
    fn many_callers_at_once_are_not_refused() {
        // More callers than the bound on jobs given up on: busy workers
        // serving callers that wait do not count.
        let d = Arc::new(Deadline::new("t", 2));
        let all = Arc::new(Barrier::new(16));
        let callers: Vec<_> = (0..16)
            .map(|i| {
                let (d, all) = (d.clone(), all.clone());
                std::thread::spawn(move || {
                    d.run(Duration::from_secs(10), move || {
                        all.wait();
                        i
                    })
                })
            })
            .collect();
        for (i, c) in callers.into_iter().enumerate() {
            assert_eq!(c.join().unwrap(), Ok(i));
        }
        assert_eq!(d.given_up(), 0);
    }

    #[test]
    fn a_hung_job_costs_the_time_out_and_a_worker_not_the_caller() {
        let d = Deadline::new("t", 2);
        let release = Arc::new(Barrier::new(2));
        let r = release.clone();
        let start = Instant::now();
        let out = d.run(Duration::from_millis(50), move || {
            r.wait();
            1
        });
        assert_eq!(out, Err(Missed::TimedOut));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(d.given_up(), 1);
        // Another worker answers meanwhile.
        assert_eq!(d.run(Duration::from_secs(5), || 2), Ok(2));
        // A second hung job reaches the bound: no more are taken.
        let r2 = Arc::new(Barrier::new(2));
        let r2c = r2.clone();
        assert_eq!(
            d.run(Duration::from_millis(20), move || {
                r2c.wait();
                3
            }),
            Err(Missed::TimedOut)
        );
        assert_eq!(d.run(Duration::from_secs(1), || 4), Err(Missed::NoWorker));
        assert!(!d.wait_given_up(Duration::from_millis(10)));
        // The hung calls return: they no longer count, and work is taken.
        release.wait();
        r2.wait();
        assert!(d.wait_given_up(Duration::from_secs(5)));
        assert_eq!(d.given_up(), 0);
        assert_eq!(d.run(Duration::from_secs(5), || 5), Ok(5));
    }

    #[test]
    fn a_panicking_job_is_told_apart_and_the_runner_goes_on() {
        let d = Deadline::new("t", 2);
        let out: Result<u8, Missed> = d.run(Duration::from_secs(5), || panic!("job"));
        assert_eq!(out, Err(Missed::Panicked));
        assert_eq!(d.run(Duration::from_secs(5), || 7), Ok(7));
    }
}
