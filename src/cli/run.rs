//! `clb-operator run`: the operator's flags, turned into a [`Config`] whose defaults are the flags' defaults.

use std::{path::PathBuf, sync::LazyLock};

use crate::{
    clb::{ClientConfig, cloud::ClbApi},
    controller::{Config, config::default_endpoint, leader::LeaseSettings, settle::Settle},
};

/// The shipped defaults, shown by `--help` and used when a flag is not given.
static DEFAULTS: LazyLock<Config> = LazyLock::new(Config::default);
static DEFAULT_LEASE: LazyLock<LeaseSettings> = LazyLock::new(LeaseSettings::default);

fn human(d: std::time::Duration) -> humantime::Duration {
    d.into()
}

/// Options of `clb-operator run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Kubeconfig file; without it, KUBECONFIG, then the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Watch bindings (and their pods and Secrets) in this namespace only; all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Which CLB API to speak: v3 (CLB API 3.0, TC3-HMAC-SHA256; application and classic CLBs) or v2 (the
    /// legacy API 2.0, classic CLBs only, for accounts that still have it).
    #[arg(long, env = "CLB_API", default_value = "v3", value_parser = parse_api)]
    pub clb_api: ClbApi,
    /// CLB API endpoint; the default follows --clb-api (https://clb.tencentcloudapi.com/ for v3,
    /// https://lb.api.qcloud.com/v2/index.php for v2).
    #[arg(long, env = "CLB_ENDPOINT")]
    pub clb_endpoint: Option<url::Url>,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDR", default_value_t = DEFAULTS.http_addr)]
    pub http_addr: std::net::SocketAddr,
    /// Bindings reconciled at the same time.
    #[arg(long, default_value_t = DEFAULTS.concurrency)]
    pub concurrency: u16,
    /// Most instances per Register or Deregister call (API 2.0; API 3.0 uses its documented limits).
    #[arg(long, default_value_t = DEFAULTS.clb.max_batch as u16,
        value_parser = clap::value_parser!(u16).range(1..=100))]
    pub batch_size: u16,
    /// Client-side limit of CLB requests per second, per action.
    #[arg(long, default_value_t = DEFAULTS.clb.rate_limit_per_second,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,
    /// How often an unchanged binding is looked at again.
    #[arg(long, default_value_t = human(DEFAULTS.resync))]
    pub resync: humantime::Duration,
    /// The unit of coalescing: an isolated change is submitted at once, but while many nodes change (a mass
    /// drain) a binding waits until 8 times this has passed without a change (30 times at most), so the drain
    /// becomes a few full batches instead of many small calls. 0s turns coalescing off.
    #[arg(long, default_value_t = human(DEFAULTS.settle.quiet))]
    pub settle: humantime::Duration,
    /// Hold a coordination.k8s.io Lease so that only one replica reconciles (for more than one replica).
    #[arg(long, env = "LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value_t = DEFAULT_LEASE.namespace.clone())]
    pub leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value_t = DEFAULT_LEASE.name.clone())]
    pub leader_election_lease: String,
    /// How long the lease holds without renewal; a standby takes over about this long after the leader dies.
    #[arg(long, default_value_t = human(DEFAULT_LEASE.duration))]
    pub lease_duration: humantime::Duration,
}

impl From<RunArgs> for Config {
    fn from(args: RunArgs) -> Self {
        let defaults = Config::default();
        let leader = args.leader_elect.then(|| LeaseSettings {
            namespace: args.leader_election_namespace,
            name: args.leader_election_lease,
            duration: args.lease_duration.into(),
        });
        Config {
            namespace: args.namespace,
            api: args.clb_api,
            clb: ClientConfig {
                endpoint: args.clb_endpoint.unwrap_or_else(|| default_endpoint(args.clb_api)),
                max_batch: usize::from(args.batch_size),
                rate_limit_per_second: args.rate_limit,
                ..defaults.clb
            },
            http_addr: args.http_addr,
            concurrency: args.concurrency,
            resync: args.resync.into(),
            settle: Settle { quiet: args.settle.into(), ..defaults.settle },
            leader,
            ..defaults
        }
    }
}

/// Parses `--clb-api` / `--api`: `v3` or `v2`.
pub fn parse_api(s: &str) -> Result<ClbApi, String> {
    match s {
        "v3" => Ok(ClbApi::V3),
        "v2" => Ok(ClbApi::V2),
        other => Err(format!("unknown CLB API {other:?}: use v3 or v2")),
    }
}

/// Runs the operator with `args`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = super::kube::client(args.kubeconfig.as_deref()).await?;
    crate::controller::run(args.into(), client).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// With no flags, the command line gives exactly the defaults written in `Config::default`.
    #[test]
    fn flag_defaults_are_the_config_defaults() {
        let config: Config = Cli::parse_from(["clb-operator"]).run.into();
        let defaults = Config::default();
        assert_eq!(config.clb, defaults.clb);
        assert_eq!(
            (config.api, config.clb.endpoint.as_str()),
            (ClbApi::V3, "https://clb.tencentcloudapi.com/")
        );
        let legacy: Config = Cli::parse_from(["clb-operator", "--clb-api", "v2"]).run.into();
        assert_eq!(
            (legacy.api, legacy.clb.endpoint.as_str()),
            (ClbApi::V2, "https://lb.api.qcloud.com/v2/index.php")
        );
        assert!(Cli::try_parse_from(["clb-operator", "--clb-api", "v4"]).is_err());
        assert_eq!(
            (config.http_addr, config.concurrency, config.resync),
            (defaults.http_addr, 8, defaults.resync)
        );
        assert_eq!(config.settle, defaults.settle);
        assert_eq!(config.problem_backoff, defaults.problem_backoff);
        assert!(config.leader.is_none() && config.namespace.is_none());
        let elected: Config = Cli::parse_from(["clb-operator", "--leader-elect"]).run.into();
        assert_eq!(
            elected.leader.map(|l| (l.name, l.duration)),
            Some(("clb-operator".into(), DEFAULT_LEASE.duration))
        );
    }
}
