//! Log lines a peer can provoke at will (failed handshakes, malformed agent messages) are
//! throttled: at most a few per window per kind, and the next line allowed says how many were
//! left out, so a flood shows in the log without filling the disk.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogThrottle {
    per_window: u32,
    window: Duration,
    /// (window start, lines let through in it, lines held back since the last let through).
    state: Mutex<Option<(Instant, u32, u64)>>,
}

impl LogThrottle {
    pub const fn new(per_window: u32, window: Duration) -> Self {
        Self { per_window, window, state: Mutex::new(None) }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held back before it.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("log throttle lock");
        let (start, passed, held) = state.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= self.window {
            *start = now;
            *passed = 0;
        }
        if *passed < self.per_window {
            *passed += 1;
            let before = *held;
            *held = 0;
            Some(before)
        } else {
            *held += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_few_through_per_window_and_counts_the_rest() {
        let t = LogThrottle::new(2, Duration::from_millis(100));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(t.allow(), Some(2), "the next line says two were held back");
    }
}
