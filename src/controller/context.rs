//! The handles every reconcile shares: clients, caches, the event recorder, metrics and the per-binding memory.

use std::{collections::BTreeSet, sync::Arc};

use kube::{
    Client, Resource, ResourceExt,
    runtime::{
        events::{Event, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use tracing::warn;

use super::{
    Config,
    events::Note,
    index::BindingIndex,
    memory::{Key, Memory},
    pods::PodScope,
    polls::PollSchedule,
    settle::SignalClock,
    slim::{SlimNode, SlimPod},
    watch::SecretMeta,
};
use crate::{
    api::{ClbBackendBinding, MANAGER},
    clb::{Credentials, cloud::Clouds},
    metrics::Metrics,
};

/// What the watches maintain.
pub struct Caches {
    /// The controller's cache of bindings (to see which other bindings own a node).
    pub bindings: Store<ClbBackendBinding>,
    /// Trimmed cache of every node.
    pub nodes: Store<SlimNode>,
    /// Trimmed cache of the pods of the namespaces in `pod_scope`.
    pub pods: Store<SlimPod>,
    /// Which namespaces' pods the pod cache holds: those with a pod-targeted binding.
    pub pod_scope: Arc<PodScope>,
    /// Name and version of the Secrets in scope, if the operator may watch them.
    pub secrets: Option<Store<SecretMeta>>,
    /// When a change about each node was last seen.
    pub signals: Arc<SignalClock>,
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The watched caches.
    pub caches: Caches,
    /// Which bindings each node and pod event concerns; written by each reconcile, read by the watch mappers.
    pub index: BindingIndex,
    /// CLB client of the API spoken: one HTTP client and one set of rate limiters; region and credentials are
    /// set per binding.
    pub clb: Clouds,
    /// The operator's own credentials, used by bindings without a Secret.
    pub default_credentials: Option<Credentials>,
    /// Event publisher; one shared recorder so that repeated events aggregate.
    pub recorder: Recorder,
    /// The configuration it runs with (resync, settle, backoffs).
    pub config: Config,
    /// When each running task is next polled.
    pub polls: PollSchedule,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// What is remembered about each binding between reconciles.
    pub memory: Memory,
    /// True once the node cache holds a full list; reconciles wait for it.
    pub caches_synced: tokio::sync::watch::Sender<bool>,
}

impl Context {
    /// Builds a context around the given caches and clients.
    pub fn new(
        client: Client,
        caches: Caches,
        clb: Clouds,
        default_credentials: Option<Credentials>,
        config: Config,
        polls: PollSchedule,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            caches,
            index: BindingIndex::default(),
            clb,
            default_credentials,
            config,
            polls,
            metrics,
            memory: Memory::default(),
            caches_synced: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The namespaces whose pods the bindings in the cache need, leaving out `except` and bindings being
    /// deleted (their cleanup reads no pods).
    pub fn pod_namespaces(&self, except: Option<&Key>) -> BTreeSet<String> {
        self.caches
            .bindings
            .state()
            .iter()
            .filter(|b| b.spec.targets.pod_selector.is_some() && b.metadata.deletion_timestamp.is_none())
            .filter(|b| except.is_none_or(|key| *key != ObjectRef::from_obj(b.as_ref())))
            .filter_map(|b| b.namespace())
            .collect()
    }

    /// Forgets everything about a binding that is going away: its memory, its index entry, its metrics, and
    /// its namespace's claim on the pod cache.
    pub fn forget(&self, key: &Key) {
        self.caches.pod_scope.want(|| self.pod_namespaces(Some(key)));
        self.metrics.set_binding(key.to_string(), None);
        self.index.remove(key);
        self.memory.forget(key);
    }

    /// Publishes an event about `binding`; a failure to publish is logged, never fatal.
    pub async fn publish(&self, binding: &ClbBackendBinding, note: &Note) {
        let event = Event {
            type_: note.type_,
            reason: note.reason.into(),
            note: Some(note.text.chars().take(1000).collect()),
            action: note.action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &binding.object_ref(&())).await {
            warn!(binding = %binding.name_any(), reason = note.reason, error = %e, "Publishing an event failed");
        }
    }

    /// Publishes an event once per binding until its problems clear, for conditions seen on every reconcile.
    pub async fn publish_once(&self, binding: &ClbBackendBinding, note: &Note) {
        if self.memory.first_report(&ObjectRef::from_obj(binding), note.fingerprint()) {
            self.publish(binding, note).await;
        }
    }
}
