//! Prometheus metrics (OpenMetrics text at `/metrics`). Every label comes from a fixed vocabulary, never from
//! object names, so cardinality stays bounded on any cluster.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::clb::{
    Action, ClbError, Observer, v3,
    v3_client::{V3CallError, V3Observer},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    action: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Per-binding counts that the gauges sum up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindingCounts {
    /// Backends in state Registering.
    pub registering: i64,
    /// Backends in state Registered.
    pub registered: i64,
    /// Backends in state Deregistering.
    pub deregistering: i64,
    /// Running tasks.
    pub tasks: i64,
}

/// The operator's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<KindLabel, Counter>,
    reconcile_duration: Histogram,
    clb_requests: Family<RequestLabels, Counter>,
    clb_request_duration: Family<ActionLabel, Histogram>,
    tasks_in_flight: Gauge,
    backends: Family<StateLabel, Gauge>,
    deregistration_latency: Histogram,
    leader: Gauge,
    cached_objects: Family<KindLabel, Gauge>,
    /// Counts the caches' objects when metrics are read (a store has no change hook to count them as they come).
    cache_sizes: Mutex<Option<CacheSizes>>,
    per_binding: Mutex<HashMap<String, BindingCounts>>,
}

/// Reports how many objects each cache holds, by kind.
pub type CacheSizes = Box<dyn Fn() -> Vec<(&'static str, usize)> + Send + Sync>;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 5 ms .. ~82 s: CLB calls take milliseconds, tasks take seconds.
    prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 15)
}

impl Metrics {
    /// Registers every metric under the `clb_operator_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("clb_operator");
        let m = Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(latency_buckets()),
            clb_requests: Family::default(),
            clb_request_duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            tasks_in_flight: Gauge::default(),
            backends: Family::default(),
            deregistration_latency: Histogram::new(latency_buckets()),
            leader: Gauge::default(),
            cached_objects: Family::default(),
            cache_sizes: Mutex::default(),
            per_binding: Mutex::default(),
            registry: Registry::default(),
        };
        // NB: counters are registered without `_total`; the encoder appends it (and panics in debug builds if
        // the name already has it).
        registry.register("reconciles", "Reconciles run", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            m.reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile took",
            Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        registry.register("clb_requests", "CLB API requests by action and outcome", m.clb_requests.clone());
        registry.register_with_unit(
            "clb_request_duration",
            "CLB API request latency by action",
            Unit::Seconds,
            m.clb_request_duration.clone(),
        );
        registry.register(
            "tasks_in_flight",
            "CLB tasks submitted and not yet finished",
            m.tasks_in_flight.clone(),
        );
        registry.register("backends", "Owned backends by state", m.backends.clone());
        registry.register_with_unit(
            "deregistration_latency",
            "From the operator seeing a node or pod go away to the CLB finishing the Deregister task",
            Unit::Seconds,
            m.deregistration_latency.clone(),
        );
        registry.register("leader", "1 while this replica holds the leader lease", m.leader.clone());
        registry.register(
            "kube_requests",
            "Kubernetes API requests this process made, by verb and resource",
            crate::kube_requests::KUBE_REQUESTS.clone(),
        );
        registry.register_with_unit(
            "kube_request_duration",
            "Kubernetes API requests this process made, by verb and resource, until the response's headers arrived",
            Unit::Seconds,
            crate::kube_requests::KUBE_REQUEST_DURATION.clone(),
        );
        registry.register(
            "cached_objects",
            "Objects in the operator's caches, by kind (pods only of namespaces with a pod-targeted binding)",
            m.cached_objects.clone(),
        );
        Self { registry, ..m }
    }

    /// Sets what reports the caches' sizes for `cached_objects`.
    pub fn count_caches(&self, sizes: CacheSizes) {
        if let Ok(mut s) = self.cache_sizes.lock() {
            *s = Some(sizes);
        }
    }

    /// The metrics in OpenMetrics text format.
    pub fn encode(&self) -> String {
        if let Ok(sizes) = self.cache_sizes.lock()
            && let Some(sizes) = sizes.as_ref()
        {
            for (kind, n) in sizes() {
                self.cached_objects
                    .get_or_create(&KindLabel { kind })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Records one reconcile: its duration and, if it failed, the error kind.
    pub fn reconciled(&self, took: Duration, error_kind: Option<&'static str>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(kind) = error_kind {
            self.reconcile_errors.get_or_create(&KindLabel { kind }).inc();
        }
    }

    /// An observer for the CLB client that counts requests and their latency.
    pub fn clb_observer(self: &Arc<Self>) -> Observer {
        let metrics = Arc::clone(self);
        Arc::new(move |action: Action, outcome: Result<(), &ClbError>, took: Duration| {
            let outcome = match outcome {
                Ok(()) => "ok",
                Err(e) => e.kind(),
            };
            let action = action.as_str();
            metrics.clb_requests.get_or_create(&RequestLabels { action, outcome }).inc();
            metrics.clb_request_duration.get_or_create(&ActionLabel { action }).observe(took.as_secs_f64());
        })
    }

    /// An observer for the CLB API 3.0 client that counts requests and their latency.
    pub fn clb_v3_observer(self: &Arc<Self>) -> V3Observer {
        let metrics = Arc::clone(self);
        Arc::new(move |action: v3::Action, outcome: Result<(), &V3CallError>, took: Duration| {
            let outcome = match outcome {
                Ok(()) => "ok",
                Err(e) => e.class().label(),
            };
            let action = action.as_str();
            metrics.clb_requests.get_or_create(&RequestLabels { action, outcome }).inc();
            metrics.clb_request_duration.get_or_create(&ActionLabel { action }).observe(took.as_secs_f64());
        })
    }

    /// Records how long a deregistration took from its signal to the task's success.
    pub fn deregistered(&self, latency: Duration) {
        self.deregistration_latency.observe(latency.as_secs_f64());
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Replaces one binding's counts (`None` when it is gone) and refreshes the totals.
    pub fn set_binding(&self, binding: String, counts: Option<BindingCounts>) {
        let Ok(mut per) = self.per_binding.lock() else {
            return;
        };
        match counts {
            Some(c) => per.insert(binding, c),
            None => per.remove(&binding),
        };
        let total = per.values().fold(BindingCounts::default(), |a, c| BindingCounts {
            registering: a.registering + c.registering,
            registered: a.registered + c.registered,
            deregistering: a.deregistering + c.deregistering,
            tasks: a.tasks + c.tasks,
        });
        self.tasks_in_flight.set(total.tasks);
        for (state, n) in [
            ("Registering", total.registering),
            ("Registered", total.registered),
            ("Deregistering", total.deregistering),
        ] {
            self.backends.get_or_create(&StateLabel { state }).set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text output names every metric with the prefix, sums per-binding gauges, and carries only fixed labels.
    #[test]
    fn encodes_prefixed_metrics_with_fixed_labels() {
        let m = Arc::new(Metrics::new());
        m.reconciled(Duration::from_millis(3), None);
        m.reconciled(Duration::from_millis(3), Some("kube"));
        let err = ClbError::Config("x".into());
        let observe = m.clb_observer();
        observe(Action::DeregisterInstancesFromLoadBalancer, Ok(()), Duration::from_millis(4));
        observe(Action::DeregisterInstancesFromLoadBalancer, Err(&err), Duration::from_millis(4));
        m.set_binding(
            "a/b".into(),
            Some(BindingCounts { registered: 2, deregistering: 1, tasks: 1, ..Default::default() }),
        );
        m.set_binding("a/c".into(), Some(BindingCounts { registered: 3, ..Default::default() }));
        m.deregistered(Duration::from_millis(250));
        m.count_caches(Box::new(|| vec![("node", 7), ("pod", 0)]));
        let text = m.encode();
        for line in [
            "clb_operator_reconciles_total 2",
            "clb_operator_reconcile_errors_total{kind=\"kube\"} 1",
            "clb_operator_clb_requests_total{action=\"DeregisterInstancesFromLoadBalancer\",outcome=\"ok\"} 1",
            "clb_operator_clb_requests_total{action=\"DeregisterInstancesFromLoadBalancer\",outcome=\"config\"} 1",
            "clb_operator_backends{state=\"Registered\"} 5",
            "clb_operator_tasks_in_flight 1",
            "clb_operator_deregistration_latency_seconds_count 1",
            "clb_operator_cached_objects{kind=\"node\"} 7",
            "clb_operator_cached_objects{kind=\"pod\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        m.set_binding("a/b".into(), None);
        assert!(m.encode().contains("clb_operator_backends{state=\"Registered\"} 3"));
    }
}
