//! The one place time enters the module: wall-clock seconds for what is
//! stored or shown (record times, retention, rotation age, the audit trail),
//! a process-local monotonic clock for TTLs and intervals.
//!
//! Both can be moved forward by a test, so a test of a 60-second TTL takes
//! milliseconds instead of a minute of sleeping: within a process with
//! [`advance`] (reached from outside the module as the exported
//! `HSME_TestAdvanceClock`, see `ffi::test_clock`), and for a child process by
//! starting it with `HSM_ENVELOPE_TEST_CLOCK_OFFSET_MS`. Neither works
//! unless `HSM_ENVELOPE_TEST_CLOCK=1` is set in the environment: a
//! production process cannot have its clock moved by accident.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds added to both clocks (tests only; never negative).
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Whether this process allows its clock to be moved (read once).
fn test_clock_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| {
        let allowed = std::env::var("HSM_ENVELOPE_TEST_CLOCK").as_deref() == Ok("1");
        if allowed {
            if let Some(ms) = std::env::var("HSM_ENVELOPE_TEST_CLOCK_OFFSET_MS")
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|ms| *ms > 0)
            {
                OFFSET_MS.store(ms, Ordering::Relaxed);
            }
        }
        allowed
    })
}

/// Move both clocks forward by `by` (tests only). Returns false, and moves
/// nothing, unless the process was started with `HSM_ENVELOPE_TEST_CLOCK=1`.
pub fn advance(by: Duration) -> bool {
    if !test_clock_allowed() {
        return false;
    }
    let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
    OFFSET_MS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
            Some(o.saturating_add(ms))
        })
        .is_ok()
}

// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
fn offset_ms() -> i64 {
    if test_clock_allowed() {
        OFFSET_MS.load(Ordering::Relaxed)
    } else {
        0
    }
}

/// Wall-clock time in unix milliseconds.
pub fn unix_ms() -> i64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    real.saturating_add(offset_ms())
}

/// Wall-clock time in unix seconds.
pub fn unix_secs() -> i64 {
    unix_ms() / 1000
}

/// Milliseconds on a monotonic clock local to this process (for TTLs and
/// intervals: never goes back when the wall clock is set).
///
/// On Linux it is `CLOCK_MONOTONIC_COARSE`: the kernel's last tick, read
/// from the vDSO without touching the time-stamp counter, a few times
/// cheaper than `Instant::now` on virtual machines, at a resolution of one
/// tick (1 to 4 ms), which is nothing to TTLs of seconds. The hot path
/// reads it once per operation (the soft TTL of a remembered DEK).
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn mono_ms() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    let now = mono_raw_ms();
    let real = now.saturating_sub(*BASE.get_or_init(|| now));
    real.saturating_add(offset_ms().unsigned_abs())
}

#[cfg(target_os = "linux")]
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
fn mono_raw_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE
    // exists on every Linux since 2.6.32 and cannot fail with a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return instant_ms();
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let ms = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1000).saturating_add(ms)
}

#[cfg(not(target_os = "linux"))]
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
fn mono_raw_ms() -> u64 {
    instant_ms()
}

/// Milliseconds since this function's first call, from `Instant`.
#[cfg_attr(target_os = "linux", allow(dead_code))]
fn instant_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The current wall-clock time as RFC 3339 (for the log file).
pub fn now_rfc3339() -> String {
    rfc3339(unix_secs())
}

/// RFC 3339 in UTC, second precision: `2024-02-29T23:59:07Z`.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(1_709_251_200), "2024-03-01T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_234_567_890), "2009-02-13T23:31:30Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn the_monotonic_clock_moves_forward_in_milliseconds() {
        let a = mono_ms();
        std::thread::sleep(Duration::from_millis(30));
        let b = mono_ms();
        assert!((20..1000).contains(&(b - a)), "{a} -> {b}");
    }

    #[test]
    fn the_clock_does_not_move_without_the_test_switch() {
        // The unit-test process is not started with HSM_ENVELOPE_TEST_CLOCK.
        if std::env::var("HSM_ENVELOPE_TEST_CLOCK").is_err() {
            let before = unix_secs();
            assert!(!advance(Duration::from_secs(3600)));
            assert!(unix_secs() - before < 60);
        }
    }
}
