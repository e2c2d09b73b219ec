//! The pace of the maintenance thread's large background writes: a next segment's zeros
//! and a sealed segment's sidecar.
//!
//! A commit's `fdatasync` waits for whatever sits in the disk's queue ahead of it. Written as
//! fast as the disk takes them, even in synced steps of 1 MiB, the ~80 MB that follow each
//! seal of a 64 MiB segment made about half the seconds around a seal 20–51 ms slow for
//! senders at 18 700 events/s (docs/benchmarks.md, "Background writes at the log's pace").
//! Spread over a few seconds, the same work leaves commits alone. How fast it must go follows from what it is
//! for: the segment it prepares fills at the log's own rate, so a few times that rate gets it
//! ready long before it is needed, and a floor keeps an idle log's work short.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Written at once, before any pacing: the first step of every job.
const HEAD_START: u64 = crate::BACKGROUND_WRITE_STEP as u64;

/// The slowest pace, whatever the log does: an idle hub still prepares a 64 MiB segment in
/// about four seconds.
const FLOOR_BYTES_PER_SEC: f64 = (16 << 20) as f64;

/// Background bytes allowed per byte appended to the log since the job began. A seal's work
/// is about 1.3 times the segment (its zeros and the sidecar), so three times the append
/// rate finishes it in under half the time the next segment takes to fill.
const APPEND_FACTOR: u64 = 3;

/// The longest single wait: the allowance is checked again this often, so a burst of
/// appends speeds the job up at once.
const MAX_NAP: Duration = Duration::from_millis(20);

/// Paces one background job (one file written in steps).
pub(crate) struct Pacer<'a> {
    /// The log's size in bytes; it only grows while a job runs (retention runs on the same
    /// thread as the jobs, between them).
    log_bytes: &'a AtomicU64,
    /// Set on close: what is left goes at full speed.
    closing: &'a AtomicBool,
    began: Instant,
    log_bytes_at_start: u64,
    written: u64,
}

impl<'a> Pacer<'a> {
    pub(crate) fn new(log_bytes: &'a AtomicU64, closing: &'a AtomicBool) -> Self {
        Pacer {
            log_bytes,
            closing,
            began: Instant::now(),
            log_bytes_at_start: log_bytes.load(Ordering::Acquire),
            written: 0,
        }
    }

    /// Waits until `n` more bytes may go to the disk, and counts them.
    pub(crate) fn before_write(&mut self, n: u64) {
        self.written += n;
        while let Some(wait) = self.wait_now() {
            std::thread::sleep(wait.min(MAX_NAP));
        }
    }

    /// How long what is counted must still wait; `None` if it may go now or the log is
    /// closing.
    fn wait_now(&self) -> Option<Duration> {
        if self.closing.load(Ordering::Acquire) {
            return None;
        }
        let appended = self
            .log_bytes
            .load(Ordering::Acquire)
            .saturating_sub(self.log_bytes_at_start);
        wait_before(self.written, self.began.elapsed(), appended)
    }
}

/// How long a job must wait before `written` bytes in all may be under way, `elapsed` after
/// it began and with `appended` bytes added to the log since: `None` if they may go now,
/// else the time until the floor alone allows them (sooner if the log grows meanwhile).
fn wait_before(written: u64, elapsed: Duration, appended: u64) -> Option<Duration> {
    let by_floor = (FLOOR_BYTES_PER_SEC * elapsed.as_secs_f64()) as u64;
    let allowed = HEAD_START + by_floor.max(appended.saturating_mul(APPEND_FACTOR));
    if written <= allowed {
        return None;
    }
    let floor_allows_at =
        Duration::from_secs_f64((written - HEAD_START) as f64 / FLOOR_BYTES_PER_SEC);
    Some(floor_allows_at.saturating_sub(elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_first_step_goes_at_once() {
        assert_eq!(wait_before(HEAD_START, Duration::ZERO, 0), None);
        assert!(wait_before(HEAD_START + 1, Duration::ZERO, 0).is_some());
    }

    #[test]
    fn an_idle_log_gets_the_floor_rate() {
        // 16 MiB beyond the head start take one second at the floor.
        let written = HEAD_START + 16 * MIB;
        let wait = wait_before(written, Duration::from_millis(250), 0).unwrap();
        assert_eq!(wait, Duration::from_millis(750));
        assert_eq!(wait_before(written, Duration::from_secs(1), 0), None);
    }

    #[test]
    fn a_busy_log_allows_three_times_what_it_appended() {
        let appended = 10 * MIB;
        assert_eq!(
            wait_before(HEAD_START + 30 * MIB, Duration::ZERO, appended),
            None
        );
        let wait = wait_before(HEAD_START + 30 * MIB + 1, Duration::ZERO, appended);
        assert!(
            wait.is_some(),
            "one byte over three times the appends waits"
        );
    }

    #[test]
    fn the_wait_is_never_longer_than_the_floor_needs() {
        // 32 MiB beyond the head start: two seconds at the floor, whatever the log does.
        let wait = wait_before(HEAD_START + 32 * MIB, Duration::ZERO, 0).unwrap();
        assert_eq!(wait, Duration::from_secs(2));
        let later = wait_before(HEAD_START + 32 * MIB, Duration::from_secs(3), 0);
        assert_eq!(later, None);
    }

    #[test]
    fn appends_and_closing_lift_the_wait() {
        // A log of 1 GiB already: only what it appends from now on counts.
        let log_bytes = AtomicU64::new(1 << 30);
        let closing = AtomicBool::new(false);
        let mut pacer = Pacer::new(&log_bytes, &closing);
        // A gigabyte would take a minute at the floor.
        pacer.written = 1 << 30;
        assert!(pacer.wait_now().is_some(), "an open, quiet log paces it");
        // The log appended 400 MiB since the job began: three times that is allowed.
        log_bytes.fetch_add(400 * MIB, Ordering::Release);
        assert_eq!(pacer.wait_now(), None);
        pacer.written = 2 << 30;
        assert!(pacer.wait_now().is_some());
        closing.store(true, Ordering::Release);
        assert_eq!(pacer.wait_now(), None, "a closing log is not paced");
    }
}
