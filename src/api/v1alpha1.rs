//! `clb.tke.dev/v1alpha1`: the `ClbBackendBinding` spec and status, with the validation the API server enforces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Binds the CVM instances behind selected nodes (or behind the nodes that run selected pods) to a Tencent Cloud
/// CLB load balancer, and deregisters them before their nodes or pods go away.
// NB: clippy reads the repeated `type_ = ...` of the printcolumn list as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "clb.tke.dev",
    version = "v1alpha1",
    kind = "ClbBackendBinding",
    plural = "clbbackendbindings",
    shortname = "cbb",
    category = "clb",
    namespaced,
    status = "ClbBackendBindingStatus",
    doc = "Binds the CVM instances of selected nodes (or of the nodes running selected pods) to a CLB load balancer, and deregisters them before those nodes or pods go away.",
    printcolumn(
        name = "LB",
        type_ = "string",
        json_path = ".spec.loadBalancerId",
        description = "Load balancer ID"
    ),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region", description = "CLB region"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desired",
        description = "Targets that should serve"
    ),
    printcolumn(
        name = "Registered",
        type_ = "integer",
        json_path = ".status.registered",
        description = "Owned targets registered on the CLB"
    ),
    printcolumn(
        name = "Tasks",
        type_ = "integer",
        json_path = ".status.inFlight",
        description = "CLB tasks in flight"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Ready condition"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClbBackendBindingSpec {
    /// ID of the CLB load balancer (application or classic), e.g. lb-abcd1234. Immutable: to move backends to another load
    /// balancer, create a new binding.
    #[x_kube(
        validation = Rule::new("self.matches('^lb-[0-9a-z]+$')").message("loadBalancerId must be 'lb-' followed by lowercase letters and digits, e.g. lb-abcd1234"),
        validation = Rule::new("self == oldSelf").message("loadBalancerId is immutable; create a new binding for another load balancer")
    )]
    #[schemars(length(max = 64))]
    pub load_balancer_id: String,

    /// CLB region the load balancer lives in, sent as the API's Region parameter (e.g. gz, sh, bj, hk).
    #[x_kube(validation = Rule::new("size(self) > 0").message("region must not be empty"))]
    #[schemars(length(max = 64))]
    pub region: String,

    /// Secret in the binding's namespace with keys secretId, secretKey and optional token. Without it, the
    /// operator's own credentials (from its environment) are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,

    /// Which instances to bind: exactly one of nodeSelector and podSelector.
    pub targets: Targets,

    /// Listeners of an application CLB to bind the instances to, each at a backend port (API 3.0). Leave it
    /// out for a classic CLB, whose instances are bound to the load balancer as a whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(validation = Rule::new("self.all(l, self.exists_one(m, m.listenerId == l.listenerId && (has(m.locationId) ? m.locationId : '') == (has(l.locationId) ? l.locationId : '') && (has(m.domain) ? m.domain : '') == (has(l.domain) ? l.domain : '') && (has(m.url) ? m.url : '') == (has(l.url) ? l.url : '')))").message("listeners must not name the same listener and rule twice"))]
    pub listeners: Vec<ListenerRef>,

    /// Weight (0..100) given to instances this binding registers. 0 keeps an instance registered without
    /// sending it new traffic.
    #[serde(default = "default_weight")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("weight must be between 0 and 100"))]
    pub weight: i32,

    /// Which node signals mean "going away" and deregister the node's instance before the node is gone.
    #[serde(default)]
    pub drain: DrainPolicy,

    /// What happens to the backends this binding owns when the binding is deleted: Deregister (default)
    /// removes them from the load balancer, Retain leaves them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_weight() -> i32 {
    10
}

/// A listener of an application CLB (and, for a layer-7 listener, one of its rules) and the port the bound
/// instances serve it on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.port) != has(self.service)").message("a listener must set exactly one of port and service"))]
#[x_kube(validation = Rule::new("!(has(self.locationId) && (has(self.domain) || has(self.url)))").message("set locationId or domain and url, not both"))]
#[x_kube(validation = Rule::new("has(self.domain) == has(self.url)").message("domain and url go together"))]
#[serde(rename_all = "camelCase")]
pub struct ListenerRef {
    /// The listener's ID, e.g. lbl-abcd1234.
    #[x_kube(validation = Rule::new("self.matches('^lbl-[0-9a-z]+$')").message("listenerId must be 'lbl-' followed by lowercase letters and digits, e.g. lbl-abcd1234"))]
    #[schemars(length(max = 64))]
    pub listener_id: String,
    /// The port the instances serve the listener on (e.g. a Service's NodePort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"))]
    pub port: Option<i32>,
    /// A Service of the binding's namespace whose NodePort (for the named Service port) is the backend port;
    /// the binding follows it when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServicePort>,
    /// The layer-7 rule's ID (loc-...), for an HTTP or HTTPS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^loc-[0-9a-z]+$')").message("locationId must be 'loc-' followed by lowercase letters and digits"))]
    #[schemars(length(max = 64))]
    pub location_id: Option<String>,
    /// The layer-7 rule's domain, with url, instead of locationId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub domain: Option<String>,
    /// The layer-7 rule's URL path, with domain, instead of locationId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("url must start with /"))]
    #[schemars(length(min = 1, max = 255))]
    pub url: Option<String>,
}

/// A port of a Service in the binding's namespace; its NodePort is used.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The Service's name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The Service port (its `port` number) whose nodePort is used.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// A reference to a Secret in the binding's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The instances a binding serves: exactly one selector is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.nodeSelector) != has(self.podSelector)").message("targets must set exactly one of nodeSelector and podSelector"))]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    /// Bind the CVM instances of the nodes whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Bind the CVM instances of the nodes that run a Ready, non-terminating pod of the binding's namespace
    /// whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Node signals that mean "this node is going away": an instance whose node shows one is deregistered while
/// the node still exists.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainPolicy {
    /// Node taint keys that mean the node is going away. Defaults to the taints of cluster-autoscaler
    /// (ToBeDeletedByClusterAutoscaler) and Karpenter (karpenter.sh/disrupted); add your own, e.g. a
    /// node-termination-handler taint. Any effect counts.
    #[serde(default = "default_drain_taints")]
    #[schemars(length(max = 32))]
    pub taints: Vec<String>,

    /// Whether the label node.kubernetes.io/exclude-from-external-load-balancers (any value, as in the upstream
    /// service controller) removes a node's instance. Default true.
    #[serde(default = "default_true")]
    pub honor_exclusion_label: bool,

    /// Whether a cordoned node (spec.unschedulable) counts as going away. Default false: a cordon alone is
    /// often maintenance, and treating it as removal has caused outages elsewhere.
    #[serde(default)]
    pub on_cordon: bool,

    /// If set, a node whose Ready condition has not been True for this long (e.g. "5m") counts as going away.
    /// Unset by default: a node that stops reporting often comes back, and its pods may still serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_not_ready_after: Option<kube::core::Duration>,

    /// If set (e.g. "30s"), a going-away node's targets are first set to weight 0 (ModifyTargetWeight), so that
    /// the load balancer sends them no new connection while open ones finish, and are deregistered only after
    /// this long (the wait is kept in the status, so a restart neither skips nor restarts it). A node that
    /// comes back meanwhile gets its weight back. Application CLBs only: a classic CLB has no weight call under
    /// API 3.0, and its instances are deregistered at once (the PreDrain condition says so). A deleted node is
    /// deregistered at once too. Unset by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_zero_for: Option<kube::core::Duration>,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        Self {
            taints: default_drain_taints(),
            honor_exclusion_label: true,
            on_cordon: false,
            on_not_ready_after: None,
            weight_zero_for: None,
        }
    }
}

fn default_drain_taints() -> Vec<String> {
    vec![super::CLUSTER_AUTOSCALER_TAINT.to_owned(), super::KARPENTER_DISRUPTED_TAINT.to_owned()]
}

fn default_true() -> bool {
    true
}

/// What happens to owned backends when their binding is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Deregister every backend the binding owns, and wait for the tasks, before the binding goes.
    #[default]
    Deregister,
    /// Leave the backends on the load balancer.
    Retain,
}

/// What the operator observed and did for a binding.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClbBackendBindingStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded, each with a reason.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Number of targets that should serve now: instances on a classic CLB, instances at each listener on an
    /// application CLB.
    #[serde(default)]
    pub desired: i32,
    /// Number of owned targets in state Registered.
    #[serde(default)]
    pub registered: i32,
    /// Number of CLB tasks still running.
    #[serde(default)]
    pub in_flight: i32,
    /// The targets this binding owns on the load balancer (an instance, and on an application CLB its listener,
    /// rule and port), and only those: the operator never deregisters a target that is not listed here.
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
    /// CLB tasks: the running ones first, then a bounded history of finished ones, newest first.
    #[serde(default)]
    pub tasks: Vec<TaskRecord>,
    /// Submissions about to be made: each is written here before its CLB call and replaced by its task once the
    /// requestId is known. One left behind by a crash is confirmed on the load balancer, never blindly repeated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intents: Vec<IntentRecord>,
}

/// A submission the operator is about to make (or made, and crashed before it recorded the requestId).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntentRecord {
    /// A local id of the attempt, unique within the binding.
    pub attempt: String,
    /// Register or Deregister.
    pub action: TaskAction,
    /// The instances the submission acts on.
    pub instance_ids: Vec<String>,
    /// For listeners of an application CLB: the targets the submission acts on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetRef>,
    /// When the submission was about to be made.
    pub at: Time,
}

/// An instance bound to a listener (and rule) of an application CLB at a port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// CVM instance ID.
    pub instance_id: String,
    /// The listener.
    pub listener_id: String,
    /// The layer-7 rule, for HTTP and HTTPS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// The backend port.
    pub port: u16,
}

/// One owned instance on the load balancer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// CVM instance ID (the unified ins-... ID).
    pub instance_id: String,
    /// The listener it is bound to (application CLBs); absent for a classic CLB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_id: Option<String>,
    /// The layer-7 rule it is bound to, for HTTP and HTTPS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// The backend port on the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// While Quiesced: when its weight-0 wait (spec.drain.weightZeroFor) ends and it is deregistered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesced_until: Option<Time>,
    /// Node the instance belongs to, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Registering, Registered or Deregistering.
    pub state: BackendState,
    /// The CLB task moving the instance to its next state, while one runs: API 3.0's RequestId, or API 2.0's
    /// numeric requestId as a decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "task_id::optional")]
    #[schemars(with = "Option<String>")]
    pub request_id: Option<String>,
    /// Why the instance is being deregistered (e.g. NodeDeleted, Taint/ToBeDeletedByClusterAutoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where an owned instance is in its life on the load balancer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum BackendState {
    /// A Register task runs for it.
    Registering,
    /// It is on the load balancer and serving.
    Registered,
    /// A Deregister task runs for it; once that succeeds it leaves `backends`.
    Deregistering,
    /// Going away with spec.drain.weightZeroFor: a task setting its weight to 0 runs.
    Quiescing,
    /// At weight 0 (no new connections) until `quiescedUntil`, then deregistered.
    Quiesced,
    /// Its node came back while Quiesced: a task giving it its weight back runs.
    Restoring,
}

/// A CLB asynchronous task the operator submitted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// The task's id: API 3.0's RequestId (polled with DescribeTaskStatus), or API 2.0's numeric requestId as
    /// a decimal string (polled with DescribeLoadBalancersTaskResult). A status written with integer ids is
    /// read as well.
    #[serde(deserialize_with = "task_id::required")]
    #[schemars(with = "String")]
    pub request_id: String,
    /// Register or Deregister.
    pub action: TaskAction,
    /// The instances the task acts on.
    pub instance_ids: Vec<String>,
    /// For listeners of an application CLB: the targets the task acts on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetRef>,
    /// Running, Succeeded or Failed.
    pub state: TaskState,
    /// When the task was submitted.
    pub submitted_at: Time,
    /// When the operator saw the task finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}

/// The kind of change a task makes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TaskAction {
    /// RegisterTargets / BatchRegisterTargets / RegisterTargetsWithClassicalLB (API 3.0), or
    /// RegisterInstancesWithLoadBalancer (API 2.0).
    Register,
    /// DeregisterTargets / BatchDeregisterTargets / DeregisterTargetsFromClassicalLB (API 3.0), or
    /// DeregisterInstancesFromLoadBalancer (API 2.0).
    Deregister,
    /// ModifyTargetWeight to 0, before a deregistration (spec.drain.weightZeroFor).
    Quiesce,
    /// ModifyTargetWeight back to spec.weight, for a node that came back while quiesced.
    Restore,
}

/// Where a task is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TaskState {
    /// The CLB still works on it (status 2).
    Running,
    /// The CLB finished it (status 0).
    Succeeded,
    /// The CLB gave up on it (status 1); the instances stay in their previous state and are retried.
    Failed,
}

/// Task ids as strings, reading the integer ids that statuses written before API 3.0 hold.
mod task_id {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }

    impl From<Id> for String {
        fn from(id: Id) -> Self {
            match id {
                Id::Text(s) => s,
                Id::Number(n) => n.to_string(),
            }
        }
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Id::deserialize(d).map(String::from)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Id>::deserialize(d)?.map(String::from))
    }
}
