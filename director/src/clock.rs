//! The clock seam: the health monitor, the meltdown window, orphaned-disk retention, task and
//! event times read time through a [`Clock`], so tests can move time by hand instead of waiting.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Monotonic time, for durations and deadlines.
    fn now(&self) -> Instant;
    /// Wall-clock time in Unix milliseconds, for what is recorded.
    fn unix_ms(&self) -> u64;
    fn unix_secs(&self) -> u64 {
        self.unix_ms() / 1000
    }
}

/// The machine's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    start_unix_ms: u64,
    elapsed: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self { start: Instant::now(), start_unix_ms: 1_700_000_000_000, elapsed: Mutex::new(Duration::ZERO) }
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }
    fn unix_ms(&self) -> u64 {
        self.start_unix_ms + self.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = ManualClock::default();
        let (t0, w0) = (c.now(), c.unix_ms());
        assert_eq!((c.now(), c.unix_ms()), (t0, w0));
        c.advance(Duration::from_secs(601));
        assert_eq!(c.now() - t0, Duration::from_secs(601));
        assert_eq!(c.unix_ms() - w0, 601_000);
        assert_eq!(c.unix_secs(), w0 / 1000 + 601);
    }
}
