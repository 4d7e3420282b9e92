//! The operator: shared context, the watches that feed it, and the kube-runtime `Controller` that drives
//! [`reconcile::reconcile`].

pub mod error;
pub mod http;
pub mod index;
pub mod leader;
pub mod membership;
pub mod plan;
pub mod pods;
mod polls;
pub mod reconcile;
pub mod slim;
pub mod status;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        Controller, WatchStreamExt,
        controller::Config as ControllerConfig,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{info, warn};

use pods::PodScope;
pub use polls::PollSchedule;
use slim::{SlimNode, SlimPod};

use crate::{
    api::{ClbBackendBinding, ClbBackendBindingStatus, DEREGISTERED_AT_ANNOTATION, MANAGER},
    clb::{ClbClient, ClientConfig, Credentials, PollBackoff},
    metrics::Metrics,
};
use index::BindingIndex;

type Key = ObjectRef<ClbBackendBinding>;

/// Tunables of the reconciler.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often an unchanged binding is looked at again (drift and credential rotation).
    pub resync: Duration,
    /// Task polling schedule before task durations are learnt.
    pub poll: PollBackoff,
    /// Quiet time before submitting after a change (see `--settle`).
    pub settle: Duration,
}

/// What the watches maintain.
pub struct Caches {
    /// The controller's cache of bindings (to see which other bindings own a node).
    pub bindings: Store<ClbBackendBinding>,
    /// Trimmed cache of every node.
    pub nodes: Store<SlimNode>,
    /// Trimmed cache of the pods in scope.
    pub pods: Store<SlimPod>,
    /// Which namespaces' pods the pod cache holds.
    pub pod_scope: Arc<PodScope>,
    /// When a change about each node was last seen.
    pub signals: Arc<SignalClock>,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The bindings in scope (the controller's own cache).
    pub bindings: Store<ClbBackendBinding>,
    /// Trimmed cache of every node.
    pub nodes: Store<SlimNode>,
    /// Trimmed cache of the pods of the namespaces in `pod_scope`.
    pub pods: Store<SlimPod>,
    /// Which namespaces' pods the pod cache holds: those with a pod-targeted binding.
    pub pod_scope: Arc<PodScope>,
    /// Which bindings each node and pod event concerns.
    pub index: BindingIndex,
    /// CLB client: one HTTP client and one set of rate limiters; region and credentials are set per binding.
    pub clb: ClbClient,
    /// The operator's own credentials, used by bindings without a Secret.
    pub default_credentials: Option<Credentials>,
    /// Event publisher; one shared recorder so that repeated events aggregate.
    pub recorder: Recorder,
    /// Tunables.
    pub settings: Settings,
    /// When each running task is next polled.
    pub polls: PollSchedule,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// When the operator last saw a change about each node (the node itself or a pod on it): the "signal" time
    /// deregistration latency is measured from.
    pub signals: Arc<SignalClock>,
    /// For running Deregister tasks: when the signal behind each of its instances was seen.
    deregister_signals: Mutex<HashMap<u64, Vec<Instant>>>,
    written: Mutex<HashMap<Key, Written>>,
    failures: Mutex<HashMap<Key, u32>>,
    /// True once the node and pod caches hold a full list; reconciles wait for it.
    pub caches_synced: tokio::sync::watch::Sender<bool>,
    /// Since when each binding has been holding back a submission for changes to settle.
    settling: Mutex<HashMap<Key, Instant>>,
    reported: Mutex<HashMap<Key, HashSet<String>>>,
}

/// The status this operator last wrote for a binding, and the resourceVersion that write produced.
struct Written {
    resource_version: Option<String>,
    status: ClbBackendBindingStatus,
}

impl Context {
    /// Builds a context around the given caches and clients.
    pub fn new(
        client: Client,
        caches: Caches,
        clb: ClbClient,
        default_credentials: Option<Credentials>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let Caches { bindings, nodes, pods, pod_scope, signals } = caches;
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            bindings,
            nodes,
            pods,
            pod_scope,
            index: BindingIndex::default(),
            clb,
            default_credentials,
            polls: PollSchedule::new(settings.poll),
            settings,
            metrics,
            signals,
            deregister_signals: Mutex::default(),
            written: Mutex::default(),
            failures: Mutex::default(),
            settling: Mutex::default(),
            caches_synced: tokio::sync::watch::Sender::new(false),
            reported: Mutex::default(),
        }
    }

    /// The binding's status as the operator knows it. A reconcile can start before the watch has delivered the
    /// operator's own last status write (a requeue timer, another event); acting on that stale copy would
    /// submit a task twice or lose a requestId. So the last written status wins until the cache has caught up.
    pub fn current_status(&self, binding: &ClbBackendBinding) -> ClbBackendBindingStatus {
        let from_cache = binding.status.clone().unwrap_or_default();
        let Ok(mut written) = self.written.lock() else {
            return from_cache;
        };
        let key = ObjectRef::from_obj(binding);
        let Some(w) = written.get(&key) else {
            return from_cache;
        };
        // resourceVersions are opaque by contract, but every etcd-backed API server issues increasing integers;
        // where they do not parse, equality is the only safe test.
        let cache_is_older =
            match (rv_number(binding.resource_version()), rv_number(w.resource_version.clone())) {
                (Some(cached), Some(ours)) => cached < ours,
                _ => binding.resource_version() != w.resource_version,
            };
        if cache_is_older {
            return w.status.clone();
        }
        written.remove(&key);
        from_cache
    }

    fn remember_written(
        &self,
        key: &Key,
        resource_version: Option<String>,
        status: &ClbBackendBindingStatus,
    ) {
        if let Ok(mut w) = self.written.lock() {
            w.insert(key.clone(), Written { resource_version, status: status.clone() });
        }
    }

    /// Exponential back-off per binding for reconciles that keep failing: 1 s doubling up to 5 min.
    pub fn failure_backoff(&self, key: &Key) -> Duration {
        let Ok(mut f) = self.failures.lock() else {
            return Duration::from_secs(5);
        };
        let n = f.entry(key.clone()).or_default();
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    fn failures_reset(&self, key: &Key) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// How long `key` should still hold back submissions: until no change to `nodes` has been seen for the
    /// settle time, or [`BURST_SETTLE`] times that during a burst (several nodes changed lately, cluster-wide: a
    /// mass drain reaches the API server over several hundred milliseconds, and its first event looks isolated
    /// to the binding it lands on), but no longer than [`MAX_SETTLE`] settle times in all, so a node that
    /// changes constantly cannot starve the others. `None`: submit now.
    fn settle_wait<'n>(&self, key: &Key, nodes: impl IntoIterator<Item = &'n String>) -> Option<Duration> {
        let settle = self.settings.settle;
        let window = settle.saturating_mul(MAX_SETTLE);
        let burst_quiet = settle.saturating_mul(BURST_SETTLE);
        let recent: Vec<Instant> =
            nodes.into_iter().filter_map(|n| self.signals.last(n)).filter(|t| t.elapsed() < window).collect();
        let quiet = recent.iter().map(|t| t.elapsed()).min().unwrap_or(window);
        let burst = recent.len() > 1 || self.signals.nodes_changed_within(burst_quiet) > 1;
        let needed = if burst { burst_quiet } else { settle };
        let mut settling = self.settling.lock().ok()?;
        if quiet >= needed {
            settling.remove(key);
            return None;
        }
        let since = *settling.entry(key.clone()).or_insert_with(Instant::now);
        if since.elapsed() >= window {
            settling.remove(key);
            return None;
        }
        Some(needed - quiet)
    }

    /// Remembers when the signals behind a submitted Deregister task were seen.
    fn deregister_submitted(&self, request_id: u64, signals: Vec<Instant>) {
        if let Ok(mut d) = self.deregister_signals.lock() {
            d.insert(request_id, signals);
        }
    }

    /// Records the deregistration latency of a finished Deregister task (if it was submitted by this process).
    fn deregister_finished(&self, request_id: u64, succeeded: bool) {
        let signals = self.deregister_signals.lock().ok().and_then(|mut d| d.remove(&request_id));
        if succeeded {
            for seen in signals.into_iter().flatten() {
                self.metrics.deregistered(seen.elapsed());
            }
        }
    }

    /// The namespaces whose pods the bindings in the cache need, leaving out `except` and bindings being
    /// deleted (their cleanup reads no pods).
    pub fn pod_namespaces(&self, except: Option<&Key>) -> BTreeSet<String> {
        self.bindings
            .state()
            .iter()
            .filter(|b| b.spec.targets.pod_selector.is_some() && b.metadata.deletion_timestamp.is_none())
            .filter(|b| except.is_none_or(|key| *key != ObjectRef::from_obj(b.as_ref())))
            .filter_map(|b| b.namespace())
            .collect()
    }

    /// Forgets everything about a binding that is going away.
    fn forget(&self, key: &Key) {
        self.pod_scope.want(|| self.pod_namespaces(Some(key)));
        self.metrics.set_binding(key.to_string(), None);
        self.index.remove(key);
        self.failures_reset(key);
        self.reported_reset(key);
        if let Ok(mut w) = self.written.lock() {
            w.remove(key);
        }
    }

    fn reported_reset(&self, key: &Key) {
        if let Ok(mut r) = self.reported.lock() {
            r.remove(key);
        }
    }

    /// Publishes an event about `binding`; a failure to publish is logged, never fatal.
    pub async fn publish(
        &self,
        binding: &ClbBackendBinding,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &binding.object_ref(&())).await {
            warn!(binding = %binding.name_any(), reason, error = %e, "Publishing an event failed");
        }
    }

    /// Publishes an event once per binding until its problems clear, for conditions seen on every reconcile.
    pub async fn publish_once(
        &self,
        binding: &ClbBackendBinding,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let fresh = self
            .reported
            .lock()
            .map(|mut r| {
                r.entry(ObjectRef::from_obj(binding)).or_default().insert(format!("{reason}:{note}"))
            })
            .unwrap_or(true);
        if fresh {
            self.publish(binding, type_, reason, action, note).await;
        }
    }
}

/// Last time a change about each node was seen.
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

    /// How many distinct nodes, cluster-wide, changed within `window`.
    pub fn nodes_changed_within(&self, window: Duration) -> usize {
        self.0.lock().map(|m| m.values().filter(|t| t.elapsed() < window).count()).unwrap_or(0)
    }
}

fn rv_number(rv: Option<String>) -> Option<u64> {
    rv?.parse().ok()
}

/// During a burst of changes a binding waits this many settle times of quiet: the 200-node drain of the
/// benchmark reaches the API server with gaps of over 100 ms between one binding's nodes on a busy 2-core
/// control plane, and each gap taken for the end means one more Deregister call.
const BURST_SETTLE: u32 = 8;

/// The longest a binding holds back, in settle times, however long changes keep coming.
const MAX_SETTLE: u32 = 30;

/// Options of `clb-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Kubeconfig file; without it, KUBECONFIG, then the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Watch bindings (and pods) in this namespace only; all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// CLB API v2 endpoint.
    #[arg(long, env = "CLB_ENDPOINT", default_value = "https://lb.api.qcloud.com/v2/index.php")]
    pub clb_endpoint: url::Url,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,
    /// Bindings reconciled at the same time.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Most instances per Register or Deregister call.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub batch_size: u16,
    /// Client-side limit of CLB requests per second, per action.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,
    /// How often an unchanged binding is looked at again.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// Quiet time a binding waits after the last change to its nodes or pods before it submits, so that a mass
    /// drain becomes a few full batches instead of many small calls (8 times this during a burst, 30 times at
    /// most).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Hold a coordination.k8s.io Lease so that only one replica reconciles (for more than one replica).
    #[arg(long, env = "LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "clb-operator")]
    pub leader_election_lease: String,
    /// How long the lease holds without renewal; a standby takes over about this long after the leader dies.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
}

/// Runs the operator until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let ready = http::Readiness::default();
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on --http-addr {}", args.http_addr))?;
    tokio::spawn(http::serve(listener, ready.clone(), metrics.clone()));

    // Held for the life of the controller; losing the lease ends the process.
    let _lease = if args.leader_elect {
        ready.set_standby();
        let settings = leader::LeaseSettings {
            namespace: args.leader_election_namespace.clone(),
            name: args.leader_election_lease.clone(),
            duration: args.lease_duration,
        };
        let guard = leader::lead(client.clone(), &settings).await?;
        ready.set_syncing();
        metrics.set_leader(true);
        Some(guard)
    } else {
        metrics.set_leader(true);
        None
    };

    let bindings: Api<ClbBackendBinding> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    bindings.list(&ListParams::default().limit(1)).await.context(
        "cannot list ClbBackendBindings; is the CRD installed? (clb-operator crd | kubectl apply -f -)",
    )?;

    let signals = Arc::new(SignalClock::default());
    // Lists that come back without objects seen before ask for every binding to be looked at again.
    let (gone_tx, gone_rx) = futures::channel::mpsc::unbounded::<()>();
    let gone = move || {
        let _ = gone_tx.unbounded_send(());
    };
    let (nodes, node_writer) = reflector::store();
    let node_signals = signals.clone();
    let node_events = changes_only(
        reflector::reflector(
            node_writer,
            watcher(Api::<SlimNode>::all(client.clone()), watcher::Config::default()).modify(forget_version),
        ),
        move |node: &SlimNode| node_signals.saw(&node.name_any()),
        gone.clone(),
    )
    .default_backoff()
    .touched_objects();
    let pod_api: Api<SlimPod> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pod_scope = Arc::new(PodScope::default());
    let (pods, pod_writer) = reflector::store();
    let pod_signals = signals.clone();
    let pod_events = changes_only(
        pod_scope.events(
            move || watcher(pod_api.clone(), watcher::Config::default()).modify(forget_version).boxed(),
            pod_writer,
        ),
        move |pod: &SlimPod| {
            if let Some(node) = pod.spec.node_name.as_deref() {
                pod_signals.saw(node);
            }
        },
        gone,
    )
    .default_backoff()
    .touched_objects();

    let default_credentials = Credentials::from_env().ok();
    if default_credentials.is_none() {
        info!("No TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY: bindings need a credentialsSecretRef");
    }
    let clb_config = ClientConfig {
        endpoint: args.clb_endpoint.clone(),
        max_batch: usize::from(args.batch_size),
        rate_limit_per_second: args.rate_limit,
        ..ClientConfig::default()
    };
    let clb = ClbClient::new(
        clb_config,
        default_credentials.clone().unwrap_or_else(|| Credentials::new("", "", None)),
    )
    .context("building the CLB client")?
    .with_observer(metrics.clb_observer());
    let settings = Settings { resync: args.resync, poll: PollBackoff::default(), settle: args.settle };
    let controller = Controller::new(bindings, watcher::Config::default().any_semantic());
    {
        let (nodes, pods) = (nodes.clone(), pods.clone());
        metrics.count_caches(Box::new(move || vec![("node", nodes.len()), ("pod", pods.len())]));
    }
    let caches = Caches { bindings: controller.store(), nodes: nodes.clone(), pods, pod_scope, signals };
    let ctx = Arc::new(Context::new(client, caches, clb, default_credentials, settings, metrics));

    {
        // NB: this task is the only waiter on the node store's readiness. kube's Store::wait_until_ready wakes
        // just the most recent of several concurrent waiters (one oneshot waker), so reconciles wait on
        // `caches_synced`, a watch channel that wakes them all. The controller is the one waiter on the
        // bindings' store and reconciles only once it is listed; pods are listed per scope (`PodScope`), and
        // the first pod-targeted reconcile scopes the pod cache from all the bindings at once.
        let (nodes, ready, synced) = (nodes.clone(), ready.clone(), ctx.caches_synced.clone());
        tokio::spawn(async move {
            if nodes.wait_until_ready().await.is_ok() {
                synced.send_replace(true);
                ready.set_ready();
                info!(nodes = nodes.len(), "Caches synced");
            }
        });
    }

    let (for_nodes, for_pods) = (ctx.clone(), ctx.clone());
    info!(namespace = ?args.namespace, endpoint = %args.clb_endpoint, "Starting the controller");
    controller
        .watches_stream(node_events, move |node| for_nodes.index.for_node(&node))
        .watches_stream(pod_events, move |pod| for_pods.index.for_pod(&pod))
        .reconcile_all_on(gone_rx)
        .with_config(ControllerConfig::default().concurrency(args.concurrency))
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "Controller event");
            }
        })
        .await;
    info!("Controller stopped");
    Ok(())
}

/// A client from `--kubeconfig`, else `KUBECONFIG`, else the in-cluster service account.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await.context("no kubeconfig and not in a cluster")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// Passes on deletions and the updates that change what membership reads (the trimmed object), and drops the
/// rest: node heartbeats and pod status churn would otherwise wake every binding that looks at those objects.
/// The stores behind it still see every event.
/// `on_change` is told about the changes that are signals (see [`ChangeFilter`]); `on_gone` when a new list
/// (after a watch could not resume, or a new pod scope) lacks objects seen before: they went away without a
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
