//! The Tencent Cloud CLB APIs behind one seam ([`cloud::Cloud`]): API 3.0 (TC3 signing, its client, listeners
//! and targets) and API 2.0 (`lb.api.qcloud.com/v2/index.php`, the legacy path). No Kubernetes types and no
//! command line live here.

mod client;
pub mod cloud;
mod credentials;
mod error;
pub mod sign;
pub mod task;
pub mod tc3;
pub mod v2_cloud;
pub mod v3;
pub mod v3_client;
pub mod v3_cloud;
pub mod wire;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use client::{
    ClbClient, ClientConfig, DEFAULT_ENDPOINT, DEFAULT_REGION, HttpMethod, Observer, RetryConfig,
};
pub use credentials::{Credentials, ENV_SECRET_ID, ENV_SECRET_KEY, ENV_SESSION_TOKEN, SecretString};
pub use error::{CODE_NOT_FOUND, ClbError, RETRYABLE_CODES};
pub use sign::SignMethod;
pub use task::{PollBackoff, TaskState};

/// The CLB v2 actions this crate calls (and the emulator serves); serialised as the `Action` parameter value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// List load balancers, optionally by ID.
    DescribeLoadBalancers,
    /// List the backends (CVM instances) of a classic load balancer.
    DescribeLoadBalancerBackends,
    /// Add instances (with weights) to a classic load balancer; asynchronous.
    RegisterInstancesWithLoadBalancer,
    /// Remove instances from a classic load balancer; asynchronous.
    DeregisterInstancesFromLoadBalancer,
    /// Query the state of an asynchronous task by its `requestId`.
    DescribeLoadBalancersTaskResult,
}

impl Action {
    /// Every action, in a fixed order ([`Action::index`] is the position here).
    pub const ALL: [Action; 5] = [
        Self::DescribeLoadBalancers,
        Self::DescribeLoadBalancerBackends,
        Self::RegisterInstancesWithLoadBalancer,
        Self::DeregisterInstancesFromLoadBalancer,
        Self::DescribeLoadBalancersTaskResult,
    ];

    /// The value of the `Action` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DescribeLoadBalancers => "DescribeLoadBalancers",
            Self::DescribeLoadBalancerBackends => "DescribeLoadBalancerBackends",
            Self::RegisterInstancesWithLoadBalancer => "RegisterInstancesWithLoadBalancer",
            Self::DeregisterInstancesFromLoadBalancer => "DeregisterInstancesFromLoadBalancer",
            Self::DescribeLoadBalancersTaskResult => "DescribeLoadBalancersTaskResult",
        }
    }

    /// Position in [`Action::ALL`], for per-action tables such as rate limiters.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the exact `Action` parameter value.
impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|a| a.as_str() == s).ok_or(UnknownAction)
    }
}

/// The `Action` parameter names no action this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown CLB action")]
pub struct UnknownAction;

/// A load balancer as DescribeLoadBalancers reports it (the fields this operator uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// `loadBalancerId`, e.g. `lb-abcd1234`.
    pub load_balancer_id: String,
    /// `unLoadBalancerId`, the unified ID, when the API sends one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub un_load_balancer_id: Option<String>,
    /// `loadBalancerName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `loadBalancerType`: 2 public, 3 private.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer_type: Option<i64>,
    /// `forward`: 0 classic, 1 application. Backend actions here work on classic LBs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<i64>,
    /// `status`: 0 creating, 1 running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    /// `loadBalancerVips`.
    pub vips: Vec<String>,
}

/// A backend (CVM instance) of a load balancer, as DescribeLoadBalancerBackends reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The unified instance ID (`unInstanceId`, e.g. `ins-9o9ex9s0`); the legacy `instanceId` only when the
    /// API sends no unified one.
    pub instance_id: String,
    /// The legacy `instanceId` (`qcvm…`), when it differs from [`Backend::instance_id`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub legacy_instance_id: Option<String>,
    /// Forwarding weight, 0..=100.
    pub weight: u32,
    /// `instanceName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `lanIp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lan_ip: Option<String>,
    /// `instanceStatus` (2 = running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
}

/// What one Register or Deregister call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Submitted {
    /// The API accepted the call and started an asynchronous task; poll it with this `requestId`.
    #[serde(rename = "submitted")]
    Task {
        /// The task's `requestId`.
        request_id: u64,
    },
    /// Deregister answered 5000 (resource does not exist): nothing is left to remove.
    AlreadyGone,
}

/// The result of one batch (at most `max_batch` instances) of a Register or Deregister.
#[derive(Debug)]
pub struct BatchOutcome {
    /// The instances in this batch, in request order.
    pub instance_ids: Vec<String>,
    /// What the call achieved, or why it failed after its retries.
    pub result: Result<Submitted, ClbError>,
}
