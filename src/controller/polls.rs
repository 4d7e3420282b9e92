//! When each running CLB task is next polled: in memory, because a restart should poll at once anyway.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::clb::PollBackoff;

#[derive(Clone, Copy, Debug)]
struct Entry {
    polls: u32,
    due: Instant,
}

/// Poll times per requestId. A task the schedule does not know (e.g. after a restart or a leader change) is
/// due at once: it is polled, never resubmitted.
#[derive(Debug)]
pub struct PollSchedule {
    backoff: PollBackoff,
    entries: Mutex<HashMap<u64, Entry>>,
}

impl PollSchedule {
    /// An empty schedule following `backoff`.
    pub fn new(backoff: PollBackoff) -> Self {
        Self { backoff, entries: Mutex::default() }
    }

    /// Records a task just submitted: its first poll is one initial delay away.
    pub fn submitted(&self, request_id: u64) {
        self.set(request_id, 0);
    }

    /// Records a poll that found the task still running: the next one backs off further.
    pub fn polled(&self, request_id: u64) {
        let polls = self.entries.lock().ok().and_then(|e| e.get(&request_id).map(|e| e.polls)).unwrap_or(0);
        self.set(request_id, polls + 1);
    }

    fn set(&self, request_id: u64, polls: u32) {
        let due = Instant::now() + self.backoff.delay(polls);
        if let Ok(mut e) = self.entries.lock() {
            e.insert(request_id, Entry { polls, due });
        }
    }

    /// Forgets a finished task.
    pub fn forget(&self, request_id: u64) {
        if let Ok(mut e) = self.entries.lock() {
            e.remove(&request_id);
        }
    }

    /// Whether the task should be polled now.
    pub fn is_due(&self, request_id: u64) -> bool {
        self.until_due(request_id).is_zero()
    }

    /// Time left until the task's next poll (zero if due or unknown).
    pub fn until_due(&self, request_id: u64) -> Duration {
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.get(&request_id).map(|e| e.due.saturating_duration_since(Instant::now())))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unknown tasks are due at once; submitted ones wait the initial delay, and each running poll waits longer.
    #[test]
    fn schedule_backs_off_and_polls_unknown_tasks_at_once() {
        let s = PollSchedule::new(PollBackoff::default());
        assert!(s.is_due(7), "a task recovered after a restart is polled at once");
        s.submitted(7);
        assert!(!s.is_due(7));
        let first = s.until_due(7);
        s.polled(7);
        s.polled(7);
        assert!(s.until_due(7) > first);
        s.forget(7);
        assert!(s.is_due(7));
    }
}
