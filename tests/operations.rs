//! Running the operator for real: leader election with failover mid-task, and what `/metrics` and `/readyz`
//! tell an on-call engineer.

mod common;

use std::time::Duration;

use clb_operator::{
    api::{TaskAction, TaskState},
    clb::Action,
    emulator::Faults,
};
use common::{OperatorProcess, eventually, free_port, scenario::*};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::{Api, api::DeleteParams};
use serde_json::json;

async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

/// The value of a metric sample line, e.g. `name{labels} 3`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(line_start))?.rsplit(' ').next()?.parse().ok()
}

/// Two replicas: one holds the lease and reconciles, the other stands by; killing the leader while a Deregister
/// task runs lets the standby take over within 20 s and finish polling the same requestId.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_a_running_task_when_the_leader_dies() {
    let (t, emu) = setup("leader").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let (port_a, port_b) = (free_port(), free_port());
    let start = |name: &str, port: u16| {
        let addr = format!("--http-addr=127.0.0.1:{port}");
        let ns = format!("--leader-election-namespace={}", t.ns);
        let args = [addr.as_str(), "--leader-elect", ns.as_str(), "--lease-duration=6s"];
        OperatorProcess::start(&t, &emu.endpoint(), &args, &[("POD_NAME", name)])
    };
    let a = start("replica-a", port_a);
    let leases: Api<Lease> = t.api();
    eventually(WAIT, "replica-a holds the lease", || async {
        let lease = leases.get_opt("clb-operator").await.ok()??;
        (lease.spec?.holder_identity.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = start("replica-b", port_b);
    let readyz_b = format!("http://127.0.0.1:{port_b}/readyz");
    let standby = eventually(WAIT, "replica-b serving", || get(&readyz_b)).await;
    assert_eq!(standby, (200, "standby".to_string()), "a standby is ready but idle");

    binding(&t, "web", LB, false, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;
    let metrics_b = get(&format!("http://127.0.0.1:{port_b}/metrics")).await.unwrap().1;
    assert_eq!(sample(&metrics_b, "clb_operator_leader "), Some(0.0));
    assert_eq!(
        sample(&metrics_b, "clb_operator_reconciles_total"),
        Some(0.0),
        "the standby reconciles nothing"
    );

    emu.set_faults(Faults { task_duration: Duration::from_secs(8), ..emu.faults() }).unwrap();
    Api::<Node>::all(t.client.clone()).delete(&nodes[0].0, &DeleteParams::default()).await.unwrap();
    let running = eventually(WAIT, "a running Deregister task", || async {
        let s = status(&t, "web").await;
        s.tasks.iter().find(|x| x.action == TaskAction::Deregister && x.state == TaskState::Running).cloned()
    })
    .await;
    a.kill();
    let killed = std::time::Instant::now();
    let killed_at_ms = emu.state().calls.last().map(|c| c.at_ms).unwrap_or_default();

    eventually(Duration::from_secs(20), "replica-b polling the same requestId within 20 s", || async {
        emu.state()
            .calls_of(Action::DescribeLoadBalancersTaskResult)
            .any(|c| c.at_ms > killed_at_ms && c.request_id == Some(running.request_id))
            .then_some(())
    })
    .await;
    eprintln!("failover took {:?}", killed.elapsed());
    let s = wait_ready_with(&t, "web", &ids(&nodes[1..])).await;
    assert_eq!(
        s.tasks.iter().find(|x| x.request_id == running.request_id).map(|x| x.state),
        Some(TaskState::Succeeded)
    );
    assert_eq!(deregister_calls(&emu).len(), 1, "the new leader did not submit the task again");
    let lease = leases.get("clb-operator").await.unwrap();
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some("replica-b"));
    drop(b);
}

/// After a deregistration, `/metrics` counts the CLB actions that ran and observes the deregistration latency;
/// `/readyz` turns ready once the caches have synced, and `/healthz` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_work_done() {
    let (t, emu) = setup("metrics").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let port = free_port();
    let addr = format!("--http-addr=127.0.0.1:{port}");
    let _op = OperatorProcess::start(&t, &emu.endpoint(), &[addr.as_str()], &[]);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        eventually(WAIT, "/readyz ok", || async {
            get(&format!("{base}/readyz")).await.filter(|(code, _)| *code == 200)
        })
        .await
        .1,
        "ok"
    );
    assert_eq!(get(&format!("{base}/healthz")).await.map(|r| r.0), Some(200));

    binding(&t, "web", LB, false, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;
    Api::<Node>::all(t.client.clone()).delete(&nodes[0].0, &DeleteParams::default()).await.unwrap();
    wait_ready_with(&t, "web", &ids(&nodes[1..])).await;

    let text = get(&format!("{base}/metrics")).await.unwrap().1;
    let count = |action: &str| {
        sample(&text, &format!("clb_operator_clb_requests_total{{action=\"{action}\",outcome=\"ok\"}}"))
            .unwrap_or(0.0)
    };
    assert!(count("RegisterInstancesWithLoadBalancer") >= 1.0, "{text}");
    assert!(count("DeregisterInstancesFromLoadBalancer") >= 1.0, "{text}");
    assert!(count("DescribeLoadBalancersTaskResult") >= 2.0, "{text}");
    assert!(
        sample(&text, "clb_operator_deregistration_latency_seconds_count").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "clb_operator_reconciles_total").unwrap_or(0.0) >= 1.0, "{text}");
    assert_eq!(sample(&text, "clb_operator_backends{state=\"Registered\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "clb_operator_leader "), Some(1.0));
    assert!(!text.contains(&t.ns), "no object names in metric labels");
}

/// `--log-format json` writes one JSON object per line, with the message and fields.
#[test]
fn json_logs_are_one_object_per_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clb-operator"))
        .args(["--log-format", "json", "run", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let failure = lines.iter().find(|l| l["message"] == "Operator failed").expect("an error line");
    assert_eq!(failure["level"], "ERROR");
    assert!(failure["error"].as_str().is_some_and(|e| e.contains("/nonexistent/kubeconfig")), "{failure}");
}
