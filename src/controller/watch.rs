//! The watch streams that feed the controller: trimmed nodes, the pods in scope and the metadata of Secrets,
//! each with its cache, filtered down to the changes that can move an instance.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::{StreamExt, channel::mpsc, stream::BoxStream};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::ListParams,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::Semaphore;
use tracing::info;

use super::{
    pods::{self, PodScope},
    settle::SignalClock,
    slim::{SlimNode, SlimPod},
};
use crate::api::DEREGISTERED_AT_ANNOTATION;

/// A stream of changed objects for `Controller::watches_stream`.
pub type Changes<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// Metadata of a Secret, as the credentials cache keeps it.
pub type SecretMeta = PartialObjectMeta<Secret>;

/// Metadata of a Service (a change wakes the bindings whose listeners take a port from it).
pub type ServiceMeta = PartialObjectMeta<Service>;

/// The caches and the change streams behind them.
pub struct Watches {
    /// Trimmed cache of every node.
    pub nodes: Store<SlimNode>,
    /// Trimmed cache of the pods of the namespaces in `pod_scope`.
    pub pods: Store<SlimPod>,
    /// Which namespaces' pods the pod cache holds.
    pub pod_scope: Arc<PodScope>,
    /// Name and resourceVersion of the Secrets in scope, when the operator may list them: a changed Secret
    /// wakes the bindings that use it, and credentials are read again only when its version changed.
    pub secrets: Option<Store<SecretMeta>>,
    /// Node changes.
    pub node_changes: Changes<SlimNode>,
    /// Pod changes.
    pub pod_changes: Changes<SlimPod>,
    /// Secret changes (empty when Secrets are not watched).
    pub secret_changes: Changes<SecretMeta>,
    /// Service changes (empty when Services are not watched).
    pub service_changes: Changes<ServiceMeta>,
    /// Fires when a new list lacks objects seen before: every binding must look again.
    pub gone: mpsc::UnboundedReceiver<()>,
}

/// How many namespaces' pod watches may list at once: the operator holds at most this many list answers in
/// memory. Not tuned: at the large benchmark size the restart (28 s for 250 namespaces) is most likely bound
/// by these lists, so a larger number trades memory for restart time.
const POD_LISTS_AT_ONCE: usize = 4;

/// Starts the watches of `namespace` (all namespaces when `None`; nodes are cluster-scoped), noting signal
/// times in `signals`.
pub async fn start(client: &Client, namespace: Option<&str>, signals: &Arc<SignalClock>) -> Watches {
    // Lists that come back without objects seen before ask for every binding to be looked at again.
    let (gone_tx, gone) = mpsc::unbounded::<()>();
    let on_gone = move || {
        let _ = gone_tx.unbounded_send(());
    };
    let (nodes, node_writer) = reflector::store();
    let node_signals = signals.clone();
    let node_changes = changes_only(
        reflector::reflector(
            node_writer,
            watcher(Api::<SlimNode>::all(client.clone()), watcher::Config::default()).modify(forget_version),
        ),
        move |node: &SlimNode| node_signals.saw(&node.name_any()),
        on_gone.clone(),
    )
    .default_backoff()
    .touched_objects()
    .boxed();

    let pod_client = client.clone();
    let pod_scope = Arc::new(PodScope::default());
    let (pods, pod_writer) = reflector::store();
    let pod_signals = signals.clone();
    // One watch per wanted namespace, each backing off on its own: one namespace's errors (say, a Role
    // missing there) must not hold back the pods of the others.
    // At most POD_LISTS_AT_ONCE of them list at a time, for the memory a list answer takes.
    let lists = Arc::new(Semaphore::new(POD_LISTS_AT_ONCE));
    let pod_watch = move |ns: &str| {
        let events = watcher(Api::<SlimPod>::namespaced(pod_client.clone(), ns), watcher::Config::default())
            .modify(forget_version)
            .default_backoff()
            .boxed();
        pods::in_turn(events, lists.clone())
    };
    let pod_changes = changes_only(
        pod_scope.events(pod_watch, pod_writer),
        move |pod: &SlimPod| {
            if let Some(node) = pod.node_name.as_deref() {
                pod_signals.saw(node);
            }
        },
        on_gone,
    )
    .touched_objects()
    .boxed();

    let (secrets, secret_changes) = secret_watch(client, namespace).await;
    let service_changes = service_watch(client, namespace).await;
    Watches {
        nodes,
        pods,
        pod_scope,
        secrets,
        node_changes,
        pod_changes,
        secret_changes,
        service_changes,
        gone,
    }
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A metadata-only watch of the Secrets in scope, if the operator may list them (the chart grants it, unless
/// Secrets are limited to listed namespaces): without it, credentials are read on every reconcile and a fixed
/// Secret is noticed at the binding's next retry.
async fn secret_watch(
    client: &Client,
    namespace: Option<&str>,
) -> (Option<Store<SecretMeta>>, Changes<SecretMeta>) {
    let why = "credentials are read on every reconcile";
    metadata_watch(client, namespace, "Secrets", why).await
}

/// A metadata-only watch of the Services in scope, so that a binding whose listener takes its port from a
/// Service follows a changed NodePort (any change bumps the resourceVersion); without list/watch permission a
/// change is noticed at the next resync.
async fn service_watch(client: &Client, namespace: Option<&str>) -> Changes<ServiceMeta> {
    let why = "a changed NodePort is noticed at the next resync";
    metadata_watch(client, namespace, "Services", why).await.1
}

/// A metadata-only watch of one kind, if the operator may list it: its store (names and versions) and its
/// changes.
async fn metadata_watch<K>(
    client: &Client,
    namespace: Option<&str>,
    what: &str,
    without: &str,
) -> (Option<Store<PartialObjectMeta<K>>>, Changes<PartialObjectMeta<K>>)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
    K::DynamicType: Default + Clone + Eq + std::hash::Hash,
    PartialObjectMeta<K>: Resource<DynamicType = K::DynamicType, Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
{
    // NB: an Api of PartialObjectMeta makes metadata-only requests.
    let api: Api<PartialObjectMeta<K>> = scoped(client, namespace);
    if let Err(e) = api.list(&ListParams::default().limit(1)).await {
        info!(error = %e, "Not watching {what} (no list/watch permission?); {without}");
        return (None, futures::stream::empty().boxed());
    }
    let (store, writer) = reflector::store();
    let changes = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).modify(|s: &mut PartialObjectMeta<K>| {
            // Only the name and the version are read.
            let meta = &mut s.metadata;
            (meta.managed_fields, meta.annotations, meta.labels, meta.owner_references) =
                (None, None, None, None);
        }),
    )
    .default_backoff()
    .filter_map(|event| {
        // Changes only: a (re-)list of every object in scope must not wake every binding at once (at start, such
        // wake-ups race the first reconcile of new bindings, whose finalizer the cache does not show yet).
        std::future::ready(match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => Some(Ok(o)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    })
    .boxed();
    (Some(store), changes)
}

/// Passes on deletions and the updates that change what membership reads (the trimmed object), and drops the
/// rest: node heartbeats and pod status churn would otherwise wake every binding that looks at those objects.
/// The stores behind it still see every event.
/// `on_change` is told about the changes that are signals (see [`ChangeFilter`]); `on_gone` when a new list
/// (after a watch could not resume) lacks objects seen before: they went away without a
/// Delete event, so no binding was told, and every binding must look again.
fn changes_only<K, S>(
    events: S,
    on_change: impl Fn(&K) + Send + 'static,
    on_gone: impl Fn() + Send + 'static,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + serde::Serialize + Clone + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let filter = Mutex::new(ChangeFilter::default());
    events.filter(move |event| {
        let seen = match event {
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                filter.lock().map(|mut f| f.applied(obj)).unwrap_or(Seen::Signal).then_signal(obj, &on_change)
            }
            Ok(watcher::Event::Delete(obj)) => {
                filter.lock().map(|mut f| f.deleted(obj)).unwrap_or(Seen::Signal).then_signal(obj, &on_change)
            }
            Ok(watcher::Event::Init) => {
                if let Ok(mut f) = filter.lock() {
                    f.listing();
                }
                Seen::Change
            }
            Ok(watcher::Event::InitDone) => {
                if filter.lock().map(|mut f| f.listed()).unwrap_or(true) {
                    on_gone();
                }
                Seen::Change
            }
            Err(_) => Seen::Change,
        };
        std::future::ready(seen != Seen::Nothing)
    })
}

/// What an event about an object amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Nothing membership reads changed.
    Nothing,
    /// A change, but not a signal: the object was already leaving (deletionTimestamp set), so it stopped
    /// counting when that was seen and nothing it does until it is gone can change membership again. Kwok or a
    /// kubelet finishing a pod's termination must not restart the settle time of the signal that mattered.
    Change,
    /// A change that can move an instance in or out: the settle time counts from here.
    Signal,
}

impl Seen {
    fn then_signal<K>(self, obj: &K, on_change: &impl Fn(&K)) -> Self {
        if self == Self::Signal {
            on_change(obj);
        }
        self
    }
}

/// Remembers, per object, a digest of what membership reads and whether the object was already leaving.
/// Objects are keyed by a 64-bit hash of namespace and name, so 20,000 pods cost no strings. A collision (odds
/// about 1e-11 at that size) can never hide a change, because the digests cover the names: at worst it wakes
/// a binding needlessly or counts a signal as a plain change, which only shortens a settle wait.
#[derive(Default)]
struct ChangeFilter {
    seen: HashMap<u64, (u64, bool)>,
    /// While a list is under way: what was seen before it and has not been listed again yet.
    before_list: Option<HashMap<u64, (u64, bool)>>,
}

impl ChangeFilter {
    fn applied<K: Resource + serde::Serialize + Clone>(&mut self, obj: &K) -> Seen {
        let key = object_key(obj);
        let now = (content_digest(obj), obj.meta().deletion_timestamp.is_some());
        let before =
            self.seen.insert(key, now).or_else(|| self.before_list.as_mut().and_then(|b| b.remove(&key)));
        match before {
            Some(before) if before.0 == now.0 => Seen::Nothing,
            Some((_, true)) => Seen::Change,
            _ => Seen::Signal,
        }
    }

    fn deleted<K: Resource>(&mut self, obj: &K) -> Seen {
        match self.seen.remove(&object_key(obj)) {
            Some((_, true)) => Seen::Change,
            _ => Seen::Signal,
        }
    }

    /// A (re-)list begins: objects are compared with what was seen before it as they come.
    fn listing(&mut self) {
        let mut before = std::mem::take(&mut self.seen);
        // A list that started over before it finished: what it had listed counts as seen before, too.
        before.extend(self.before_list.take().unwrap_or_default());
        self.before_list = Some(before);
    }

    /// The list is complete; true if objects seen before it were not in it (they are gone).
    fn listed(&mut self) -> bool {
        self.before_list.take().is_some_and(|gone| !gone.is_empty())
    }
}

fn object_key<K: Resource>(obj: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&obj.meta().namespace, &obj.meta().name).hash(&mut h);
    h.finish()
}

/// A digest of an object without its resourceVersion and without the operator's own drained mark, so that only
/// changes by others count (the mark is an output of membership, never an input).
fn content_digest<K: Resource + serde::Serialize + Clone>(obj: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut obj = obj.clone();
    let meta = obj.meta_mut();
    meta.resource_version = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(DEREGISTERED_AT_ANNOTATION);
        // A node whose only annotation was the mark must hash like one that never had annotations.
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&obj).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Drops the resourceVersion of a cached node or pod once the watcher has taken it (it resumes from the
/// newest one it saw): nothing reads it from the cache, and the store would otherwise keep it twice per object.
fn forget_version<K: Resource>(obj: &mut K) {
    obj.meta_mut().resource_version = None;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::Time};

    use super::*;

    fn node(annotations: &[(&str, &str)]) -> Node {
        let mut node = Node::default();
        node.metadata.name = Some("node-a".into());
        node.metadata.resource_version = Some("1".into());
        if !annotations.is_empty() {
            node.metadata.annotations =
                Some(annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        }
        node
    }

    /// The operator's own drained mark is not a change, whether or not the node had other annotations; a
    /// regression here made every mark look like a second changed node and slowed the next signal down.
    #[test]
    fn the_drained_mark_does_not_change_the_digest() {
        let mark = (DEREGISTERED_AT_ANNOTATION, "2026-11-29T07:00:00Z");
        let other = ("team", "web");
        assert_eq!(content_digest(&node(&[])), content_digest(&node(&[mark])));
        assert_eq!(content_digest(&node(&[other])), content_digest(&node(&[other, mark])));
        let mut newer = node(&[mark]);
        newer.metadata.resource_version = Some("2".into());
        assert_eq!(content_digest(&node(&[])), content_digest(&newer));
        assert_ne!(content_digest(&node(&[])), content_digest(&node(&[other])));
    }

    /// Only changes that can move an instance are signals; a leaving object's later updates and its deletion
    /// are changes (a reconcile) but not signals. An object deleted at once (no update with a deletionTimestamp
    /// seen first) is a signal.
    #[test]
    fn a_leaving_object_signals_once() {
        let mut f = ChangeFilter::default();
        let a = node(&[]);
        assert_eq!(f.applied(&a), Seen::Signal, "first sight");
        assert_eq!(f.applied(&a), Seen::Nothing, "same content");
        let mut leaving = a.clone();
        leaving.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(f.applied(&leaving), Seen::Signal, "starts leaving");
        let mut later = leaving.clone();
        later.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
        assert_eq!(f.applied(&later), Seen::Change, "changes while leaving");
        assert_eq!(f.deleted(&later), Seen::Change, "gone after leaving");
        assert_eq!(f.applied(&a), Seen::Signal, "a new object of the same name");
        assert_eq!(f.deleted(&a), Seen::Signal, "deleted at once");
        assert_eq!(f.deleted(&a), Seen::Signal, "deleted, never seen");
    }

    /// A new list compares with what was seen before it, and tells when objects went away unseen (deleted
    /// while the watch was down: no Delete event will ever come for them).
    #[test]
    fn a_new_list_tells_what_went_away_unseen() {
        let mut f = ChangeFilter::default();
        let (a, mut b) = (node(&[]), node(&[]));
        b.metadata.name = Some("node-b".into());
        f.listing();
        assert_eq!((f.applied(&a), f.applied(&b)), (Seen::Signal, Seen::Signal));
        assert!(!f.listed(), "the first list");

        f.listing();
        assert_eq!(f.applied(&a), Seen::Nothing, "unchanged across the new list");
        assert!(f.listed(), "b is gone");

        f.listing();
        f.listing(); // started over before it was done
        assert_eq!(f.applied(&a), Seen::Nothing);
        assert!(!f.listed(), "nothing went away");
        assert_eq!(f.applied(&b), Seen::Signal, "b is back: new");
    }
}
