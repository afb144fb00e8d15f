//! Time-based measurement: warm-up, then as many operations as fit in the
//! measured time, in 1 or N threads started together.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::Res;

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Per thread, before the measured window (also calibrates the batch size).
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
}

/// Work between two clock reads, so that reading the clock costs nothing
/// measurable even for a 30 ns operation.
const BATCH_TARGET: Duration = Duration::from_micros(200);

/// Aggregate ops/s of `threads` workers. `make(i)` runs in thread i and builds
/// its worker (opening its session, allocating its buffers); the worker does
/// one operation per call and must not allocate. All threads warm up, wait at
/// a barrier, run until the main thread's measured window ends, and each
/// reports ops / its own elapsed time; the rates are summed.
pub fn throughput<M, W>(threads: usize, timing: Timing, make: M) -> Res<f64>
where
    M: Fn(usize) -> Res<W> + Sync,
    W: FnMut() -> Res<()>,
{
    let threads = threads.max(1);
    let start = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let results: Vec<Res<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (make, start, stop) = (&make, &start, &stop);
                scope.spawn(move || -> Res<f64> {
                    // Whatever happens, reach the barrier once so nobody waits forever.
                    let prepared = make(i).and_then(|mut w| {
                        let batch = warm_up(&mut w, timing.warmup)?;
                        Ok((w, batch))
                    });
                    start.wait();
                    let (mut w, batch) = prepared?;
                    let t0 = Instant::now();
                    let mut ops = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..batch {
                            w()?;
                        }
                        ops += batch;
                    }
                    Ok(ops as f64 / t0.elapsed().as_secs_f64())
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(timing.measure);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a benchmark thread panicked".into()))
            })
            .collect()
    });
    let mut total = 0.0;
    for r in results {
        total += r?;
    }
    Ok(total)
}

/// Runs the worker for `warmup` (at least 3 operations) and returns how many
/// operations make about [`BATCH_TARGET`].
fn warm_up<W: FnMut() -> Res<()>>(w: &mut W, warmup: Duration) -> Res<u64> {
    let t0 = Instant::now();
    let mut n = 0u64;
    while n < 3 || t0.elapsed() < warmup {
        w()?;
        n += 1;
    }
    let per_op = t0.elapsed().as_secs_f64() / n as f64;
    Ok(((BATCH_TARGET.as_secs_f64() / per_op) as u64).clamp(1, 1 << 20))
}

/// Mean seconds per call of `f` over `n` calls (after one untimed call).
pub fn mean_secs<F: FnMut() -> Res<()>>(n: usize, mut f: F) -> Res<f64> {
    f()?;
    let t0 = Instant::now();
    for _ in 0..n.max(1) {
        f()?;
    }
    Ok(t0.elapsed().as_secs_f64() / n.max(1) as f64)
}

/// Seconds taken by one call of `f`.
pub fn once_secs<T, F: FnOnce() -> Res<T>>(f: F) -> Res<(f64, T)> {
    let t0 = Instant::now();
    let v = f()?;
    Ok((t0.elapsed().as_secs_f64(), v))
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
