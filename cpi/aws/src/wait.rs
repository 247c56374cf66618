//! Waiting on EC2's eventual states (an instance running, a volume attached) with jittered
//! exponential backoff up to a deadline.

use bosun_cpi::CpiError;
use rand::Rng;
use std::time::Duration;
use tokio::time::Instant;

const FIRST: Duration = Duration::from_millis(500);
const LONGEST: Duration = Duration::from_secs(10);

pub(crate) struct Backoff {
    next: Duration,
    deadline: Instant,
    limit: Duration,
}

impl Backoff {
    pub(crate) fn new(limit: Duration) -> Self {
        Backoff { next: FIRST, deadline: Instant::now() + limit, limit }
    }

    /// Sleeps before the next look, or fails once the deadline has passed, saying what was
    /// awaited.
    pub(crate) async fn wait(&mut self, what: &str) -> Result<(), CpiError> {
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        match self.pause(Instant::now(), jitter) {
            Some(pause) => {
                tokio::time::sleep(pause).await;
                Ok(())
            }
            None => Err(CpiError::Cloud(format!("timed out after {} s waiting for {what}", self.limit.as_secs()))),
        }
    }

    /// The next pause at `now`: each half again as long as the last (times `jitter`), at most
    /// 10 s, never past the deadline; none once it has passed.
    fn pause(&mut self, now: Instant, jitter: f64) -> Option<Duration> {
        if now >= self.deadline {
            return None;
        }
        let pause = self.next.mul_f64(jitter).min(self.deadline - now);
        self.next = self.next.mul_f64(1.5).min(LONGEST);
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_ten_seconds_and_end_at_the_deadline() {
        let start = Instant::now();
        let mut b = Backoff { next: FIRST, deadline: start + Duration::from_secs(60), limit: Duration::from_secs(60) };
        let mut now = start;
        let mut pauses = Vec::new();
        while let Some(p) = b.pause(now, 1.0) {
            pauses.push(p);
            now += p;
        }
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(&ms[..6], &[500, 750, 1125, 1687, 2531, 3796], "{ms:?}");
        assert!(ms.iter().all(|p| *p <= 10_000), "{ms:?}");
        assert_eq!(now - start, Duration::from_secs(60), "the last pause ends at the deadline");
        // Jitter scales a pause by at most a fifth either way.
        let mut j = Backoff { next: FIRST, deadline: start + Duration::from_secs(60), limit: Duration::from_secs(60) };
        assert_eq!(j.pause(start, 1.2), Some(Duration::from_millis(600)));
    }
}
