//! The pod cache's scope: only the pods of namespaces that hold a pod-targeted binding are watched and kept.
//!
//! A binding selects pods of its own namespace only, so pods elsewhere are never read; caching every pod of a
//! large cluster would cost memory in proportion to the cluster instead of to what the operator serves. The pod
//! watch stays cluster-wide (one connection however many namespaces) and drops out-of-scope events before the
//! cache; when the set of namespaces changes it starts over with a fresh list, which the reflector swaps in
//! whole. kube-runtime has no watcher whose scope can change while it runs, hence this small stream.

use std::{collections::BTreeSet, time::Duration};

use futures::{Stream, StreamExt, stream::BoxStream};
use kube::{
    ResourceExt,
    runtime::{reflector::store::Writer, watcher},
};
use tokio::sync::watch;
use tracing::info;

use super::slim::SlimPod;

/// How long the namespace set must stay unchanged before the watch starts over: creating bindings in several
/// new namespaces at once (a Helm release, a test suite) costs one new list, not one per namespace.
const RESCOPE_SETTLE: Duration = Duration::from_millis(200);

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
    /// Sets the namespaces to cache pods of; returns whether that changed anything.
    pub fn want(&self, namespaces: BTreeSet<String>) -> bool {
        self.wanted.send_if_modified(|current| {
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
            events: None,
            namespaces: BTreeSet::new(),
            wanted,
            covered: self.covered.clone(),
            watch,
            writer,
        };
        scoped.rescope(namespaces);
        futures::stream::unfold(scoped, |mut s| async move {
            let event = s.next().await?;
            Some((event, s))
        })
    }
}

/// The state of the scoped pod stream.
struct Scoped<F> {
    /// The running watch, if any namespace is wanted.
    events: Option<BoxStream<'static, Result<watcher::Event<SlimPod>, watcher::Error>>>,
    /// The namespaces the running watch passes on.
    namespaces: BTreeSet<String>,
    wanted: watch::Receiver<BTreeSet<String>>,
    covered: watch::Sender<BTreeSet<String>>,
    watch: F,
    writer: Writer<SlimPod>,
}

impl<F> Scoped<F>
where
    F: Fn() -> BoxStream<'static, Result<watcher::Event<SlimPod>, watcher::Error>>,
{
    /// Starts over for `namespaces`: a new watch (so a new complete list), or none and an emptied cache.
    fn rescope(&mut self, namespaces: BTreeSet<String>) {
        info!(namespaces = namespaces.len(), "Pod watch scope");
        self.events = if !namespaces.is_empty() {
            Some((self.watch)())
        } else if self.events.is_some() {
            // Empty the cache: the writer starts a new buffer on Init and swaps it in on InitDone.
            Some(futures::stream::iter([Ok(watcher::Event::Init), Ok(watcher::Event::InitDone)]).boxed())
        } else {
            None
        };
        // Until the new list is complete the cache still holds the old one (the reflector swaps lists whole):
        // stale for a moment, but complete for the namespaces in both scopes, so those stay covered.
        self.covered.send_modify(|covered| covered.retain(|ns| namespaces.contains(ns)));
        self.namespaces = namespaces;
    }

    /// The next event to pass on; `None` when the operator is shutting down.
    async fn next(&mut self) -> Option<Result<watcher::Event<SlimPod>, watcher::Error>> {
        loop {
            let Self { events, wanted, .. } = self;
            let event = async {
                match events.as_mut() {
                    Some(e) => e.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = wanted.changed() => {
                    changed.ok()?;
                    // Let a burst of changes settle into one new list.
                    while let Ok(Ok(())) = tokio::time::timeout(RESCOPE_SETTLE, wanted.changed()).await {}
                    let namespaces = wanted.borrow_and_update().clone();
                    if namespaces != self.namespaces {
                        self.rescope(namespaces);
                    }
                }
                event = event => match event {
                    // A watch never ends; the stream that empties the cache does.
                    None => self.events = None,
                    Some(event) if in_scope(&event, &self.namespaces) => {
                        if let Ok(e) = &event {
                            self.writer.apply_watcher_event(e);
                        }
                        if let Ok(watcher::Event::InitDone) = &event {
                            self.covered.send_replace(self.namespaces.clone());
                        }
                        return Some(event);
                    }
                    Some(_) => {}
                },
            }
        }
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

    /// No watch while no namespace is wanted; a new list whenever the set changes; events of other
    /// namespaces dropped; coverage only once a list is complete; an emptied scope empties the cache.
    #[tokio::test(start_paused = true)]
    async fn watches_only_the_wanted_namespaces() {
        let scope = PodScope::default();
        let sent: Sent = Arc::default();
        let starts = sent.clone();
        let (store, writer) = kube::runtime::reflector::store::<SlimPod>();
        let cached = || {
            let mut pods: Vec<String> = store
                .state()
                .iter()
                .map(|p| format!("{}/{}", p.namespace().unwrap(), p.name_any()))
                .collect();
            pods.sort();
            pods
        };
        let mut events = scope
            .events(
                move || {
                    let (tx, rx) = mpsc::unbounded();
                    starts.lock().unwrap().push(tx);
                    rx.boxed()
                },
                writer,
            )
            .boxed();
        let next = async |events: &mut BoxStream<'static, Result<Event<SlimPod>, watcher::Error>>| {
            match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
                Ok(event) => label(event),
                Err(_) => "nothing".into(),
            }
        };
        let send =
            |event: Event<SlimPod>| sent.lock().unwrap().last().unwrap().unbounded_send(Ok(event)).unwrap();

        assert_eq!(next(&mut events).await, "nothing", "nothing wanted, nothing watched");
        assert!(sent.lock().unwrap().is_empty());
        assert!(scope.covered(&BTreeSet::new(), Duration::ZERO).await, "nothing wanted is covered at once");

        assert!(scope.want(set(&["a"])));
        assert!(!scope.want(set(&["a"])), "the same set is no change");
        assert!(scope.wants("a") && !scope.wants("b"));
        assert_eq!(next(&mut events).await, "nothing");
        assert_eq!(sent.lock().unwrap().len(), 1, "one watch once the set settled");
        for event in
            [Event::Init, Event::InitApply(pod("a", "p1")), Event::InitApply(pod("b", "p2")), Event::InitDone]
        {
            send(event);
        }
        assert_eq!(next(&mut events).await, "Init");
        assert_eq!(next(&mut events).await, "InitApply a/p1");
        assert!(
            !scope.covered(&set(&["a"]), Duration::ZERO).await,
            "not covered before the list is complete"
        );
        assert!(cached().is_empty(), "nothing in the store before the list is complete");
        assert_eq!(next(&mut events).await, "InitDone", "b/p2 is out of scope");
        assert!(scope.covered(&set(&["a"]), Duration::ZERO).await);
        assert_eq!(cached(), ["a/p1"], "covered means in the store");
        assert!(!scope.covered(&set(&["a", "b"]), Duration::ZERO).await);

        send(Event::Apply(pod("b", "x")));
        send(Event::Delete(pod("a", "p1")));
        assert_eq!(next(&mut events).await, "Delete a/p1");
        assert!(cached().is_empty());

        assert!(scope.want(set(&["a", "b"])));
        assert_eq!(next(&mut events).await, "nothing");
        assert_eq!(sent.lock().unwrap().len(), 2, "a new watch for the new set");
        assert!(scope.covered(&set(&["a"]), Duration::ZERO).await, "the old list still covers a");
        assert!(!scope.covered(&set(&["b"]), Duration::ZERO).await, "b is covered once the new list is done");
        send(Event::Init);
        send(Event::InitApply(pod("b", "p2")));
        send(Event::InitDone);
        let mut listed = Vec::new();
        while listed.last().map(String::as_str) != Some("InitDone") {
            listed.push(next(&mut events).await);
        }
        assert_eq!(listed, ["Init", "InitApply b/p2", "InitDone"]);
        assert!(scope.covered(&set(&["a", "b"]), Duration::ZERO).await);
        assert_eq!(cached(), ["b/p2"]);

        assert!(scope.want(BTreeSet::new()));
        assert_eq!(next(&mut events).await, "Init", "an empty scope empties the cache");
        assert_eq!(next(&mut events).await, "InitDone");
        assert!(cached().is_empty(), "emptied");
        assert_eq!(next(&mut events).await, "nothing");
        assert_eq!(sent.lock().unwrap().len(), 2, "and watches nothing");
    }
}
