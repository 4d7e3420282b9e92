//! `clb-operator clb ...`: calls the CLB API directly, API 3.0 by default ([`super::clb_v3`]) or API 2.0 with
//! `--api v2`. Results are JSON on stdout; a failure is one line on stderr (with the API code and message) and
//! exit status 1.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};
use url::Url;

use crate::clb::{
    BatchOutcome, ClbClient, ClbError, ClientConfig, Credentials, DEFAULT_REGION, HttpMethod, PollBackoff,
    RetryConfig, SignMethod, Submitted, TaskState, cloud::ClbApi,
};

/// Arguments of `clb-operator clb`. Credentials come only from the environment (`TENCENTCLOUD_SECRET_ID`,
/// `TENCENTCLOUD_SECRET_KEY`, optional `TENCENTCLOUD_SESSION_TOKEN`), so they never show in `ps`.
#[derive(Debug, Args)]
pub struct ClbArgs {
    /// Which API: v3 (CLB API 3.0) or v2 (the legacy API 2.0, whose subcommands are describe-lbs,
    /// describe-backends, register, deregister and task-result).
    #[arg(long, env = "CLB_API", default_value = "v3", value_parser = super::run::parse_api, global = true)]
    pub api: ClbApi,
    /// CLB API endpoint URL; its host[:port] (and, for v2, path) are signed. Default: the API's own
    /// (https://clb.tencentcloudapi.com/ or https://lb.api.qcloud.com/v2/index.php).
    #[arg(long, env = "CLB_ENDPOINT", global = true)]
    pub endpoint: Option<Url>,
    /// Region sent as the `Region` parameter (v3: `gz` is sent as `ap-guangzhou`).
    #[arg(long, env = "TENCENTCLOUD_REGION", default_value = DEFAULT_REGION, global = true)]
    pub region: String,
    /// Signature digest (v2). HmacSHA1 is the default of Tencent's v2 SDK and what the API assumes when no
    /// SignatureMethod is sent.
    #[arg(long, default_value_t = SignMethod::HmacSha1, global = true)]
    pub sign_method: SignMethod,
    /// HTTP method (v2); GET switches to POST by itself when the URL would be too long.
    #[arg(long, default_value_t = HttpMethod::Get, global = true)]
    pub http_method: HttpMethod,
    /// Most instances per Register/Deregister call (v2).
    #[arg(long, default_value_t = 20, global = true)]
    pub max_batch: usize,
    /// Time allowed for one HTTP request, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub request_timeout: Duration,
    /// Sends per call, retries of retryable errors included.
    #[arg(long, default_value_t = 4, global = true)]
    pub max_attempts: u32,
    /// What to do.
    #[command(subcommand)]
    pub command: ClbCommand,
}

/// The `clb` subcommands, one per API action.
#[derive(Debug, Subcommand)]
pub enum ClbCommand {
    /// List load balancers (DescribeLoadBalancers): all of the region, or the ones named with --lb.
    DescribeLbs {
        /// Load balancer ID to look up (repeatable).
        #[arg(long = "lb")]
        lbs: Vec<String>,
    },
    /// API 3.0: list an application load balancer's listeners and their rules (DescribeListeners).
    DescribeListeners {
        /// Load balancer ID.
        #[arg(long)]
        lb: String,
    },
    /// API 3.0: list the targets of a load balancer's listeners (DescribeTargets), or of a classic one
    /// (DescribeClassicalLBTargets).
    DescribeTargets {
        /// Load balancer ID.
        #[arg(long)]
        lb: String,
        /// Only these listeners (repeatable).
        #[arg(long = "listener")]
        listeners: Vec<String>,
    },
    /// API 2.0: list a load balancer's backends (DescribeLoadBalancerBackends).
    DescribeBackends {
        /// Load balancer ID.
        #[arg(long)]
        lb: String,
    },
    /// Add instances: v3 on a listener (BatchRegisterTargets) with --listener and --port, or to a classic CLB
    /// (RegisterTargetsWithClassicalLB); v2 RegisterInstancesWithLoadBalancer in batches of --max-batch.
    Register {
        /// Load balancer ID.
        #[arg(long)]
        lb: String,
        /// CVM instance ID (`unInstanceId`); repeatable or comma-separated.
        #[arg(long = "instance", required = true, value_delimiter = ',')]
        instances: Vec<String>,
        /// Forwarding weight of every instance, 0..=100.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
        weight: u32,
        /// Where on an application CLB (v3).
        #[command(flatten)]
        at: ListenerArgs,
        /// Waiting for the tasks.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove instances: v3 from a listener (BatchDeregisterTargets) or a classic CLB
    /// (DeregisterTargetsFromClassicalLB); v2 DeregisterInstancesFromLoadBalancer in batches of --max-batch.
    Deregister {
        /// Load balancer ID.
        #[arg(long)]
        lb: String,
        /// CVM instance ID; repeatable or comma-separated.
        #[arg(long = "instance", required = true, value_delimiter = ',')]
        instances: Vec<String>,
        /// Where on an application CLB (v3).
        #[command(flatten)]
        at: ListenerArgs,
        /// Waiting for the tasks.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// API 3.0: set the weight of bound targets on a listener (ModifyTargetWeight); 0 stops new connections.
    SetWeight {
        /// Load balancer ID.
        #[arg(long)]
        lb: String,
        /// CVM instance ID; repeatable or comma-separated.
        #[arg(long = "instance", required = true, value_delimiter = ',')]
        instances: Vec<String>,
        /// The new weight, 0..=100.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
        weight: u32,
        /// The listener (and rule) and port.
        #[command(flatten)]
        at: ListenerArgs,
        /// Waiting for the tasks.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// API 3.0: show the state of an asynchronous task (DescribeTaskStatus).
    TaskStatus {
        /// The RequestId a write returned.
        #[arg(long)]
        task: String,
    },
    /// API 2.0: show the state of an asynchronous task (DescribeLoadBalancersTaskResult).
    TaskResult {
        /// The `requestId` that Register or Deregister returned.
        #[arg(long)]
        request_id: u64,
    },
}

/// Where targets go on an application CLB (API 3.0): a listener, its rule for layer 7, and the backend port.
#[derive(Debug, Args)]
pub struct ListenerArgs {
    /// The listener, `lbl-...`.
    #[arg(long)]
    pub listener: Option<String>,
    /// The layer-7 rule, `loc-...`.
    #[arg(long)]
    pub location: Option<String>,
    /// The backend port, 1..65535.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
}

/// `--wait` and its limit.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Poll every submitted task until it ends (100 ms doubling to 2 s between polls).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long, e.g. `3m`.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,
}

/// Runs a `clb` subcommand: exit status 0 on success, 1 when any call or task failed.
pub async fn run(args: ClbArgs) -> ExitCode {
    let result = match args.api {
        ClbApi::V3 => super::clb_v3::execute(args).await,
        ClbApi::V2 => execute(args).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(report) => {
            // NB: printed even on a partial failure, so every requestId that was obtained is visible.
            println!(
                "{}",
                serde_json::to_string_pretty(&report.output).unwrap_or_else(|_| report.output.to_string())
            );
            match report.failure {
                None => ExitCode::SUCCESS,
                Some(line) => {
                    eprintln!("error: {line}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// What a subcommand prints: its JSON, and the error line if something failed along the way.
pub struct Report {
    /// The JSON printed on stdout.
    pub output: Value,
    /// The line printed on stderr, when something failed.
    pub failure: Option<String>,
}

/// Runs `args.command` on API 2.0.
async fn execute(args: ClbArgs) -> Result<Report, ClbError> {
    let v3_only = |what: &str| ClbError::Config(format!("{what} needs CLB API 3.0 (--api v3)"));
    let config = ClientConfig {
        endpoint: args.endpoint.unwrap_or_else(|| ClientConfig::default().endpoint),
        region: args.region,
        sign_method: args.sign_method,
        http_method: args.http_method,
        max_batch: args.max_batch,
        request_timeout: args.request_timeout,
        retry: RetryConfig { max_attempts: args.max_attempts, ..RetryConfig::default() },
        ..ClientConfig::default()
    };
    let client = ClbClient::new(config, Credentials::from_env()?)?;
    let done = |output: Value| Ok(Report { output, failure: None });
    match args.command {
        ClbCommand::DescribeLbs { lbs } => {
            done(json!({ "loadBalancers": client.describe_load_balancers(&lbs).await? }))
        }
        ClbCommand::DescribeBackends { lb } => {
            let backends = client.describe_backends(&lb).await?;
            done(json!({ "loadBalancerId": lb, "backends": backends }))
        }
        ClbCommand::DescribeListeners { .. } => Err(v3_only("describe-listeners")),
        ClbCommand::DescribeTargets { .. } => Err(v3_only("describe-targets")),
        ClbCommand::SetWeight { .. } => Err(v3_only("set-weight")),
        ClbCommand::TaskStatus { .. } => Err(v3_only("task-status")),
        ClbCommand::Register { at, .. } | ClbCommand::Deregister { at, .. } if at.listener.is_some() => {
            Err(v3_only("--listener"))
        }
        ClbCommand::Register { lb, instances, weight, wait, .. } => {
            let backends: Vec<(String, u32)> = instances.into_iter().map(|id| (id, weight)).collect();
            let outcomes = client.register(&lb, &backends).await;
            Ok(report_batches(&client, &lb, outcomes, &wait).await)
        }
        ClbCommand::Deregister { lb, instances, wait, .. } => {
            let outcomes = client.deregister(&lb, &instances).await;
            Ok(report_batches(&client, &lb, outcomes, &wait).await)
        }
        ClbCommand::TaskResult { request_id } => {
            let state = client.task_result(request_id).await?;
            done(json!({ "requestId": request_id, "state": state }))
        }
    }
}

/// One batch in the output of `register` / `deregister`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchReport {
    instance_ids: Vec<String>,
    #[serde(flatten)]
    submitted: Option<Submitted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<TaskState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorReport>,
}

/// An error in the JSON output.
#[derive(Serialize)]
struct ErrorReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i64>,
    kind: &'static str,
    message: String,
}

impl From<&ClbError> for ErrorReport {
    fn from(e: &ClbError) -> Self {
        Self { code: e.code(), kind: e.kind(), message: one_line(&e.to_string()) }
    }
}

/// Turns batch outcomes into the JSON report, waiting for the tasks first when `--wait` is given.
async fn report_batches(
    client: &ClbClient,
    lb: &str,
    outcomes: Vec<BatchOutcome>,
    wait: &WaitArgs,
) -> Report {
    let mut failures = Vec::new();
    let mut batches = Vec::with_capacity(outcomes.len());
    for BatchOutcome { instance_ids, result } in outcomes {
        let mut report = BatchReport { instance_ids, submitted: None, task: None, error: None };
        match result {
            Ok(submitted) => {
                report.submitted = Some(submitted);
                if let (Submitted::Task { request_id }, true) = (submitted, wait.wait) {
                    match client.wait_task(request_id, &PollBackoff::default(), wait.wait_timeout).await {
                        Ok(state) => {
                            report.task = Some(state);
                            if state == TaskState::Failed {
                                failures.push(format!("task {request_id} on {lb} failed (status 1)"));
                            }
                        }
                        Err(e) => {
                            failures.push(one_line(&e.to_string()));
                            report.error = Some(ErrorReport::from(&e));
                        }
                    }
                }
            }
            Err(e) => {
                failures.push(one_line(&e.to_string()));
                report.error = Some(ErrorReport::from(&e));
            }
        }
        batches.push(report);
    }
    let failure = match failures.len() {
        0 => None,
        1 => failures.pop(),
        n => Some(format!("{} (and {} more failures)", failures[0], n - 1)),
    };
    Report { output: json!({ "loadBalancerId": lb, "batches": batches }), failure }
}

/// A message on one line (API messages may carry newlines).
pub fn one_line(message: &str) -> String {
    message.split(|c: char| c.is_control()).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
}
