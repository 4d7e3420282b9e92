//! What the operator remembers about each binding between reconciles: one map of one struct, forgotten in one
//! call. Nothing here survives a restart, by design: what must survive lives in the binding's status.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use kube::{ResourceExt, runtime::reflector::ObjectRef};
use tokio::time::Instant;

use super::{backoff::Exponential, status::Problem};
use crate::{
    api::{ClbBackendBinding, ClbBackendBindingStatus},
    clb::{Credentials, cloud::LoadBalancerView},
};

/// A binding's key in the caches.
pub type Key = ObjectRef<ClbBackendBinding>;

/// The per-binding memory of the operator.
#[derive(Default)]
pub struct Memory(Mutex<HashMap<Key, BindingMemory>>);

/// Everything remembered about one binding.
#[derive(Default)]
struct BindingMemory {
    /// The status this operator last wrote, until the watch has delivered it.
    written: Option<Written>,
    /// A status holding requestIds whose write failed: it stays the binding's status (and is written again)
    /// until a write succeeds, so that no task the CLB accepted is forgotten or submitted twice.
    unwritten: Option<ClbBackendBindingStatus>,
    /// Until when `unwritten` may wait: it adds only accepted submissions, whose intent is written, and their
    /// record waits for the tasks to end (see `Config::record_within`). `None`: it is written at once.
    record_by: Option<Instant>,
    /// Consecutive reconciles that ended in an error (see [`Memory::errored`]).
    errors: u32,
    /// The problem being backed off, if any.
    trouble: Option<Trouble>,
    /// Since when submissions have been held back for changes to settle.
    settling_since: Option<Instant>,
    /// Warnings published already (`reason:text`), so that a condition seen on every reconcile is told once.
    reported: HashSet<String>,
    /// For Deregister tasks this process submitted: when the signals behind their instances were seen.
    signals: HashMap<String, Vec<Instant>>,
    /// Credentials read from the binding's Secret: the Secret's name and resourceVersion, and what it held.
    credentials: Option<(String, String, Credentials)>,
    /// What the load balancer is (kind, listeners, rules), with the spec generation it was checked for.
    load_balancer: Option<(Option<i64>, LoadBalancerView)>,
}

/// The status this operator last wrote for a binding, and the resourceVersion that write produced.
struct Written {
    resource_version: Option<String>,
    status: ClbBackendBindingStatus,
}

/// A problem that is being retried with backoff.
#[derive(Clone, Debug, PartialEq)]
pub struct Trouble {
    /// What went wrong the last time.
    pub problem: Problem,
    /// What the attempt was made from (spec generation, Secret version, retry annotation, planned changes): a
    /// different cause is a fix to try at once.
    pub cause: u64,
    /// Consecutive attempts that ended in a problem.
    pub failures: u32,
    /// When the next attempt is due.
    pub retry_at: Instant,
}

impl Memory {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, BindingMemory>> {
        // A panic while holding the lock cannot leave an entry half-written (every update is one assignment),
        // so a poisoned map is still sound to use.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with<T>(&self, key: &Key, f: impl FnOnce(&mut BindingMemory) -> T) -> T {
        f(self.lock().entry(key.clone()).or_default())
    }

    /// Like [`Self::with`], but only for a binding already remembered: clearing something never creates an
    /// entry (a released binding's last reconcile must not bring its entry back).
    fn clear(&self, key: &Key, f: impl FnOnce(&mut BindingMemory)) {
        if let Some(m) = self.lock().get_mut(key) {
            f(m);
        }
    }

    /// The binding's status as the operator knows it. A reconcile can start before the watch has delivered the
    /// operator's own last status write (a requeue timer, another event); acting on that stale copy would
    /// submit a task twice or lose a requestId. So the last written status wins until the cache has caught up.
    pub fn current_status(&self, binding: &ClbBackendBinding) -> ClbBackendBindingStatus {
        self.statuses(binding).0
    }

    /// The binding's status as the operator knows it, and as the API server holds it (as far as known): they
    /// differ while a write that must happen (see [`Self::unwritten`]) has not.
    pub fn statuses(
        &self,
        binding: &ClbBackendBinding,
    ) -> (ClbBackendBindingStatus, ClbBackendBindingStatus) {
        let from_cache = binding.status.clone().unwrap_or_default();
        let mut map = self.lock();
        let Some(memory) = map.get_mut(&ObjectRef::from_obj(binding)) else {
            return (from_cache.clone(), from_cache);
        };
        let stored = match &memory.written {
            Some(w) if cache_is_older(binding.resource_version(), w.resource_version.clone()) => {
                w.status.clone()
            }
            Some(_) => {
                memory.written = None;
                from_cache
            }
            None => from_cache,
        };
        (memory.unwritten.clone().unwrap_or_else(|| stored.clone()), stored)
    }

    /// Remembers a status write and the resourceVersion it produced; a status that was waiting to be written
    /// is now.
    pub fn wrote(&self, key: &Key, resource_version: Option<String>, status: &ClbBackendBindingStatus) {
        self.with(key, |m| {
            m.written = Some(Written { resource_version, status: status.clone() });
            m.unwritten = None;
            m.record_by = None;
        });
    }

    /// Keeps a status whose write failed: it is what the binding's next reconcile starts from and writes.
    pub fn unwritten(&self, key: &Key, status: &ClbBackendBindingStatus) {
        self.with(key, |m| {
            m.unwritten = Some(status.clone());
            m.record_by = None;
        });
    }

    /// Keeps a status whose write may wait until `by` (see [`BindingMemory::record_by`]): like
    /// [`Self::unwritten`], it is what the binding's next reconcile starts from.
    pub fn hold(&self, key: &Key, status: &ClbBackendBindingStatus, by: Instant) {
        self.with(key, |m| {
            m.unwritten = Some(status.clone());
            m.record_by = Some(by);
        });
    }

    /// Until when the binding's unwritten status may wait, if it may.
    pub fn record_by(&self, key: &Key) -> Option<Instant> {
        self.lock().get(key).and_then(|m| m.record_by)
    }

    /// Whether a status is waiting to be written.
    pub fn has_unwritten(&self, key: &Key) -> bool {
        self.lock().get(key).is_some_and(|m| m.unwritten.is_some())
    }

    /// Counts a reconcile that ended in an error and returns how long to wait before the next one.
    pub fn errored(&self, key: &Key, backoff: &Exponential) -> Duration {
        self.with(key, |m| {
            m.errors = m.errors.saturating_add(1);
            backoff.jittered(m.errors, rand::random())
        })
    }

    /// A reconcile finished without an error.
    pub fn succeeded(&self, key: &Key) {
        self.clear(key, |m| m.errors = 0);
    }

    /// The problem being backed off, if any.
    pub fn trouble(&self, key: &Key) -> Option<Trouble> {
        self.lock().get(key).and_then(|m| m.trouble.clone())
    }

    /// Records an attempt from `cause` that ended in `problem`: the backoff grows while the cause stays the
    /// same, and starts over for a new one. Returns the wait before the next attempt.
    pub fn troubled(
        &self,
        key: &Key,
        problem: Problem,
        cause: u64,
        backoff: &Exponential,
        now: Instant,
    ) -> Duration {
        self.with(key, |m| {
            let failures = match &m.trouble {
                Some(t) if t.cause == cause => t.failures.saturating_add(1),
                _ => 1,
            };
            let wait = backoff.jittered(failures, rand::random());
            m.trouble = Some(Trouble { problem, cause, failures, retry_at: now + wait });
            wait
        })
    }

    /// The problem is gone: the next one starts from the shortest wait.
    pub fn untroubled(&self, key: &Key) {
        self.clear(key, |m| m.trouble = None);
    }

    /// Since when the binding has been holding back submissions (`None`: it is not).
    pub fn settling_since(&self, key: &Key) -> Option<Instant> {
        self.lock().get(key).and_then(|m| m.settling_since)
    }

    /// Notes that the binding holds back (from `now`, unless it already was) or no longer does.
    pub fn settling(&self, key: &Key, holding: bool, now: Instant) {
        match holding {
            true => self.with(key, |m| m.settling_since = m.settling_since.or(Some(now))),
            false => self.clear(key, |m| m.settling_since = None),
        }
    }

    /// Whether `what` is new for the binding since its problems last cleared (then it is remembered).
    pub fn first_report(&self, key: &Key, what: String) -> bool {
        self.with(key, |m| m.reported.insert(what))
    }

    /// The binding's problems cleared: warnings will be told again.
    pub fn reports_cleared(&self, key: &Key) {
        self.clear(key, |m| m.reported.clear());
    }

    /// Remembers when the signals behind a submitted Deregister task were seen.
    pub fn deregister_submitted(&self, key: &Key, request_id: &str, signals: Vec<Instant>) {
        self.with(key, |m| m.signals.insert(request_id.to_owned(), signals));
    }

    /// The signal times of a finished Deregister task, if this process submitted it.
    pub fn deregister_finished(&self, key: &Key, request_id: &str) -> Vec<Instant> {
        self.with(key, |m| m.signals.remove(request_id).unwrap_or_default())
    }

    /// What the load balancer was found to be for spec `generation`, if it was looked at.
    pub fn load_balancer(&self, key: &Key, generation: Option<i64>) -> Option<LoadBalancerView> {
        self.with(key, |m| m.load_balancer.as_ref().filter(|(g, _)| *g == generation).map(|(_, v)| v.clone()))
    }

    /// Remembers what the load balancer is for spec `generation`.
    pub fn looked_at_load_balancer(&self, key: &Key, generation: Option<i64>, view: LoadBalancerView) {
        self.with(key, |m| m.load_balancer = Some((generation, view)));
    }

    /// The credentials of Secret `secret` (in the binding's namespace) at `version`, if they are remembered for
    /// this binding or for another binding of the namespace that uses the same Secret: bindings that share a
    /// Secret read it once, not once each (a restarted operator would otherwise make one GET per binding).
    pub fn credentials(&self, key: &Key, secret: &str, version: &str) -> Option<Credentials> {
        let map = self.lock();
        let read_from = |m: &BindingMemory| {
            let (name, at, credentials) = m.credentials.as_ref()?;
            (name == secret && at == version).then(|| credentials.clone())
        };
        map.get(key).and_then(read_from).or_else(|| {
            (map.iter()).filter(|(k, _)| k.namespace == key.namespace).find_map(|(_, m)| read_from(m))
        })
    }

    /// Remembers the credentials the binding read from Secret `secret` at `version`.
    pub fn read_credentials(&self, key: &Key, secret: &str, version: String, credentials: Credentials) {
        self.with(key, |m| m.credentials = Some((secret.to_owned(), version, credentials)));
    }

    /// Forgets everything about a binding that is going away.
    pub fn forget(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// How many bindings are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no binding is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether the cached object is older than the operator's own write. resourceVersions are opaque by contract,
/// but every etcd-backed API server issues increasing integers; where they do not parse, equality is the only
/// safe test.
fn cache_is_older(cached: Option<String>, ours: Option<String>) -> bool {
    let number = |rv: &Option<String>| rv.as_deref()?.parse::<u64>().ok();
    match (number(&cached), number(&ours)) {
        (Some(cached), Some(ours)) => cached < ours,
        _ => cached != ours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::status::reasons;

    fn key() -> Key {
        ObjectRef::new("web").within("shop")
    }

    fn problem() -> Problem {
        Problem { reason: reasons::LOAD_BALANCER_NOT_FOUND, message: "lb-x does not exist".into() }
    }

    const BACKOFF: Exponential =
        Exponential { initial: Duration::from_secs(2), max: Duration::from_secs(300) };

    /// Consecutive problems from the same cause wait longer and longer (2 s doubling, ±20 % jitter, 5 min at
    /// most); a new cause (a fixed spec or Secret) starts over, and a success clears it.
    #[tokio::test(start_paused = true)]
    async fn the_problem_backoff_grows_and_resets() {
        let m = Memory::default();
        let now = Instant::now();
        let waits: Vec<Duration> = (0..12).map(|_| m.troubled(&key(), problem(), 1, &BACKOFF, now)).collect();
        for (n, wait) in waits.iter().enumerate() {
            let nominal = BACKOFF.delay(n as u32 + 1);
            assert!(*wait >= nominal.mul_f64(0.8) && *wait <= nominal.mul_f64(1.2), "{n}: {wait:?}");
        }
        assert!(waits[3] > waits[2] && waits[2] > waits[1] && waits[1] > waits[0], "{waits:?}");
        assert!(waits[11] <= Duration::from_secs(360));
        assert_eq!(m.trouble(&key()).map(|t| t.failures), Some(12));
        assert_eq!(m.trouble(&key()).map(|t| t.retry_at), Some(now + waits[11]));

        let fresh = m.troubled(&key(), problem(), 2, &BACKOFF, now);
        assert!(fresh <= Duration::from_millis(2400), "a new cause starts over: {fresh:?}");
        m.untroubled(&key());
        assert_eq!(m.trouble(&key()), None);
        assert!(m.troubled(&key(), problem(), 2, &BACKOFF, now) <= Duration::from_millis(2400));
    }

    /// The error backoff of `error_policy` grows across failed reconciles and resets on success.
    #[test]
    fn the_error_backoff_grows_and_resets() {
        let m = Memory::default();
        let first = m.errored(&key(), &BACKOFF);
        let _ = m.errored(&key(), &BACKOFF);
        let third = m.errored(&key(), &BACKOFF);
        assert!(third > first, "{first:?} then {third:?}");
        m.succeeded(&key());
        assert!(m.errored(&key(), &BACKOFF) <= Duration::from_millis(2400));
    }

    /// Bindings of one namespace that use the same Secret share what was read from it, at that version only;
    /// a Secret of the same name in another namespace is another Secret.
    #[test]
    fn bindings_sharing_a_secret_read_it_once() {
        let m = Memory::default();
        let (a, b, other) =
            (key(), ObjectRef::new("api").within("shop"), ObjectRef::new("web").within("blog"));
        let c = Credentials::new("AKID", "key", None);
        assert!(m.credentials(&b, "creds", "7").is_none());
        m.read_credentials(&a, "creds", "7".into(), c.clone());
        assert_eq!(m.credentials(&a, "creds", "7").map(|c| c.secret_id().to_owned()), Some("AKID".into()));
        assert!(m.credentials(&b, "creds", "7").is_some(), "b uses what a read");
        assert!(m.credentials(&b, "creds", "8").is_none(), "not at another version");
        assert!(m.credentials(&b, "other", "7").is_none(), "not from another Secret");
        assert!(m.credentials(&other, "creds", "7").is_none(), "not from another namespace");
    }

    /// `forget` leaves no per-binding entry behind, whatever was remembered.
    #[tokio::test(start_paused = true)]
    async fn forget_leaves_nothing_behind() {
        let m = Memory::default();
        let k = key();
        m.wrote(&k, Some("5".into()), &ClbBackendBindingStatus::default());
        let _ = m.errored(&k, &BACKOFF);
        let _ = m.troubled(&k, problem(), 1, &BACKOFF, Instant::now());
        m.settling(&k, true, Instant::now());
        assert!(m.first_report(&k, "InstanceIdMissing:node-a".into()));
        m.deregister_submitted(&k, "1001", vec![Instant::now()]);
        m.read_credentials(&k, "creds", "7".into(), Credentials::new("AKID", "key", None));
        m.unwritten(&k, &ClbBackendBindingStatus::default());
        assert_eq!(m.len(), 1);
        m.forget(&k);
        assert!(m.is_empty());
        // What a released binding's last reconcile still does must not bring the entry back.
        m.succeeded(&k);
        m.untroubled(&k);
        m.settling(&k, false, Instant::now());
        m.reports_cleared(&k);
        assert!(m.is_empty());
        assert_eq!(m.settling_since(&k), None);
        assert!(m.first_report(&k, "InstanceIdMissing:node-a".into()), "told again after forget");
    }

    /// A written status wins over an older cached copy, and is dropped once the cache has caught up.
    #[test]
    fn the_last_written_status_wins_until_the_cache_catches_up() {
        let m = Memory::default();
        let spec = crate::controller::fixtures::spec(crate::api::Targets {
            node_selector: None,
            pod_selector: None,
        });
        let mut b = ClbBackendBinding::new("web", spec);
        b.metadata.namespace = Some("shop".into());
        b.metadata.resource_version = Some("9".into());
        let ours = ClbBackendBindingStatus { desired: 3, ..Default::default() };
        m.wrote(&key(), Some("10".into()), &ours);
        assert_eq!(m.current_status(&b), ours);
        b.metadata.resource_version = Some("10".into());
        assert_eq!(m.current_status(&b), ClbBackendBindingStatus::default());

        // A status whose write failed wins over everything until a write succeeds.
        let lost = ClbBackendBindingStatus { in_flight: 1, ..Default::default() };
        m.unwritten(&key(), &lost);
        assert!(m.has_unwritten(&key()));
        assert_eq!(m.statuses(&b), (lost.clone(), ClbBackendBindingStatus::default()));
        m.wrote(&key(), Some("11".into()), &lost);
        assert!(!m.has_unwritten(&key()));
        assert_eq!(m.current_status(&b), lost, "the write is newer than the cache");
        assert!(cache_is_older(Some("a".into()), Some("b".into())));
        assert!(!cache_is_older(Some("b".into()), Some("b".into())));
    }

    /// A held status is the binding's status until it is written, with its deadline; a failed write or a
    /// successful one ends the wait (a status that must be written never waits).
    #[test]
    fn a_held_status_waits_until_a_write() {
        let m = Memory::default();
        let by = Instant::now() + Duration::from_secs(2);
        let submitted = ClbBackendBindingStatus { in_flight: 1, ..Default::default() };
        m.hold(&key(), &submitted, by);
        assert_eq!((m.record_by(&key()), m.has_unwritten(&key())), (Some(by), true));
        m.unwritten(&key(), &submitted);
        assert_eq!((m.record_by(&key()), m.has_unwritten(&key())), (None, true), "a failed write: at once");
        m.hold(&key(), &submitted, by);
        m.wrote(&key(), Some("12".into()), &submitted);
        assert_eq!((m.record_by(&key()), m.has_unwritten(&key())), (None, false));
    }
}
