//! Coalescing: how long a binding holds back a submission so that a burst of changes (a mass drain) goes out as
//! a few full batches instead of many small calls, without ever starving a binding.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// When a change about each node (the node itself, or a pod on it) was last seen: the "signal" time the
/// deregistration latency is measured from, and the input to [`Settle`].
#[derive(Debug, Default)]
pub struct SignalClock(Mutex<HashMap<String, Instant>>);

impl SignalClock {
    /// Notes a change about `node` now.
    pub fn saw(&self, node: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(node.to_owned(), Instant::now());
        }
    }

    /// When a change about `node` was last seen.
    pub fn last(&self, node: &str) -> Option<Instant> {
        self.0.lock().ok()?.get(node).copied()
    }

    /// Cluster-wide, in one pass: how many distinct nodes changed within `window` before `now`, and when the
    /// last change was.
    pub fn cluster(&self, window: Duration, now: Instant) -> (usize, Option<Instant>) {
        let Ok(m) = self.0.lock() else { return (0, None) };
        let recent = m.values().filter(|t| now.duration_since(**t) < window).count();
        (recent, m.values().max().copied())
    }
}

/// The settle policy: an isolated change (the only recent one, on this binding and cluster-wide) is submitted at
/// once, the leading edge, so a single node going away costs only the time its watch event takes; during a burst
/// (several nodes changed lately, on this binding or cluster-wide) a binding waits until `burst_factor` quiet
/// times have passed without a change anywhere in the cluster, because a mass drain reaches the API server over
/// several hundred milliseconds and one binding's nodes may pause while others' keep coming; and no binding holds back longer than `max_factor` quiet times in all, so a node that changes
/// constantly cannot starve the others. The first event of a mass drain looks isolated and goes out alone: a
/// drain costs one call more than the ideal, for the leading edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settle {
    /// The unit of coalescing (`--settle`): a burst waits [`Self::burst_factor`] of these without a change, and
    /// no binding holds back more than [`Self::max_factor`]. Zero turns coalescing off.
    pub quiet: Duration,
    /// Quiet times to wait during a burst. 8: the 200-node drain of the benchmark reaches the API server with
    /// gaps of over 100 ms between one binding's nodes on a busy 2-core control plane, and each gap taken for
    /// the end means one more Deregister call.
    pub burst_factor: u32,
    /// Quiet times a binding holds back at most, however long changes keep coming.
    pub max_factor: u32,
}

impl Default for Settle {
    fn default() -> Self {
        Self { quiet: Duration::from_millis(20), burst_factor: 8, max_factor: 30 }
    }
}

impl Settle {
    /// The quiet time a burst needs.
    pub fn burst_quiet(&self) -> Duration {
        self.quiet.saturating_mul(self.burst_factor)
    }

    /// The longest a binding holds back.
    pub fn cap(&self) -> Duration {
        self.quiet.saturating_mul(self.max_factor)
    }

    /// How much longer to hold back at `now` (`None`: submit now). `recent` holds when each node the binding
    /// looks at last changed, `cluster` how many nodes changed cluster-wide within [`Self::burst_quiet`] and
    /// when the last of them did, and `since` since when this binding has been holding back (`None`: it is not
    /// yet).
    pub fn wait(
        &self,
        now: Instant,
        recent: &[Instant],
        cluster: (usize, Option<Instant>),
        since: Option<Instant>,
    ) -> Option<Duration> {
        let (cluster_recent, cluster_last) = cluster;
        let cap = self.cap();
        let ages: Vec<Duration> =
            recent.iter().map(|t| now.duration_since(*t)).filter(|age| *age < cap).collect();
        let own_quiet_for = ages.iter().min().copied().unwrap_or(cap);
        // "Lately" is the burst window, not the cap: isolated changes of one binding a second apart stay isolated.
        let lately = ages.iter().filter(|age| **age < self.burst_quiet()).count();
        let burst = lately > 1 || cluster_recent > 1;
        let needed = if burst { self.burst_quiet() } else { Duration::ZERO };
        // In a burst, quiet means quiet everywhere: the drain is not over while other nodes keep changing.
        let cluster_quiet_for = cluster_last.map_or(cap, |t| now.duration_since(t));
        let quiet_for = if burst { own_quiet_for.min(cluster_quiet_for) } else { own_quiet_for };
        let held_for = since.map_or(Duration::ZERO, |s| now.duration_since(s));
        (quiet_for < needed && held_for < cap).then(|| needed - quiet_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Runs the policy the way a reconcile does, on paused time: `changes` are (node, ms after start) signals;
    /// returns when (ms after start) the binding submits, each time, re-checking whenever the policy says and
    /// whenever a signal arrives (as its watch event would wake the binding).
    async fn submissions(settle: Settle, changes: &[(&str, u64)], cluster_extra: usize) -> Vec<u64> {
        let start = Instant::now();
        let clock = SignalClock::default();
        let mut pending: Vec<(&str, u64)> = changes.to_vec();
        pending.sort_by_key(|(_, at)| *at);
        let (mut since, mut unsent, mut out) = (None, false, Vec::new());
        loop {
            let now = Instant::now();
            let elapsed = now.duration_since(start).as_millis() as u64;
            while pending.first().is_some_and(|(_, at)| *at <= elapsed) {
                clock.saw(pending.remove(0).0);
                unsent = true;
            }
            let recent: Vec<Instant> = ["a", "b", "c"].iter().filter_map(|n| clock.last(n)).collect();
            let (recent_nodes, last) = clock.cluster(settle.burst_quiet(), now);
            let cluster = (recent_nodes + cluster_extra, last);
            let next_signal = pending.first().map(|(_, at)| Duration::from_millis(*at - elapsed));
            let wait = match unsent {
                true => settle.wait(now, &recent, cluster, since),
                false => None,
            };
            match (unsent, wait) {
                (true, None) => {
                    out.push(elapsed);
                    (since, unsent) = (None, false);
                    continue;
                }
                (true, Some(wait)) => {
                    since.get_or_insert(now);
                    tokio::time::advance(next_signal.map_or(wait, |s| s.min(wait))).await;
                }
                (false, _) => match next_signal {
                    Some(next) => tokio::time::advance(next).await,
                    None => return out,
                },
            }
        }
    }

    /// An isolated signal is submitted at once: no quiet period on the leading edge, whatever the unit.
    #[tokio::test(start_paused = true)]
    async fn an_isolated_signal_is_submitted_at_once() {
        assert_eq!(submissions(Settle::default(), &[("a", 0)], 0).await, [0]);
        let slow = Settle { quiet: Duration::from_secs(1), ..Settle::default() };
        assert_eq!(submissions(slow, &[("a", 0)], 0).await, [0]);
        // Isolated signals of one binding, further apart than the burst window, each go at once.
        assert_eq!(submissions(Settle::default(), &[("a", 0), ("b", 300)], 0).await, [0, 300]);
    }

    /// A burst: the first signal goes out alone (it looks isolated), what follows is held until 8 quiet periods
    /// pass without a change and goes out together; a burst elsewhere in the cluster holds back a binding's
    /// first signal too.
    #[tokio::test(start_paused = true)]
    async fn a_burst_is_coalesced_after_the_leading_edge() {
        let burst = [("a", 0), ("b", 10), ("c", 50)];
        assert_eq!(submissions(Settle::default(), &burst, 0).await, [0, 210]);
        assert_eq!(submissions(Settle::default(), &[("a", 0)], 2).await, [160], "cluster-wide burst");
    }

    /// A binding whose own nodes pause while other nodes of the drain keep changing keeps holding until the
    /// whole cluster has been quiet for the burst window (within the cap), so its late nodes join the batch.
    #[tokio::test(start_paused = true)]
    async fn a_burst_ends_when_the_cluster_is_quiet() {
        let drain = [("a", 0), ("b", 10), ("x1", 100), ("x2", 200), ("x3", 300)];
        assert_eq!(submissions(Settle::default(), &drain, 0).await, [0, 460]);
    }

    /// However long changes keep coming, no binding holds back longer than the cap (30 quiet periods), so a
    /// node that changes constantly cannot starve the others.
    #[tokio::test(start_paused = true)]
    async fn never_longer_than_the_cap() {
        // Two nodes changing every 10 ms, for 2 s: never quiet.
        let storm: Vec<(&str, u64)> =
            (0..200).map(|i| (if i % 2 == 0 { "a" } else { "b" }, i * 10)).collect();
        let at = submissions(Settle::default(), &storm, 0).await;
        assert_eq!(at[0], 0, "the leading edge");
        // While the storm lasts, each submission comes one cap after the last; after it, one burst window.
        let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        let (last, storm_gaps) = gaps.split_last().unwrap();
        assert!(storm_gaps.iter().all(|g| (600..=650).contains(g)), "held at most the cap: {at:?}");
        assert_eq!(
            at.last().copied(),
            Some(1990 + 160),
            "the storm's end waits one burst window ({last} ms)"
        );
    }

    /// Signals older than the cap do not count, and no recent signal at all means no wait.
    #[tokio::test(start_paused = true)]
    async fn old_signals_do_not_hold_back() {
        let s = Settle::default();
        let now = Instant::now();
        tokio::time::advance(700 * MS).await;
        assert_eq!(s.wait(Instant::now(), &[now], (0, Some(now)), None), None);
        assert_eq!(s.wait(Instant::now(), &[], (0, None), None), None);
        let zero = Settle { quiet: Duration::ZERO, ..s };
        assert_eq!(
            zero.wait(Instant::now(), &[Instant::now()], (5, Some(Instant::now())), None),
            None,
            "--settle=0s submits at once"
        );
    }
}
