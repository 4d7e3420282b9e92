//! Exponential backoff, the one formula behind problem retries and failed-task retries.

use std::time::Duration;

/// A delay that starts at `initial` and doubles with each consecutive failure, up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exponential {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay, however many failures.
    pub max: Duration,
}

impl Exponential {
    /// The delay after `failures` consecutive failures (1 = the first); zero failures wait nothing.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        // Past 2^20 the cap has long been reached; the shift must not overflow.
        let doublings = (failures - 1).min(20);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }

    /// [`Self::delay`] spread by `unit` (0..=1, e.g. random) over 80..120 % of it, so that bindings that failed
    /// together (one outage) do not retry together.
    pub fn jittered(&self, failures: u32, unit: f64) -> Duration {
        self.delay(failures).mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles from the initial delay, stops at the cap, never overflows, and jitter stays within ±20 %.
    #[test]
    fn doubles_up_to_the_cap() {
        let b = Exponential { initial: Duration::from_secs(2), max: Duration::from_secs(300) };
        let secs: Vec<u64> = (0..=10).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [0, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
        assert_eq!(b.jittered(1, 0.0), Duration::from_millis(1600));
        assert_eq!(b.jittered(1, 1.0), Duration::from_millis(2400));
        assert_eq!(b.jittered(1, 7.0), Duration::from_millis(2400), "unit is clamped");
    }
}
