//! Calls that may hang, run under a deadline. A PKCS#11 call to an HSM
//! that stopped answering blocks its thread, and a blocked C call cannot be
//! cancelled: so the call runs on a worker thread of this runner and the
//! caller waits at most the time-out. A job past its deadline is left to
//! finish (its worker is not reused until it does); the next job gets
//! another worker, up to a bound. Workers wait for work when idle and end
//! when the runner is dropped (a hung one when its call returns).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock::unpoisoned;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job gave no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Missed {
    /// Not done within the time-out (still running).
    TimedOut,
    /// No worker: as many are busy (hung) as the bound allows, a thread
    /// could not be started, or the job panicked.
    NoWorker,
}

pub struct Deadline {
    name: String,
    idle: Mutex<Vec<mpsc::Sender<Job>>>,
    /// Workers alive, idle or busy.
    alive: Arc<AtomicUsize>,
    max: usize,
}

impl Deadline {
    /// A runner whose threads are named `name`, at most `max` of them.
    pub fn new(name: &str, max: usize) -> Self {
        Deadline {
            name: name.chars().take(15).collect(),
            idle: Mutex::new(Vec::new()),
            alive: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
        }
    }

    /// Run `job` on a worker; its result if it ends within `timeout`.
    pub fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Missed> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            // A panic stays in the worker; the caller sees NoWorker.
            if let Ok(v) = std::panic::catch_unwind(AssertUnwindSafe(job)) {
                let _ = tx.send(v);
            }
        });
        let worker = self.worker(job)?;
        match rx.recv_timeout(timeout) {
            Ok(v) => {
                unpoisoned(self.idle.lock()).push(worker);
                Ok(v)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Missed::TimedOut),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Missed::NoWorker),
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
                // That worker has ended: try the next.
                Err(mpsc::SendError(j)) => job = j,
            }
        }
        if self.alive.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.alive.fetch_sub(1, Ordering::AcqRel);
            return Err(Missed::NoWorker);
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let alive = self.alive.clone();
        let spawned = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || {
                for job in rx {
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

    /// Workers alive (for tests).
    pub fn workers(&self) -> usize {
        self.alive.load(Ordering::Acquire)
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
        // Another worker answers meanwhile.
        assert_eq!(d.run(Duration::from_secs(5), || 2), Ok(2));
        assert_eq!(d.workers(), 2);
        // The bound: both workers taken (one hung, one hung now too).
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
        // The hung calls return: their workers are free again (the ones
        // the caller gave up on end; new ones are started).
        release.wait();
        r2.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.workers() > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(d.run(Duration::from_secs(5), || 5), Ok(5));
    }

    #[test]
    fn a_panicking_job_is_no_answer_and_the_runner_goes_on() {
        let d = Deadline::new("t", 2);
        let out: Result<u8, Missed> = d.run(Duration::from_secs(5), || panic!("job"));
        assert_eq!(out, Err(Missed::NoWorker));
        assert_eq!(d.run(Duration::from_secs(5), || 7), Ok(7));
    }
}
