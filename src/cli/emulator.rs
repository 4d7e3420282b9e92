//! `clb-operator emulator`: the emulator's flags, turned into an [`EmulatorConfig`].

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;

use crate::{
    clb::{Credentials, ENV_SECRET_ID, ENV_SECRET_KEY, SecretString},
    emulator::{
        EmulatorConfig, Faults, SeedListener, SeedLoadBalancer,
        proxy::{InstanceAddr, ListenerHealthCheck, Serve},
    },
};

/// Arguments of `clb-operator emulator`.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// The only SecretId the emulator accepts.
    #[arg(long, env = ENV_SECRET_ID)]
    pub secret_id: Option<String>,
    /// The SecretKey requests must be signed with.
    #[arg(long, env = ENV_SECRET_KEY, hide_env_values = true)]
    pub secret_key: Option<SecretString>,
    /// How long a Register/Deregister task runs before it ends, e.g. `500ms`.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub task_duration: Duration,
    /// Share of tasks that end failed (status 1), 0..=1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub task_fail_rate: f64,
    /// Share of authenticated requests answered 6000 (internal error), 0..=1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// Delay added before answering each API request, e.g. `50ms`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Most backends per API 2.0 Register/Deregister call; more is answered 4000.
    #[arg(long, default_value_t = 20)]
    pub max_batch: usize,
    /// Most targets per API 3.0 RegisterTargets/DeregisterTargets (and classic) call; more is answered
    /// InvalidParameterValue.Length.
    #[arg(long, default_value_t = crate::clb::v3::MAX_TARGETS)]
    pub max_targets: usize,
    /// Most targets per API 3.0 BatchRegisterTargets/BatchDeregisterTargets call.
    #[arg(long, default_value_t = crate::clb::v3::MAX_BATCH_TARGETS)]
    pub max_batch_targets: usize,
    /// Make the API 3.0 batch calls apply at once and hand out no task (by default they are tasks).
    #[arg(long)]
    pub batch_sync: bool,
    /// Refuse an API 3.0 write on a load balancer that runs another task with
    /// FailedOperation.ResourceInOperating.
    #[arg(long)]
    pub resource_in_operating: bool,
    /// An API 3.0 application load balancer's listener to start with (repeatable):
    /// `lb-x/lbl-y=TCP:80`, or `lb-x/lbl-y=HTTP:80,loc-1=a.example.com/path` with layer-7 rules.
    #[arg(long = "listener", value_name = "LB/LISTENER=PROTOCOL:PORT[,RULE=DOMAIN/URL...]")]
    pub listeners: Vec<SeedListener>,
    /// Carry real TCP traffic for a listener on an address (repeatable), e.g. `lbl-1=127.0.0.1:18080`: each
    /// connection goes to one of its targets with weight > 0, weighted round robin.
    #[arg(long = "serve", value_name = "LISTENER=IP:PORT")]
    pub serve: Vec<Serve>,
    /// The private address of a CVM instance, where served listeners reach its targets (repeatable), e.g.
    /// `ins-a=127.0.0.11`.
    #[arg(long = "instance", value_name = "INSTANCE=IP")]
    pub instances: Vec<InstanceAddr>,
    /// A TCP health check on a served listener (repeatable): `lbl-1` with Tencent's defaults (every 5 s, 2 s
    /// timeout, 3 failures unhealthy, 3 successes healthy) or `lbl-1=INTERVAL,TIMEOUT,UNHEALTHY,HEALTHY`.
    #[arg(long = "health-check", value_name = "LISTENER[=INTERVAL,TIMEOUT,UNHEALTHY,HEALTHY]")]
    pub health_checks: Vec<ListenerHealthCheck>,
    /// Requests per second admitted per action (more is answered 4400); 0 admits all.
    #[arg(long, default_value_t = 0)]
    pub qps: u32,
    /// A load balancer to start with, optionally with backends: `lb-x` or `lb-x=ins-a,ins-b` (repeatable).
    #[arg(long = "load-balancer", value_name = "LB[=INSTANCE,...]")]
    pub load_balancers: Vec<SeedLoadBalancer>,
    /// JSON file that keeps load balancers and tasks across restarts (read at start, written on change).
    #[arg(long)]
    pub state_file: Option<PathBuf>,
}

impl EmulatorArgs {
    /// The emulator's configuration, or why there is none (it needs the one pair of credentials it accepts).
    pub fn config(self) -> Result<EmulatorConfig, String> {
        let (Some(secret_id), Some(secret_key)) = (self.secret_id.filter(|s| !s.is_empty()), self.secret_key)
        else {
            return Err(format!(
                "the emulator needs credentials to check signatures: pass --secret-id and --secret-key or set \
                 {ENV_SECRET_ID} and {ENV_SECRET_KEY}"
            ));
        };
        Ok(EmulatorConfig {
            credentials: Credentials::new(secret_id, secret_key.expose(), None),
            faults: Faults {
                task_duration: self.task_duration,
                task_fail_rate: self.task_fail_rate,
                error_rate: self.error_rate,
                latency: self.latency,
            },
            max_batch: self.max_batch,
            max_targets: self.max_targets,
            max_batch_targets: self.max_batch_targets,
            batch_sync: self.batch_sync,
            resource_in_operating: self.resource_in_operating,
            qps: self.qps,
            load_balancers: self.load_balancers,
            listeners: self.listeners,
            serve: self.serve,
            instances: self.instances,
            health_checks: self.health_checks,
            state_file: self.state_file,
            ..EmulatorConfig::default()
        })
    }
}

/// Runs the emulator with `args` until SIGINT or SIGTERM.
pub async fn run(args: EmulatorArgs) -> ExitCode {
    let listen = args.listen;
    match args.config() {
        Ok(config) => crate::emulator::run(config, listen).await,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) { Ok(rate) } else { Err(format!("{rate} is not within 0..=1")) }
}
