//! When each running CLB task is next polled: learnt from how long recent tasks took, in memory, because a
//! restart should poll at once anyway.
//!
//! A fixed doubling backoff either polls a 1 s task five times or notices its end up to a second late. Tasks of
//! one CLB take similar times, so the first poll goes out shortly before the typical duration, then a few short
//! steps follow, and only then does the backoff grow. The typical duration is learnt from the last poll that
//! still saw each task running (a lower bound; the poll that saw it done can be late by a whole step, and
//! learning from it would push every later first poll past the end).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::clb::PollBackoff;

/// How many recent task durations the estimate is made from.
const HISTORY: usize = 64;
/// Polls at the initial interval after the first, learnt one, before backing off further.
const SHORT_STEPS: u32 = 3;

#[derive(Clone, Copy, Debug)]
struct Entry {
    polls: u32,
    due: Instant,
    submitted: Option<Instant>,
    /// Time from submission to the last poll that saw the task running.
    running_for: Option<Duration>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Recent lower bounds of task durations.
    durations: VecDeque<Duration>,
}

/// Poll times per requestId. A task the schedule does not know (e.g. after a restart or a leader change) is
/// due at once: it is polled, never resubmitted.
#[derive(Debug)]
pub struct PollSchedule {
    backoff: PollBackoff,
    inner: Mutex<Inner>,
}

impl PollSchedule {
    /// An empty schedule; until tasks have finished, polls follow `backoff`.
    pub fn new(backoff: PollBackoff) -> Self {
        Self { backoff, inner: Mutex::default() }
    }

    /// The delay before poll number `polls` (0 = the first) of a task, given the learnt typical duration.
    fn delay(&self, polls: u32, typical: Option<Duration>) -> Duration {
        match typical {
            // Just before the typical end, then short steps, then the usual backoff from where it stands.
            Some(t) if polls == 0 => t.mul_f64(0.95).max(self.backoff.initial),
            Some(_) if polls <= SHORT_STEPS => self.backoff.initial,
            Some(_) => self.backoff.delay(polls - SHORT_STEPS),
            None => self.backoff.delay(polls),
        }
    }

    /// Records a task just submitted.
    pub fn submitted(&self, request_id: &str) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let typical = median(&inner.durations);
        let now = Instant::now();
        let due = now + self.delay(0, typical);
        inner
            .entries
            .insert(request_id.to_owned(), Entry { polls: 0, due, submitted: Some(now), running_for: None });
    }

    /// Records a poll that found the task still running.
    pub fn polled(&self, request_id: &str) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let typical = median(&inner.durations);
        let now = Instant::now();
        let entry = inner.entries.get(request_id).copied();
        let polls = entry.map_or(1, |e| e.polls + 1);
        let due = now + self.delay(polls, typical);
        let submitted = entry.and_then(|e| e.submitted);
        let running_for = submitted.map(|s| s.elapsed());
        inner.entries.insert(request_id.to_owned(), Entry { polls, due, submitted, running_for });
    }

    /// Forgets a finished task, learning a lower bound of its duration if this process submitted it: the last
    /// time it was seen running, or, if the first poll already found it done, a little less than that poll.
    pub fn finished(&self, request_id: &str) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let Some(entry) = inner.entries.remove(request_id) else { return };
        let Some(submitted) = entry.submitted else { return };
        let bound = entry.running_for.unwrap_or_else(|| submitted.elapsed().mul_f64(0.8));
        if inner.durations.len() == HISTORY {
            inner.durations.pop_front();
        }
        inner.durations.push_back(bound);
    }

    /// How many times the task has been polled and found running (0 if unknown).
    pub fn polls(&self, request_id: &str) -> u32 {
        self.inner.lock().ok().and_then(|i| i.entries.get(request_id).map(|e| e.polls)).unwrap_or(0)
    }

    /// Whether the task should be polled now.
    pub fn is_due(&self, request_id: &str) -> bool {
        self.until_due(request_id).is_zero()
    }

    /// Time left until the task's next poll (zero if due or unknown).
    pub fn until_due(&self, request_id: &str) -> Duration {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.entries.get(request_id).map(|e| e.due.saturating_duration_since(Instant::now())))
            .unwrap_or_default()
    }
}

fn median(durations: &VecDeque<Duration>) -> Option<Duration> {
    let mut sorted: Vec<Duration> = durations.iter().copied().collect();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unknown tasks are due at once; without history polls follow the doubling backoff.
    #[test]
    fn unknown_tasks_are_due_at_once_and_new_ones_back_off() {
        let s = PollSchedule::new(PollBackoff::default());
        assert!(s.is_due("7"), "a task recovered after a restart is polled at once");
        s.submitted("7");
        assert!(!s.is_due("7"));
        let first = s.until_due("7");
        s.polled("7");
        s.polled("7");
        assert!(s.until_due("7") > first);
        assert_eq!(s.polls("7"), 2);
        s.finished("7");
        assert!(s.is_due("7"));
    }

    /// With history, the first poll lands shortly before the typical duration, then a few short steps follow:
    /// a task of typical length costs two or three polls, not five.
    #[test]
    fn learnt_durations_shape_the_schedule() {
        let s = PollSchedule::new(PollBackoff::default());
        let typical = Some(Duration::from_millis(1000));
        assert_eq!(s.delay(0, typical), Duration::from_millis(950));
        assert_eq!(s.delay(1, typical), Duration::from_millis(100));
        assert_eq!(s.delay(3, typical), Duration::from_millis(100));
        assert!(s.delay(6, typical) > Duration::from_millis(100));
        assert_eq!(
            s.delay(0, Some(Duration::from_millis(20))),
            Duration::from_millis(100),
            "never below initial"
        );
        assert_eq!(s.delay(0, None), Duration::from_millis(100));
        // A 1 s task whose lower bound was learnt as 1 s: polls at 0.95 s, 1.05 s -> found finished on the second.
        let polls_needed = (0..).scan(Duration::ZERO, |t, n| {
            *t += s.delay(n, typical);
            Some(*t)
        });
        assert_eq!(polls_needed.take_while(|t| *t < Duration::from_millis(1000)).count() + 1, 2);
        let mut durations = VecDeque::new();
        durations.extend([300, 100, 200].map(Duration::from_millis));
        assert_eq!(median(&durations), Some(Duration::from_millis(200)));
    }
}
