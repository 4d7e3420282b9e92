//! Asynchronous CLB tasks: their state, a pure step-by-step polling backoff the reconciler uses across
//! reconciles, and a blocking waiter for the command line.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::clb::{ClbClient, ClbError};

/// The state of an asynchronous task, from DescribeLoadBalancersTaskResult `data.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Status 0: the change is in effect.
    Succeeded,
    /// Status 1: the change was not made.
    Failed,
    /// Status 2: still in progress; ask again later.
    Running,
}

impl TaskState {
    /// The state for an API status code (0, 1 or 2).
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Succeeded),
            1 => Some(Self::Failed),
            2 => Some(Self::Running),
            _ => None,
        }
    }

    /// Whether the task has ended, one way or the other.
    pub fn is_finished(self) -> bool {
        self != Self::Running
    }
}

/// Exponential delays between task polls: `initial * factor^attempt`, capped at `max`.
///
/// Pure, so the reconciler can keep `attempt` in its own state and requeue itself with
/// `delay(attempt)` instead of blocking a worker in a sleep loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollBackoff {
    /// Delay before the second poll (attempt 0).
    pub initial: Duration,
    /// Growth per attempt; 0 and 1 both mean "constant".
    pub factor: u32,
    /// Upper bound of any delay.
    pub max: Duration,
}

impl Default for PollBackoff {
    /// 100 ms, doubling, capped at 2 s: a typical task (hundreds of milliseconds to a few seconds) is seen
    /// finished within about one cap interval, with at most ~5 polls in the first 3 s.
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), factor: 2, max: Duration::from_secs(2) }
    }
}

impl PollBackoff {
    /// The delay after poll number `attempt` (0-based); saturates at `max` instead of overflowing.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.factor
            .max(1)
            .checked_pow(attempt)
            .and_then(|growth| self.initial.checked_mul(growth))
            .map_or(self.max, |d| d.min(self.max))
    }
}

impl ClbClient {
    /// Polls task `request_id` with `backoff` until it ends, for callers that may block (the CLI `--wait`).
    /// Fails with [`ClbError::TaskTimeout`] when the next poll would start after `timeout`.
    pub async fn wait_task(
        &self,
        request_id: u64,
        backoff: &PollBackoff,
        timeout: Duration,
    ) -> Result<TaskState, ClbError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        // NB: a plain loop rather than `backon`, because the delay schedule must be the very `PollBackoff` the
        // reconciler steps through across reconciles, and "still running" is a state, not an error to retry.
        loop {
            let state = self.task_result(request_id).await?;
            if state.is_finished() {
                return Ok(state);
            }
            let delay = backoff.delay(attempt);
            if started.elapsed() + delay > timeout {
                return Err(ClbError::TaskTimeout { request_id, waited: started.elapsed() });
            }
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 ms doubling to a 2 s cap, with no overflow for huge attempt numbers.
    #[test]
    fn default_backoff_doubles_up_to_the_cap() {
        let b = PollBackoff::default();
        let ms: Vec<u128> = (0..7).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
    }

    /// A factor of 0 or 1 gives a constant delay.
    #[test]
    fn factor_one_is_constant() {
        let b = PollBackoff { initial: Duration::from_millis(300), factor: 0, max: Duration::from_secs(1) };
        assert_eq!(b.delay(5), Duration::from_millis(300));
    }

    /// Status codes map to states; anything else is unknown.
    #[test]
    fn status_codes_map_to_states() {
        assert_eq!(TaskState::from_code(0), Some(TaskState::Succeeded));
        assert_eq!(TaskState::from_code(1), Some(TaskState::Failed));
        assert_eq!(TaskState::from_code(2), Some(TaskState::Running));
        assert_eq!(TaskState::from_code(3), None);
    }
}
