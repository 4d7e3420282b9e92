//! `clb-operator clb ...` on CLB API 3.0 (the default): the reads print the API's own answer, the writes go
//! through the operator's cloud seam (batched as the operator batches) and, with `--wait`, poll their tasks.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::clb::{ClbArgs, ClbCommand, Report, WaitArgs, one_line};
use crate::clb::{
    Credentials, DEFAULT_REGION, PollBackoff,
    cloud::{Batch, Cloud, Placement, Submitted, Target, TaskState},
    v3::{self, Action},
    v3_client::V3Client,
    v3_cloud::V3Cloud,
};

/// Runs `args.command` on API 3.0.
pub async fn execute(args: ClbArgs) -> Result<Report, String> {
    let endpoint = args.endpoint.clone().unwrap_or_else(|| {
        // NB: a constant that parses (checked by the CLI tests).
        v3::DEFAULT_ENDPOINT.parse().unwrap_or_else(|_| crate::clb::ClientConfig::default().endpoint)
    });
    let region = if args.region == DEFAULT_REGION { "ap-guangzhou".to_owned() } else { args.region.clone() };
    let credentials = Credentials::from_env().map_err(|e| e.to_string())?;
    let client = V3Client::new(endpoint, credentials, &region, 20)?
        .with_attempts(usize::try_from(args.max_attempts).unwrap_or(4));
    let read = |action: Action, request: Value| {
        let client = client.clone();
        async move {
            let (request_id, answer) =
                client.call::<Value>(action, &request).await.map_err(|e| e.to_string())?;
            Ok::<Report, String>(Report {
                output: json!({"requestId": request_id, "response": answer}),
                failure: None,
            })
        }
    };
    let cloud = V3Cloud::new(client.clone());
    match args.command {
        ClbCommand::DescribeLbs { lbs } => {
            let request = if lbs.is_empty() { json!({}) } else { json!({"LoadBalancerIds": lbs}) };
            read(Action::DescribeLoadBalancers, request).await
        }
        ClbCommand::DescribeListeners { lb } => {
            read(Action::DescribeListeners, json!({"LoadBalancerId": lb})).await
        }
        ClbCommand::DescribeTargets { lb, listeners } => {
            if listeners.is_empty() {
                // Without listeners: a classic CLB's backends, or every listener of an application CLB.
                match cloud.describe(&lb).await.map_err(|e| e.to_string())? {
                    Some(view) if view.kind == crate::clb::cloud::Kind::Classic => {
                        read(Action::DescribeClassicalLBTargets, json!({"LoadBalancerId": lb})).await
                    }
                    _ => read(Action::DescribeTargets, json!({"LoadBalancerId": lb})).await,
                }
            } else {
                read(Action::DescribeTargets, json!({"LoadBalancerId": lb, "ListenerIds": listeners})).await
            }
        }
        ClbCommand::DescribeBackends { .. } => {
            Err("describe-backends is an API 2.0 command: use --api v2, or \
                                                    describe-targets"
                .to_owned())
        }
        ClbCommand::TaskResult { .. } => {
            Err("task-result is an API 2.0 command: use --api v2, or task-status".to_owned())
        }
        ClbCommand::TaskStatus { task } => {
            let state = cloud.task(&task).await.map_err(|e| e.to_string())?;
            Ok(Report { output: json!({"taskId": task, "state": format!("{state:?}")}), failure: None })
        }
        ClbCommand::Register { lb, instances, weight, at, wait } => {
            let targets = targets(&instances, &at)?;
            Ok(report(&cloud, &lb, cloud.register(&lb, &targets, weight).await, &wait).await)
        }
        ClbCommand::Deregister { lb, instances, at, wait } => {
            let targets = targets(&instances, &at)?;
            Ok(report(&cloud, &lb, cloud.deregister(&lb, &targets).await, &wait).await)
        }
        ClbCommand::SetWeight { lb, instances, weight, at, wait } => {
            let targets = targets(&instances, &at)?;
            if targets.iter().any(|t| t.at.is_none()) {
                return Err(
                    "set-weight needs --listener and --port (classic CLBs have no weight call in API 3.0)"
                        .into(),
                );
            }
            Ok(report(&cloud, &lb, cloud.set_weight(&lb, &targets, weight).await, &wait).await)
        }
    }
}

/// The targets named on the command line: on a listener (and rule) at a port, or on a classic CLB.
fn targets(instances: &[String], at: &super::clb::ListenerArgs) -> Result<Vec<Target>, String> {
    let placement = match (&at.listener, at.port) {
        (Some(listener), Some(port)) => {
            Some(Placement { listener_id: listener.clone(), location_id: at.location.clone(), port })
        }
        (None, None) if at.location.is_none() => None,
        _ => return Err("--listener and --port go together (and --location needs them)".into()),
    };
    Ok(instances.iter().map(|i| Target { instance: i.clone(), at: placement.clone() }).collect())
}

/// The JSON report of a write: one entry per call, with its task's end when `--wait` is given.
async fn report(cloud: &V3Cloud, lb: &str, batches: Vec<Batch>, wait: &WaitArgs) -> Report {
    let mut failures = Vec::new();
    let mut out = Vec::new();
    for Batch { targets, result } in batches {
        let listed: Vec<Value> = targets
            .iter()
            .map(|t| match &t.at {
                Some(a) => json!({"instanceId": t.instance, "listenerId": a.listener_id, "locationId": a.location_id, "port": a.port}),
                None => json!({"instanceId": t.instance}),
            })
            .collect();
        let mut entry = json!({"targets": listed});
        match result {
            Ok(Submitted::Task(id)) => {
                entry["taskId"] = json!(id);
                if wait.wait {
                    match wait_task(cloud, &id, wait.wait_timeout).await {
                        Ok(state) => {
                            entry["task"] = json!(format!("{state:?}"));
                            if state == TaskState::Failed {
                                failures.push(format!("task {id} on {lb} failed (status 1)"));
                            }
                        }
                        Err(e) => {
                            failures.push(e.clone());
                            entry["error"] = json!(e);
                        }
                    }
                }
            }
            Ok(Submitted::AlreadyGone) => entry["alreadyGone"] = json!(true),
            Err(e) => {
                let message = one_line(&e.to_string());
                failures.push(message.clone());
                entry["error"] = json!({"kind": e.kind(), "message": message});
            }
        }
        out.push(entry);
    }
    let failure = match failures.len() {
        0 => None,
        1 => failures.pop(),
        n => Some(format!("{} (and {} more failures)", failures[0], n - 1)),
    };
    Report { output: json!({"loadBalancerId": lb, "batches": out}), failure }
}

/// Polls task `id` until it ends (100 ms doubling to 2 s), within `timeout`.
async fn wait_task(cloud: &V3Cloud, id: &str, timeout: Duration) -> Result<TaskState, String> {
    let backoff = PollBackoff::default();
    let started = Instant::now();
    for attempt in 0u32.. {
        let state = cloud.task(id).await.map_err(|e| one_line(&e.to_string()))?;
        if state != TaskState::Running {
            return Ok(state);
        }
        let delay = backoff.delay(attempt);
        if started.elapsed() + delay > timeout {
            break;
        }
        tokio::time::sleep(delay).await;
    }
    Err(format!("task {id} still running after {:?}", started.elapsed()))
}
