//! `clb-operator clb ...`: calls a CLB API v2 endpoint directly. Results are JSON on stdout; a failure is one
//! line on stderr (with the API code and message) and exit status 1.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{Value, json};
use url::Url;

use crate::clb::{
    BatchOutcome, ClbClient, ClbError, ClientConfig, Credentials, DEFAULT_ENDPOINT, DEFAULT_REGION,
    HttpMethod, PollBackoff, RetryConfig, SignMethod, Submitted, TaskState,
};

/// Arguments of `clb-operator clb`. Credentials come only from the environment (`TENCENTCLOUD_SECRET_ID`,
/// `TENCENTCLOUD_SECRET_KEY`, optional `TENCENTCLOUD_SESSION_TOKEN`), so they never show in `ps`.
#[derive(Debug, Args)]
pub struct ClbArgs {
    /// CLB API v2 endpoint URL; its host[:port] and path are signed.
    #[arg(long, env = "CLB_ENDPOINT", default_value = DEFAULT_ENDPOINT, global = true)]
    pub endpoint: Url,
    /// Region sent as the `Region` parameter.
    #[arg(long, env = "TENCENTCLOUD_REGION", default_value = DEFAULT_REGION, global = true)]
    pub region: String,
    /// Signature digest. HmacSHA1 is the default of Tencent's v2 SDK and what the API assumes when no
    /// SignatureMethod is sent.
    #[arg(long, default_value_t = SignMethod::HmacSha1, global = true)]
    pub sign_method: SignMethod,
    /// HTTP method; GET switches to POST by itself when the URL would be too long.
    #[arg(long, default_value_t = HttpMethod::Get, global = true)]
    pub http_method: HttpMethod,
    /// Most instances per Register/Deregister call.
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
    /// List a load balancer's backends (DescribeLoadBalancerBackends).
    DescribeBackends {
        /// Load balancer ID.
        #[arg(long)]
        lb: String,
    },
    /// Add instances to a load balancer (RegisterInstancesWithLoadBalancer), in batches of --max-batch.
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
        /// Waiting for the tasks.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove instances from a load balancer (DeregisterInstancesFromLoadBalancer), in batches of --max-batch.
    Deregister {
        /// Load balancer ID.
        #[arg(long)]
        lb: String,
        /// CVM instance ID; repeatable or comma-separated.
        #[arg(long = "instance", required = true, value_delimiter = ',')]
        instances: Vec<String>,
        /// Waiting for the tasks.
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show the state of an asynchronous task (DescribeLoadBalancersTaskResult).
    TaskResult {
        /// The `requestId` that Register or Deregister returned.
        #[arg(long)]
        request_id: u64,
    },
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
    match execute(args).await {
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
            eprintln!("error: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// What a subcommand prints: its JSON, and the error line if something failed along the way.
struct Report {
    output: Value,
    failure: Option<String>,
}

async fn execute(args: ClbArgs) -> Result<Report, ClbError> {
    let config = ClientConfig {
        endpoint: args.endpoint,
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
        ClbCommand::Register { lb, instances, weight, wait } => {
            let backends: Vec<(String, u32)> = instances.into_iter().map(|id| (id, weight)).collect();
            let outcomes = client.register(&lb, &backends).await;
            Ok(report_batches(&client, &lb, outcomes, &wait).await)
        }
        ClbCommand::Deregister { lb, instances, wait } => {
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
fn one_line(message: &str) -> String {
    message.split(|c: char| c.is_control()).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
}
