//! The pod cache's scope: only the pods of namespaces that hold a pod-targeted binding are watched and kept.
//!
//! A binding selects pods of its own namespace only, so pods elsewhere are never read; caching every pod of a
//! large cluster would cost memory in proportion to the cluster instead of to what the operator serves. The pod
//! watch stays cluster-wide (one connection however many namespaces) and drops out-of-scope events before the
//! cache. When the set of namespaces changes a second watch lists anew while the first keeps the cache current,
//! and the new list replaces the old one whole once it is complete. kube-runtime has no watcher whose scope can
//! change while it runs, hence this small stream.

use std::{collections::BTreeSet, time::Duration};

use futures::{Stream, StreamExt, stream::BoxStream};
use kube::{
    ResourceExt,
    runtime::{reflector::store::Writer, watcher},
};
use tokio::{sync::watch, time::Instant};
use tracing::info;

use super::slim::SlimPod;

/// How long the namespace set must stay unchanged before a new list starts: creating bindings in several new
/// namespaces at once (a Helm release, a test suite) costs one new list, not one per namespace.
const RESCOPE_SETTLE: Duration = Duration::from_millis(200);

/// The longest a stream of changes can hold a new list back.
const RESCOPE_SETTLE_MAX: Duration = Duration::from_secs(1);

/// The namespaces whose pods are wanted, and those the cache holds a complete list of.
pub struct PodScope {
    wanted: watch::Sender<BTreeSet<String>>,
    covered: watch::Sender<BTreeSet<String>>,
}

impl Default for PodScope {
    fn default() -> Self {
        Self { wanted: watch::Sender::new(BTreeSet::new()), covered: watch::Sender::new(BTreeSet::new()) }
    }
}

impl PodScope {
    /// Sets the namespaces to cache pods of to what `namespaces` computes; returns whether that changed
    /// anything. The computation runs under the scope's lock, so that of two callers computing from the
    /// bindings at different moments, the later computation is the one that stays.
    pub fn want(&self, namespaces: impl FnOnce() -> BTreeSet<String>) -> bool {
        self.wanted.send_if_modified(|current| {
            let namespaces = namespaces();
            let changed = *current != namespaces;
            *current = namespaces;
            changed
        })
    }

    /// Whether pods of `namespace` are wanted.
    pub fn wants(&self, namespace: &str) -> bool {
        self.wanted.borrow().contains(namespace)
    }

    /// The namespaces currently wanted.
    pub fn wanted(&self) -> BTreeSet<String> {
        self.wanted.borrow().clone()
    }

    /// Waits until the cache holds a complete list of the pods of every namespace in `namespaces`; false if
    /// that did not happen within `timeout`.
    pub async fn covered(&self, namespaces: &BTreeSet<String>, timeout: Duration) -> bool {
        let mut covered = self.covered.subscribe();
        let done = covered.wait_for(|c| namespaces.is_subset(c));
        matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(_)))
    }

    /// The pod events of the wanted namespaces, from watches that `watch` starts (a fresh list each time the
    /// wanted set changes; none while it is empty), applied to the cache behind `writer` before they are
    /// passed on. (This stream is the reflector: a namespace may count as covered only once its list is in
    /// the store, not when the list has merely been read.)
    pub fn events<F>(
        &self,
        watch: F,
        writer: Writer<SlimPod>,
    ) -> impl Stream<Item = Result<watcher::Event<SlimPod>, watcher::Error>> + Send + use<F>
    where
        F: Fn() -> BoxStream<'static, Result<watcher::Event<SlimPod>, watcher::Error>> + Send + 'static,
    {
        let mut wanted = self.wanted.subscribe();
        let namespaces = wanted.borrow_and_update().clone();
        let mut scoped = Scoped {
            live: None,
            listing: None,
            settling: None,
            wanted,
            covered: self.covered.clone(),
            watch,
            writer,
        };
        if !namespaces.is_empty() {
            scoped.rescope(namespaces);
        }
        futures::stream::unfold(scoped, |mut s| async move {
            let event = s.next().await?;
            Some((event, s))
        })
    }
}

type Events = BoxStream<'static, Result<watcher::Event<SlimPod>, watcher::Error>>;

/// One watch and the namespaces it passes on.
struct Watch {
    events: Events,
    namespaces: BTreeSet<String>,
}

/// The state of the scoped pod stream.
struct Scoped<F> {
    /// The watch whose list is in the store, keeping it current.
    live: Option<Watch>,
    /// A watch listing for a new scope; it replaces `live` when its list is complete.
    listing: Option<Watch>,
    /// When the wanted set first and last changed since the running scope was set.
    settling: Option<(Instant, Instant)>,
    wanted: watch::Receiver<BTreeSet<String>>,
    covered: watch::Sender<BTreeSet<String>>,
    watch: F,
    writer: Writer<SlimPod>,
}

/// What woke the scoped stream.
enum Step {
    Wanted(bool),
    Settled,
    Live(Option<Result<watcher::Event<SlimPod>, watcher::Error>>),
    Listing(Option<Result<watcher::Event<SlimPod>, watcher::Error>>),
}

impl<F> Scoped<F>
where
    F: Fn() -> Events,
{
    /// Starts a new list for `namespaces` (an empty one, that empties the store, if there are none); the
    /// live watch keeps the namespaces it shares with the new scope current, and covered, meanwhile.
    fn rescope(&mut self, namespaces: BTreeSet<String>) {
        info!(namespaces = namespaces.len(), "Pod watch scope");
        let events = if namespaces.is_empty() {
            // The writer starts a new buffer on Init and swaps it in on InitDone.
            futures::stream::iter([Ok(watcher::Event::Init), Ok(watcher::Event::InitDone)]).boxed()
        } else {
            (self.watch)()
        };
        self.covered.send_modify(|covered| covered.retain(|ns| namespaces.contains(ns)));
        self.listing = Some(Watch { events, namespaces });
    }

    /// The namespaces of the newest scope set (listing or live).
    fn scope(&self) -> Option<&BTreeSet<String>> {
        self.listing.as_ref().or(self.live.as_ref()).map(|w| &w.namespaces)
    }

    /// The next event to pass on, applied to the store; `None` when the operator is shutting down.
    async fn next(&mut self) -> Option<Result<watcher::Event<SlimPod>, watcher::Error>> {
        loop {
            let step = {
                let deadline = self
                    .settling
                    .map(|(first, last)| (last + RESCOPE_SETTLE).min(first + RESCOPE_SETTLE_MAX));
                let Self { live, listing, wanted, .. } = self;
                tokio::select! {
                    changed = wanted.changed() => Step::Wanted(changed.is_ok()),
                    () = sleep_until(deadline) => Step::Settled,
                    event = next_of(live) => Step::Live(event),
                    event = next_of(listing) => Step::Listing(event),
                }
            };
            match step {
                Step::Wanted(false) => return None,
                Step::Wanted(true) => {
                    let now = Instant::now();
                    self.settling = Some((self.settling.map_or(now, |(first, _)| first), now));
                }
                Step::Settled => {
                    self.settling = None;
                    let namespaces = self.wanted.borrow_and_update().clone();
                    if self.scope() != Some(&namespaces) && !(self.scope().is_none() && namespaces.is_empty())
                    {
                        self.rescope(namespaces);
                    }
                }
                // A watch never ends; the stream that empties the store does.
                Step::Live(None) => self.live = None,
                Step::Listing(None) => self.listing = None,
                // While a new scope lists, the live watch only keeps the store current; if it lists itself
                // (it could not resume) it would mix its list into the new one, and the new list replaces the
                // store anyway.
                Step::Live(Some(Ok(
                    watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::InitDone,
                ))) if self.listing.is_some() => self.live = None,
                Step::Live(Some(event)) => {
                    let passed =
                        self.live.as_ref().and_then(|w| pass(&mut self.writer, &self.covered, w, event));
                    if passed.is_some() {
                        return passed;
                    }
                }
                Step::Listing(Some(event)) => {
                    let complete = matches!(event, Ok(watcher::Event::InitDone));
                    let passed =
                        self.listing.as_ref().and_then(|w| pass(&mut self.writer, &self.covered, w, event));
                    if complete {
                        // The new list is in the store: its watch is the live one now.
                        self.live = self.listing.take();
                    }
                    if passed.is_some() {
                        return passed;
                    }
                }
            }
        }
    }
}

/// Applies an event of `watch` that is in its scope to the store and passes it on; a completed list covers its
/// namespaces, and only once it is in the store.
fn pass(
    writer: &mut Writer<SlimPod>,
    covered: &watch::Sender<BTreeSet<String>>,
    watch: &Watch,
    event: Result<watcher::Event<SlimPod>, watcher::Error>,
) -> Option<Result<watcher::Event<SlimPod>, watcher::Error>> {
    if !in_scope(&event, &watch.namespaces) {
        return None;
    }
    if let Ok(e) = &event {
        writer.apply_watcher_event(e);
    }
    if let Ok(watcher::Event::InitDone) = &event {
        covered.send_replace(watch.namespaces.clone());
    }
    Some(event)
}

async fn next_of(watch: &mut Option<Watch>) -> Option<Result<watcher::Event<SlimPod>, watcher::Error>> {
    match watch {
        Some(w) => w.events.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether an event concerns the namespaces in scope; list boundaries and errors always pass.
fn in_scope(event: &Result<watcher::Event<SlimPod>, watcher::Error>, namespaces: &BTreeSet<String>) -> bool {
    match event {
        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) | watcher::Event::Delete(pod)) => {
            pod.namespace().is_some_and(|ns| namespaces.contains(&ns))
        }
        Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::channel::mpsc;
    use kube::runtime::watcher::Event;

    use super::*;

    type Sent = Arc<Mutex<Vec<mpsc::UnboundedSender<Result<Event<SlimPod>, watcher::Error>>>>>;

    fn pod(ns: &str, name: &str) -> SlimPod {
        let mut pod = SlimPod::default();
        pod.metadata.namespace = Some(ns.into());
        pod.metadata.name = Some(name.into());
        pod
    }

    fn set(namespaces: &[&str]) -> BTreeSet<String> {
        namespaces.iter().map(|n| (*n).to_owned()).collect()
    }

    /// What an event is, for comparing: "Init", "InitDone", or the kind and the pod's namespace/name.
    fn label(event: Option<Result<Event<SlimPod>, watcher::Error>>) -> String {
        match event {
            Some(Ok(Event::Init)) => "Init".into(),
            Some(Ok(Event::InitDone)) => "InitDone".into(),
            Some(Ok(Event::InitApply(p))) => format!("InitApply {}/{}", p.namespace().unwrap(), p.name_any()),
            Some(Ok(Event::Apply(p))) => format!("Apply {}/{}", p.namespace().unwrap(), p.name_any()),
            Some(Ok(Event::Delete(p))) => format!("Delete {}/{}", p.namespace().unwrap(), p.name_any()),
            Some(Err(e)) => format!("Err {e}"),
            None => "end".into(),
        }
    }

    /// A pod scope fed by fake watches, one per list it starts, and the store it fills.
    struct Rig {
        scope: Arc<PodScope>,
        sent: Sent,
        store: kube::runtime::reflector::Store<SlimPod>,
        events: BoxStream<'static, Result<Event<SlimPod>, watcher::Error>>,
    }

    impl Rig {
        fn new() -> Self {
            let scope = Arc::new(PodScope::default());
            let sent: Sent = Arc::default();
            let starts = sent.clone();
            let (store, writer) = kube::runtime::reflector::store::<SlimPod>();
            let start = move || {
                let (tx, rx) = mpsc::unbounded();
                starts.lock().unwrap().push(tx);
                rx.boxed()
            };
            let events = scope.events(start, writer).boxed();
            Self { scope, sent, store, events }
        }

        /// The next event the stream passes on, or "nothing" within 5 s.
        async fn next(&mut self) -> String {
            match tokio::time::timeout(Duration::from_secs(5), self.events.next()).await {
                Ok(event) => label(event),
                Err(_) => "nothing".into(),
            }
        }

        /// Sends to watch number `i` (in the order they were started).
        fn send_to(&self, i: usize, events: impl IntoIterator<Item = Event<SlimPod>>) {
            for event in events {
                self.sent.lock().unwrap()[i].unbounded_send(Ok(event)).unwrap();
            }
        }

        fn want(&self, namespaces: &[&str]) -> bool {
            self.scope.want(|| set(namespaces))
        }

        fn watches(&self) -> usize {
            self.sent.lock().unwrap().len()
        }

        async fn covered(&self, namespaces: &[&str]) -> bool {
            self.scope.covered(&set(namespaces), Duration::ZERO).await
        }

        fn cached(&self) -> Vec<String> {
            let mut pods: Vec<String> = self
                .store
                .state()
                .iter()
                .map(|p| format!("{}/{}", p.namespace().unwrap(), p.name_any()))
                .collect();
            pods.sort();
            pods
        }

        /// Wants `a` and completes its first list: a/p1 in scope, b/p2 not.
        async fn list_a(&mut self) {
            assert!(self.want(&["a"]));
            assert_eq!(self.next().await, "nothing");
            assert_eq!(self.watches(), 1, "one watch once the set settled");
            self.send_to(
                0,
                [Event::Init, Event::InitApply(pod("a", "p1")), Event::InitApply(pod("b", "p2"))],
            );
            self.send_to(0, [Event::InitDone]);
            assert_eq!(self.next().await, "Init");
            assert_eq!(self.next().await, "InitApply a/p1");
            assert!(!self.covered(&["a"]).await, "not covered before the list is complete");
            assert!(self.cached().is_empty(), "nothing in the store before the list is complete");
            assert_eq!(self.next().await, "InitDone", "b/p2 is out of scope");
            assert!(self.covered(&["a"]).await);
            assert_eq!(self.cached(), ["a/p1"], "covered means in the store");
        }
    }

    /// No watch while no namespace is wanted; a list once a namespace is; events of other namespaces dropped;
    /// coverage only once a list is complete.
    #[tokio::test(start_paused = true)]
    async fn watches_only_the_wanted_namespaces() {
        let mut rig = Rig::new();
        assert_eq!(rig.next().await, "nothing", "nothing wanted, nothing watched");
        assert_eq!(rig.watches(), 0);
        assert!(rig.covered(&[]).await, "nothing wanted is covered at once");
        rig.list_a().await;
        assert!(!rig.want(&["a"]), "the same set is no change");
        assert!(rig.scope.wants("a") && !rig.scope.wants("b"));
        assert!(!rig.covered(&["a", "b"]).await);
        rig.send_to(0, [Event::Apply(pod("b", "x")), Event::Delete(pod("a", "p1"))]);
        assert_eq!(rig.next().await, "Delete a/p1");
        assert!(rig.cached().is_empty());
    }

    /// A new scope lists on a second watch while the first keeps the store current; the old list serves until
    /// the new one is complete, then the old watch is dropped.
    #[tokio::test(start_paused = true)]
    async fn a_new_scope_lists_beside_the_old_one() {
        let mut rig = Rig::new();
        rig.list_a().await;
        assert!(rig.want(&["a", "b"]));
        assert_eq!(rig.next().await, "nothing");
        assert_eq!(rig.watches(), 2, "a new watch for the new set");
        assert!(rig.covered(&["a"]).await, "the old list still covers a");
        assert!(!rig.covered(&["b"]).await, "b is covered once the new list is done");
        rig.send_to(0, [Event::Apply(pod("a", "p3"))]);
        assert_eq!(rig.next().await, "Apply a/p3", "the old watch keeps a current meanwhile");
        assert_eq!(rig.cached(), ["a/p1", "a/p3"]);
        rig.send_to(1, [Event::Init, Event::InitApply(pod("a", "p3")), Event::InitApply(pod("b", "p2"))]);
        assert_eq!(rig.next().await, "Init");
        assert_eq!(rig.next().await, "InitApply a/p3");
        assert_eq!(rig.next().await, "InitApply b/p2");
        assert_eq!(rig.cached(), ["a/p1", "a/p3"], "the old list serves until the new one is complete");
        rig.send_to(1, [Event::InitDone]);
        assert_eq!(rig.next().await, "InitDone");
        assert!(rig.covered(&["a", "b"]).await);
        assert_eq!(rig.cached(), ["a/p3", "b/p2"], "a/p1 was not in the new list");
        assert!(rig.sent.lock().unwrap()[0].is_closed(), "the old watch is dropped");
    }

    /// Changes that keep coming hold a new list back for a second at most; an emptied scope empties the cache
    /// and watches nothing.
    #[tokio::test(start_paused = true)]
    async fn churn_lists_within_a_second_and_an_empty_scope_empties_the_cache() {
        let mut rig = Rig::new();
        rig.list_a().await;
        let lists = rig.watches();
        let mut waited = Duration::ZERO;
        for i in 0..20 {
            rig.want(if i % 2 == 0 { &["a", "b"] } else { &["a", "c"] });
            let _ = tokio::time::timeout(Duration::from_millis(100), rig.events.next()).await;
            waited += Duration::from_millis(100);
            if rig.watches() > lists {
                break;
            }
        }
        assert!(rig.watches() > lists, "a new list despite the changes");
        assert!(waited <= Duration::from_millis(1100), "within a second or so: {waited:?}");
        rig.want(&["a", "b"]);
        assert_eq!(rig.next().await, "nothing");
        let last = rig.watches() - 1;
        rig.send_to(last, [Event::Init, Event::InitApply(pod("b", "p2")), Event::InitDone]);
        let mut listed = Vec::new();
        while listed.last().map(String::as_str) != Some("InitDone") {
            listed.push(rig.next().await);
        }
        assert_eq!(listed, ["Init", "InitApply b/p2", "InitDone"]);
        assert_eq!(rig.cached(), ["b/p2"], "a/p1 was not in the new list");

        assert!(rig.want(&[]));
        assert_eq!(rig.next().await, "Init", "an empty scope empties the cache");
        assert_eq!(rig.next().await, "InitDone");
        assert!(rig.cached().is_empty(), "emptied");
        assert_eq!(rig.next().await, "nothing");
        assert!(rig.sent.lock().unwrap().iter().all(|tx| tx.is_closed()), "and watches nothing");
    }
}
