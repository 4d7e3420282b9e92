//! The one seam between the reconciler and a CLB API: what a load balancer is and holds, register, deregister,
//! and task status. [`super::v2_cloud`] and [`super::v3_cloud`] implement it; nothing here knows Kubernetes.

use std::collections::BTreeSet;

use futures::future::BoxFuture;

use super::{ClbError, Credentials, v3::ErrorClass, v3_client::V3CallError};

/// A task's id as the status keeps it: API 3.0's RequestId, or API 2.0's numeric requestId in decimal.
pub type TaskId = String;

/// Where on an application CLB an instance is bound: a listener (and, for layer 7, a rule) at a port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placement {
    /// The listener, `lbl-...`.
    pub listener_id: String,
    /// The layer-7 rule, `loc-...`, for HTTP and HTTPS listeners.
    pub location_id: Option<String>,
    /// The backend port.
    pub port: u16,
}

/// One backend as the operator owns it: an instance on a classic CLB (`at: None`), or an instance at a
/// placement on an application CLB.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// CVM instance ID, `ins-...`.
    pub instance: String,
    /// Where on an application CLB; `None` on a classic one.
    pub at: Option<Placement>,
}

impl Target {
    /// An instance on a classic CLB.
    pub fn classic(instance: impl Into<String>) -> Self {
        Self { instance: instance.into(), at: None }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.at {
            None => f.write_str(&self.instance),
            Some(Placement { listener_id, location_id: Some(loc), port }) => {
                write!(f, "{}@{listener_id}/{loc}:{port}", self.instance)
            }
            Some(Placement { listener_id, location_id: None, port }) => {
                write!(f, "{}@{listener_id}:{port}", self.instance)
            }
        }
    }
}

/// Which kind of CLB a load balancer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A classic CLB (`Forward` 0): instances are bound to the load balancer as a whole.
    Classic,
    /// An application CLB (`Forward` 1): targets are bound to listeners.
    Application,
}

/// A layer-7 rule of a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `loc-...`.
    pub location_id: String,
    /// Its domain.
    pub domain: Option<String>,
    /// Its URL path.
    pub url: Option<String>,
}

/// A listener of an application CLB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// `lbl-...`.
    pub listener_id: String,
    /// `TCP`, `UDP`, `TCP_SSL`, `QUIC`, `HTTP`, `HTTPS`.
    pub protocol: Option<String>,
    /// Its layer-7 rules (HTTP and HTTPS).
    pub rules: Vec<Rule>,
}

impl Listener {
    /// Whether targets go on its rules rather than on the listener itself.
    pub fn is_layer7(&self) -> bool {
        matches!(self.protocol.as_deref(), Some("HTTP" | "HTTPS"))
    }
}

/// What a load balancer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancerView {
    /// Classic or application.
    pub kind: Kind,
    /// Its listeners (none for a classic CLB).
    pub listeners: Vec<Listener>,
}

/// What one write call achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// The API accepted it; its task is polled with this id.
    Task(TaskId),
    /// A deregistration found nothing left to remove (the load balancer, listener, rule or target is gone).
    AlreadyGone,
}

/// The result of one write call over some targets.
#[derive(Debug)]
pub struct Batch {
    /// The targets of this call.
    pub targets: Vec<Target>,
    /// What it achieved, or why it failed after its retries.
    pub result: Result<Submitted, CloudError>,
}

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Still running.
    Running,
    /// Done.
    Succeeded,
    /// The CLB gave up on it.
    Failed,
    /// The API does not know the id (a write that was not a task, e.g. a synchronous batch call): its result
    /// must be confirmed by reading the targets.
    Unknown,
}

/// Why a call through the seam failed; never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// An API 2.0 call failed.
    #[error(transparent)]
    V2(#[from] ClbError),
    /// An API 3.0 call failed.
    #[error(transparent)]
    V3(#[from] V3CallError),
    /// The API cannot do what was asked (e.g. listeners through API 2.0).
    #[error("{0}")]
    Unsupported(String),
    /// A batch call named these targets' listeners as failed.
    #[error("{0}")]
    Listener(String),
}

impl CloudError {
    /// Whether the load balancer does not exist.
    pub fn lb_not_found(&self) -> bool {
        match self {
            Self::V2(e) => e.code() == Some(super::CODE_NOT_FOUND),
            Self::V3(V3CallError::Api { error, .. }) => error.code == "InvalidParameter.LBIdNotFound",
            _ => false,
        }
    }

    /// Whether the credentials or permissions were refused.
    pub fn is_auth(&self) -> bool {
        match self {
            Self::V2(e) => e.kind() == "auth",
            Self::V3(e) => e.class() == ErrorClass::Auth,
            Self::Unsupported(_) | Self::Listener(_) => false,
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::V2(e) => e.kind(),
            Self::V3(e) => e.class().label(),
            Self::Unsupported(_) => "unsupported",
            Self::Listener(_) => "listener_failed",
        }
    }
}

/// A CLB API as the reconciler uses it, for one region and one set of credentials.
pub trait Cloud: Send + Sync {
    /// `v3` or `v2`, for logs.
    fn api(&self) -> &'static str;

    /// What load balancer `lb` is, with its listeners; `None` if it does not exist.
    fn describe(&self, lb: &str) -> BoxFuture<'_, Result<Option<LoadBalancerView>, CloudError>>;

    /// The targets `lb` holds: on `listeners` of an application CLB, or (none given) a classic CLB's
    /// instances.
    fn targets<'a>(
        &'a self,
        lb: &'a str,
        listeners: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeSet<Target>, CloudError>>;

    /// Registers `targets` with `weight` (0..=100), in as few calls as the API allows; one result per call.
    fn register<'a>(&'a self, lb: &'a str, targets: &'a [Target], weight: u32) -> BoxFuture<'a, Vec<Batch>>;

    /// Deregisters `targets`, in as few calls as the API allows; one result per call.
    fn deregister<'a>(&'a self, lb: &'a str, targets: &'a [Target]) -> BoxFuture<'a, Vec<Batch>>;

    /// Sets the weight (0..=100) of bound `targets`; 0 keeps them bound without new connections. Listener
    /// targets only: classic CLBs have no weight call under API 3.0, and API 2.0 none here.
    fn set_weight<'a>(&'a self, lb: &'a str, targets: &'a [Target], weight: u32)
    -> BoxFuture<'a, Vec<Batch>>;

    /// One look at task `id`.
    fn task<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<TaskState, CloudError>>;
}

/// Which API a [`Clouds`] speaks, chosen with `--clb-api`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClbApi {
    /// CLB API 3.0 (`clb.tencentcloudapi.com`, TC3-HMAC-SHA256).
    #[default]
    V3,
    /// CLB API 2.0 (`lb.api.qcloud.com`), the legacy path for classic CLBs.
    V2,
}

/// The shared client of one API (one HTTP client, one set of rate limiters), from which each binding gets a
/// [`Cloud`] for its region and credentials.
#[derive(Clone, Debug)]
pub enum Clouds {
    /// API 3.0.
    V3(super::v3_client::V3Client),
    /// API 2.0.
    V2(super::ClbClient),
}

impl ClbApi {
    /// `v3` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V3 => "v3",
            Self::V2 => "v2",
        }
    }
}

impl Clouds {
    /// A [`Cloud`] for `region` with `credentials`, sharing this client's connections and rate limits.
    pub fn for_binding(&self, credentials: Credentials, region: &str) -> Box<dyn Cloud> {
        match self {
            Self::V3(c) => Box::new(super::v3_cloud::V3Cloud::new(c.with_credentials(credentials, region))),
            Self::V2(c) => {
                Box::new(super::v2_cloud::V2Cloud(c.with_credentials(credentials).with_region(region)))
            }
        }
    }

    /// Which API it speaks.
    pub fn api(&self) -> ClbApi {
        match self {
            Self::V3(_) => ClbApi::V3,
            Self::V2(_) => ClbApi::V2,
        }
    }
}
