//! The pod cache's scope: only the pods of namespaces that hold a pod-targeted binding are watched and kept.
//!
//! A binding selects pods of its own namespace only, so pods elsewhere are never read; caching every pod of a
//! large cluster would cost memory in proportion to the cluster instead of to what the operator serves. Each
//! wanted namespace has a watch of its own, so a namespace joining the scope lists only its own pods (a
//! cluster-wide watch would list all 150,000 pods of a large cluster again for each new namespace, which took
//! longer than a reconcile may wait) and one leaving it takes only its own pods out of the cache. All the
//! watches feed one store. kube-runtime's reflector replaces its whole store with each list and its watcher's
//! scope is fixed, hence this small stream.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use futures::{
    Stream, StreamExt,
    channel::oneshot,
    stream::{BoxStream, SelectAll},
};
use kube::runtime::{reflector::store::Writer, watcher};
use tokio::sync::{Semaphore, watch};
use tracing::info;

use super::slim::SlimPod;

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
    pub async fn covered(&self, namespaces: &BTreeSet<String>, timeout: std::time::Duration) -> bool {
        let mut covered = self.covered.subscribe();
        let done = covered.wait_for(|c| namespaces.is_subset(c));
        matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(_)))
    }

    /// The pod changes of the wanted namespaces, from the watches that `watch` starts (one per namespace,
    /// started when it is wanted and dropped when it no longer is), applied to the cache behind `writer` before
    /// they are passed on. Only `Apply`, `Delete` and errors come out: a namespace's list goes into the store
    /// whole once it is complete (a namespace counts as covered only then), and comes out as the `Apply` of each
    /// listed pod, after the `Delete` of each cached pod the list no longer holds (it went away while the watch
    /// could not resume). A namespace leaving the scope takes its pods out of the store without passing on
    /// deletions: no binding there reads pods any more, and a deletion would count as a signal.
    pub fn events<F>(
        &self,
        watch: F,
        writer: Writer<SlimPod>,
    ) -> impl Stream<Item = Result<watcher::Event<SlimPod>, watcher::Error>> + Send + use<F>
    where
        F: Fn(&str) -> Events + Send + 'static,
    {
        let mut wanted = self.wanted.subscribe();
        let namespaces = wanted.borrow_and_update().clone();
        let mut scoped = Scoped {
            watches: SelectAll::new(),
            stops: HashMap::new(),
            listing: HashMap::new(),
            out: VecDeque::new(),
            wanted,
            covered: self.covered.clone(),
            watch,
            writer,
        };
        scoped.rescope(&namespaces);
        futures::stream::unfold(scoped, |mut s| async move {
            let event = s.next().await?;
            Some((event, s))
        })
    }
}

/// The events of one namespace's watch.
pub type Events = BoxStream<'static, Result<watcher::Event<SlimPod>, watcher::Error>>;

/// Holds `events` back from listing until `gate` has a permit, and keeps the permit until the list is complete
/// (or failed). A list answer is held whole in memory before it is parsed (about 2.7 MB for a namespace of 300
/// kubelet-shaped pods), so 250 namespaces listing at once at start-up took the operator's peak to 750 MiB;
/// four at a time hold about twice what one 500-pod page of a cluster-wide list did. kube-runtime's watcher
/// says `Init` before it sends its first list request and asks for nothing until polled again, which is where
/// the permit is taken.
/// Events are passed on unchanged.
pub fn in_turn(events: Events, gate: std::sync::Arc<Semaphore>) -> Events {
    futures::stream::unfold((events, gate, None), |(mut events, gate, mut permit)| async move {
        let event = events.next().await?;
        match &event {
            Ok(watcher::Event::Init) => permit = gate.clone().acquire_owned().await.ok(),
            Ok(watcher::Event::InitDone) | Err(_) => permit = None,
            Ok(_) => {}
        }
        Some((event, (events, gate, permit)))
    })
    .boxed()
}

/// The events of one namespace's watch, each with the namespace.
type Tagged = BoxStream<'static, (String, Result<watcher::Event<SlimPod>, watcher::Error>)>;

/// The state of the scoped pod stream.
struct Scoped<F> {
    /// The namespaces' watches, each event tagged with its namespace.
    watches: SelectAll<Tagged>,
    /// Per watched namespace, what ends its watch when dropped.
    stops: HashMap<String, oneshot::Sender<()>>,
    /// The lists under way, per namespace.
    listing: HashMap<String, Vec<SlimPod>>,
    /// Events applied to the store and not yet passed on.
    out: VecDeque<Result<watcher::Event<SlimPod>, watcher::Error>>,
    wanted: watch::Receiver<BTreeSet<String>>,
    covered: watch::Sender<BTreeSet<String>>,
    watch: F,
    writer: Writer<SlimPod>,
}

impl<F> Scoped<F>
where
    F: Fn(&str) -> Events,
{
    /// Watches the namespaces in `namespaces` and no others: new ones start a watch (and list), the others
    /// keep theirs, and those no longer wanted drop their watch and their pods.
    fn rescope(&mut self, namespaces: &BTreeSet<String>) {
        let leaving: Vec<String> =
            self.stops.keys().filter(|ns| !namespaces.contains(*ns)).cloned().collect();
        for ns in &leaving {
            // Dropping the sender ends the watch before it yields anything more.
            self.stops.remove(ns);
            self.listing.remove(ns);
        }
        if !leaving.is_empty() {
            let leaving: HashSet<&str> = leaving.iter().map(String::as_str).collect();
            for pod in self.writer.as_reader().state() {
                if pod.metadata.namespace.as_deref().is_some_and(|ns| leaving.contains(ns)) {
                    self.writer.apply_watcher_event(&watcher::Event::Delete((*pod).clone()));
                }
            }
            self.covered.send_modify(|covered| covered.retain(|ns| !leaving.contains(ns.as_str())));
        }
        let joining: Vec<&String> = namespaces.iter().filter(|ns| !self.stops.contains_key(*ns)).collect();
        for ns in &joining {
            let (stop, stopped) = oneshot::channel::<()>();
            let tag = (*ns).clone();
            let events = (self.watch)(ns).take_until(stopped).map(move |event| (tag.clone(), event)).boxed();
            self.watches.push(events);
            self.stops.insert((*ns).clone(), stop);
        }
        if !leaving.is_empty() || !joining.is_empty() {
            info!(
                namespaces = namespaces.len(),
                joining = joining.len(),
                leaving = leaving.len(),
                "Pod watch scope"
            );
        }
    }

    /// The next event to pass on, applied to the store; `None` when the operator is shutting down.
    async fn next(&mut self) -> Option<Result<watcher::Event<SlimPod>, watcher::Error>> {
        loop {
            if let Some(event) = self.out.pop_front() {
                return Some(event);
            }
            let Self { watches, wanted, .. } = self;
            tokio::select! {
                changed = wanted.changed() => {
                    changed.ok()?;
                    let namespaces = self.wanted.borrow_and_update().clone();
                    self.rescope(&namespaces);
                }
                Some((ns, event)) = watches.next(), if !watches.is_empty() => self.take(&ns, event),
            }
        }
    }

    /// Applies an event of namespace `ns`'s watch to the store and queues what it passes on.
    fn take(&mut self, ns: &str, event: Result<watcher::Event<SlimPod>, watcher::Error>) {
        match event {
            Err(e) => self.out.push_back(Err(e)),
            Ok(watcher::Event::Init) => {
                self.listing.insert(ns.to_owned(), Vec::new());
            }
            Ok(watcher::Event::InitApply(pod)) => self.listing.entry(ns.to_owned()).or_default().push(pod),
            Ok(watcher::Event::InitDone) => self.listed(ns),
            Ok(event @ (watcher::Event::Apply(_) | watcher::Event::Delete(_))) => self.pass(event),
        }
    }

    /// Namespace `ns`'s list is complete: into the store with it, and the namespace is covered.
    fn listed(&mut self, ns: &str) {
        let listed = self.listing.remove(ns).unwrap_or_default();
        if self.covered.borrow().contains(ns) {
            // A list again (the watch could not resume): what it lacks went away unseen.
            let names: HashSet<&str> = listed.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
            let gone: Vec<SlimPod> = (self.writer.as_reader().state().iter())
                .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
                .filter(|p| !p.metadata.name.as_deref().is_some_and(|n| names.contains(n)))
                .map(|p| (**p).clone())
                .collect();
            for pod in gone {
                self.pass(watcher::Event::Delete(pod));
            }
        }
        for pod in listed {
            self.pass(watcher::Event::Apply(pod));
        }
        self.covered.send_modify(|covered| {
            covered.insert(ns.to_owned());
        });
    }

    fn pass(&mut self, event: watcher::Event<SlimPod>) {
        self.writer.apply_watcher_event(&event);
        self.out.push_back(Ok(event));
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use futures::channel::mpsc;
    use kube::{ResourceExt, runtime::watcher::Event};

    use super::*;

    /// The watches started, in order: their namespace and what feeds them.
    type Sent = Arc<Mutex<Vec<(String, mpsc::UnboundedSender<Result<Event<SlimPod>, watcher::Error>>)>>>;

    fn pod(ns: &str, name: &str) -> SlimPod {
        let mut pod = SlimPod::default();
        pod.metadata.namespace = Some(ns.into());
        pod.metadata.name = Some(name.into());
        pod
    }

    fn set(namespaces: &[&str]) -> BTreeSet<String> {
        namespaces.iter().map(|n| (*n).to_owned()).collect()
    }

    /// What an event is, for comparing: the kind and the pod's namespace/name.
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

    /// A pod scope fed by fake watches, one per namespace it starts watching, and the store it fills.
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
            let start = move |ns: &str| {
                let (tx, rx) = mpsc::unbounded();
                starts.lock().unwrap().push((ns.to_owned(), tx));
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

        /// The next `n` events.
        async fn take(&mut self, n: usize) -> Vec<String> {
            let mut events = Vec::new();
            for _ in 0..n {
                events.push(self.next().await);
            }
            events
        }

        /// Sends to the latest watch of namespace `ns`.
        fn send(&self, ns: &str, events: impl IntoIterator<Item = Event<SlimPod>>) {
            let sent = self.sent.lock().unwrap();
            let (_, tx) = sent.iter().rev().find(|(n, _)| n == ns).expect("a watch of that namespace");
            for event in events {
                tx.unbounded_send(Ok(event)).unwrap();
            }
        }

        fn want(&self, namespaces: &[&str]) -> bool {
            self.scope.want(|| set(namespaces))
        }

        /// The namespaces of the watches started, in order.
        fn watches(&self) -> Vec<String> {
            self.sent.lock().unwrap().iter().map(|(ns, _)| ns.clone()).collect()
        }

        /// The namespaces of the watches still running.
        fn running(&self) -> Vec<String> {
            (self.sent.lock().unwrap().iter())
                .filter(|(_, tx)| !tx.is_closed())
                .map(|(ns, _)| ns.clone())
                .collect()
        }

        async fn covered(&self, namespaces: &[&str]) -> bool {
            self.scope.covered(&set(namespaces), Duration::ZERO).await
        }

        fn cached(&self) -> Vec<String> {
            let mut pods: Vec<String> = (self.store.state().iter())
                .map(|p| format!("{}/{}", p.namespace().unwrap(), p.name_any()))
                .collect();
            pods.sort();
            pods
        }

        /// Completes a first list of namespace `ns` holding `pods`, which come out as Applies.
        async fn list(&mut self, ns: &str, pods: &[&str]) {
            self.send(ns, [Event::Init]);
            self.send(ns, pods.iter().map(|p| Event::InitApply(pod(ns, p))));
            assert_eq!(self.next().await, "nothing", "nothing passes before the list is complete");
            assert!(!self.covered(&[ns]).await, "not covered before the list is complete");
            assert!(self.cached().iter().all(|p| !p.starts_with(&format!("{ns}/"))), "not in the store yet");
            self.send(ns, [Event::InitDone]);
            let applied: Vec<String> = pods.iter().map(|p| format!("Apply {ns}/{p}")).collect();
            assert_eq!(self.take(pods.len()).await, applied);
            assert!(self.covered(&[ns]).await, "covered once listed");
            for p in pods {
                assert!(self.cached().contains(&format!("{ns}/{p}")), "covered means in the store");
            }
        }
    }

    /// No watch while no namespace is wanted; one watch for a wanted namespace; its list in the store whole,
    /// and covered, once complete; then its changes pass.
    #[tokio::test(start_paused = true)]
    async fn watches_only_the_wanted_namespaces() {
        let mut rig = Rig::new();
        assert_eq!(rig.next().await, "nothing", "nothing wanted, nothing watched");
        assert!(rig.watches().is_empty());
        assert!(rig.covered(&[]).await, "nothing wanted is covered at once");
        assert!(rig.want(&["a"]));
        assert_eq!(rig.next().await, "nothing");
        assert_eq!(rig.watches(), ["a"]);
        rig.list("a", &["p1", "p2"]).await;
        assert!(!rig.want(&["a"]), "the same set is no change");
        assert!(rig.scope.wants("a") && !rig.scope.wants("b"));
        assert!(!rig.covered(&["a", "b"]).await);
        rig.send("a", [Event::Apply(pod("a", "p3")), Event::Delete(pod("a", "p1"))]);
        assert_eq!(rig.take(2).await, ["Apply a/p3", "Delete a/p1"]);
        assert_eq!(rig.cached(), ["a/p2", "a/p3"]);
        assert_eq!(rig.watches(), ["a"], "one watch all along");
    }

    /// A namespace joining the scope lists alone: the watches of the others go on, their pods stay cached and
    /// covered, and nothing of theirs is listed again.
    #[tokio::test(start_paused = true)]
    async fn a_joining_namespace_lists_alone() {
        let mut rig = Rig::new();
        rig.want(&["a"]);
        assert_eq!(rig.next().await, "nothing");
        rig.list("a", &["p1"]).await;
        assert!(rig.want(&["a", "b"]));
        assert_eq!(rig.next().await, "nothing");
        assert_eq!(rig.watches(), ["a", "b"], "one new watch, for b only");
        assert!(rig.covered(&["a"]).await && !rig.covered(&["b"]).await);
        rig.send("a", [Event::Apply(pod("a", "p3"))]);
        assert_eq!(rig.next().await, "Apply a/p3", "a's watch goes on meanwhile");
        rig.list("b", &["p2"]).await;
        assert!(rig.covered(&["a", "b"]).await);
        assert_eq!(rig.cached(), ["a/p1", "a/p3", "b/p2"]);
        assert_eq!(rig.running(), ["a", "b"]);
    }

    /// A namespace leaving the scope ends its watch and takes its pods out of the store, passing nothing on;
    /// wanted again, it lists anew, and the ended watch says nothing more.
    #[tokio::test(start_paused = true)]
    async fn a_leaving_namespace_takes_its_pods_along() {
        let mut rig = Rig::new();
        rig.want(&["a", "b"]);
        assert_eq!(rig.next().await, "nothing");
        rig.list("a", &["p1"]).await;
        rig.list("b", &["p2"]).await;
        assert!(rig.want(&["b"]));
        assert_eq!(rig.next().await, "nothing", "no deletions passed on");
        assert_eq!(rig.cached(), ["b/p2"]);
        assert!(!rig.covered(&["a"]).await && rig.covered(&["b"]).await);
        assert_eq!(rig.running(), ["b"], "a's watch ended");

        assert!(rig.want(&["a", "b"]));
        assert_eq!(rig.next().await, "nothing");
        assert_eq!(rig.watches(), ["a", "b", "a"], "a new watch for a");
        rig.list("a", &["p4"]).await;
        assert_eq!(rig.cached(), ["a/p4", "b/p2"]);

        assert!(rig.want(&[]));
        assert_eq!(rig.next().await, "nothing");
        assert!(rig.cached().is_empty(), "an empty scope empties the cache");
        assert!(rig.running().is_empty(), "and watches nothing");
    }

    /// A list again on the same watch (it could not resume): the cached pods it lacks come out as deletions,
    /// and the namespace stays covered by the list it had meanwhile.
    #[tokio::test(start_paused = true)]
    async fn a_relist_deletes_what_went_away_unseen() {
        let mut rig = Rig::new();
        rig.want(&["a"]);
        assert_eq!(rig.next().await, "nothing");
        rig.list("a", &["p1", "p2"]).await;
        rig.send("a", [Event::Init, Event::InitApply(pod("a", "p2")), Event::InitApply(pod("a", "p5"))]);
        assert_eq!(rig.next().await, "nothing");
        assert!(rig.covered(&["a"]).await, "the earlier list still covers a");
        assert_eq!(rig.cached(), ["a/p1", "a/p2"]);
        rig.send("a", [Event::InitDone]);
        assert_eq!(rig.take(3).await, ["Delete a/p1", "Apply a/p2", "Apply a/p5"]);
        assert_eq!(rig.cached(), ["a/p2", "a/p5"]);
    }

    /// A watch's error is passed on, and its namespace's watch goes on.
    #[tokio::test(start_paused = true)]
    async fn errors_pass_and_the_watch_goes_on() {
        let mut rig = Rig::new();
        rig.want(&["a"]);
        assert_eq!(rig.next().await, "nothing");
        rig.sent.lock().unwrap()[0].1.unbounded_send(Err(watcher::Error::NoResourceVersion)).unwrap();
        assert!(rig.next().await.starts_with("Err "));
        rig.list("a", &["p1"]).await;
    }

    /// With one permit, a second namespace's list waits until the first's is complete, and a failed list gives
    /// its permit back.
    #[tokio::test(start_paused = true)]
    async fn lists_take_turns() {
        let gate = Arc::new(Semaphore::new(1));
        let list = |ns: &str| -> Events {
            futures::stream::iter([Ok(Event::Init), Ok(Event::InitApply(pod(ns, "p"))), Ok(Event::InitDone)])
                .boxed()
        };
        async fn next(events: &mut Events) -> String {
            label(tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap_or(None))
        }
        let mut a = in_turn(list("a"), gate.clone());
        let mut b = in_turn(list("b"), gate.clone());
        assert_eq!(next(&mut a).await, "Init");
        let b_first = tokio::spawn(async move { (next(&mut b).await, b) });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!b_first.is_finished(), "b must not start listing while a lists");
        assert_eq!(next(&mut a).await, "InitApply a/p");
        assert_eq!(next(&mut a).await, "InitDone");
        let (first, mut b) = b_first.await.unwrap();
        assert_eq!(first, "Init");
        assert_eq!(gate.available_permits(), 0, "b holds the permit while it lists");
        assert_eq!(next(&mut b).await, "InitApply b/p");
        assert_eq!(next(&mut b).await, "InitDone");
        assert_eq!(gate.available_permits(), 1);

        let failing: Events =
            futures::stream::iter([Ok(Event::Init), Err(watcher::Error::NoResourceVersion)]).boxed();
        let mut c = in_turn(failing, gate.clone());
        assert_eq!(next(&mut c).await, "Init");
        assert_eq!(gate.available_permits(), 0);
        assert!(next(&mut c).await.starts_with("Err "));
        assert_eq!(gate.available_permits(), 1);
    }
}
