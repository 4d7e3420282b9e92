//! Running the operator for real: leader election with failover mid-task, and what `/metrics` and `/readyz`
//! tell an on-call engineer.

mod common;

use std::time::Duration;

use clb_operator::{
    api::{ClbBackendBinding, TaskAction, TaskState},
    clb::Action,
    emulator::Faults,
};
use common::{OperatorProcess, eventually, http_get, sample, scenario::*, wait_readyz};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

/// Two replicas: one holds the lease and reconciles, the other stands by; killing the leader while a Deregister
/// task runs lets the standby take over within 20 s and finish polling the same requestId.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_a_running_task_when_the_leader_dies() {
    let (t, emu) = setup("leader").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let start = |name: &str| {
        let ns = format!("--leader-election-namespace={}", t.ns);
        let args = ["--leader-elect", ns.as_str(), "--lease-duration=6s"];
        OperatorProcess::start(&t, &emu.endpoint(), &args, &[("POD_NAME", name)])
    };
    let a = start("replica-a");
    let leases: Api<Lease> = t.api();
    eventually(WAIT, "replica-a holds the lease", || async {
        let lease = leases.get_opt("clb-operator").await.ok()??;
        (lease.spec?.holder_identity.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = start("replica-b");
    let readyz_b = format!("{}/readyz", b.base_url());
    let standby = eventually(WAIT, "replica-b serving", || http_get(&readyz_b)).await;
    assert_eq!(standby, (200, "standby".to_string()), "a standby is ready but idle");

    binding(&t, "web", LB, false, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;
    let metrics_b = b.metrics().await;
    assert_eq!(sample(&metrics_b, "clb_operator_leader "), Some(0.0));
    assert_eq!(
        sample(&metrics_b, "clb_operator_reconciles_total"),
        Some(0.0),
        "the standby reconciles nothing"
    );

    emu.set_faults(Faults { task_duration: Duration::from_secs(8), ..emu.faults() }).unwrap();
    Api::<Node>::all(t.client.clone()).delete(&nodes[0].0, &DeleteParams::default()).await.unwrap();
    let running = running_task(&t, "web", TaskAction::Deregister).await;
    a.kill();
    let killed = std::time::Instant::now();
    let killed_at_ms = emu.state().calls.last().map(|c| c.at_ms).unwrap_or_default();

    eventually(Duration::from_secs(20), "replica-b polling the same requestId within 20 s", || async {
        emu.state()
            .calls_of(Action::DescribeLoadBalancersTaskResult)
            .any(|c| {
                c.at_ms > killed_at_ms
                    && c.request_id.map(|r| r.to_string()) == Some(running.request_id.clone())
            })
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
/// `/readyz` turns ready once the caches have synced, and `/healthz` answers. A task that ends quickly costs two
/// status writes: its intent before the call, and its end (the requestId waits for it in memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_work_done() {
    let (t, emu) = setup("metrics").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let op = OperatorProcess::start(&t, &emu.endpoint(), &[], &[]);
    let base = op.base_url();
    assert_eq!(wait_readyz(&base).await, "ok");
    assert_eq!(http_get(&format!("{base}/healthz")).await.map(|r| r.0), Some(200));

    binding(&t, "web", LB, false, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;
    let status_writes = |text: &str| -> f64 {
        (common::samples(text, "clb_operator_kube_request_duration_seconds_count"))
            .filter(|(l, _)| l.get("resource") == Some(&"clbbackendbindings/status"))
            .filter(|(l, _)| l.get("verb") != Some(&"get"))
            .map(|(_, n)| n)
            .sum()
    };
    let before = status_writes(&op.metrics().await);
    Api::<Node>::all(t.client.clone()).delete(&nodes[0].0, &DeleteParams::default()).await.unwrap();
    wait_ready_with(&t, "web", &ids(&nodes[1..])).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // a write after the one that showed Ready would count too

    let text = op.metrics().await;
    assert_eq!(status_writes(&text) - before, 2.0, "the Deregister's intent and its end: {text}");
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

/// The pod cache holds pods only while a binding in their namespace targets pods: none before, all of the
/// namespace's once one does, none again when it turns to nodes, and all again when it turns back; the binding
/// is reconciled correctly through each change of scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_cached_only_for_pod_targeted_bindings() {
    let (t, emu) = setup("pod-scope").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let (a, b) = (nodes[0].0.as_str(), nodes[1].0.as_str());
    ready_pods(&t, &[("web-0", a), ("web-1", a), ("web-2", b)]).await;
    let op = OperatorProcess::start(&t, &emu.endpoint(), &[], &[]);
    wait_readyz(&op.base_url()).await;
    let cached = |kind: &'static str| {
        let op = &op;
        async move { sample(&op.metrics().await, &format!("clb_operator_cached_objects{{kind=\"{kind}\"}}")) }
    };
    let cached_pods = async |want: f64, what: &str| {
        eventually(WAIT, what, || async { cached("pod").await.filter(|n| *n == want) }).await;
    };
    assert!(cached("node").await.is_some_and(|n| n >= 2.0), "nodes are cached");
    assert_eq!(cached("pod").await, Some(0.0), "no binding targets pods: no pod is cached");

    binding(&t, "web", LB, true, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;
    cached_pods(3.0, "the namespace's 3 pods cached").await;

    let api: Api<ClbBackendBinding> = t.api();
    let to_nodes = json!({"spec": {"targets": {"podSelector": null, "nodeSelector": {"matchLabels": {"clb-test": t.ns}}}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&to_nodes)).await.unwrap();
    cached_pods(0.0, "the pods let go once the binding targets nodes").await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;

    // Back to pods, with node A's pods gone meanwhile: the new list must see that.
    let pods: Api<Pod> = t.api();
    for name in ["web-0", "web-1"] {
        pods.delete(name, &DeleteParams::default().grace_period(0)).await.unwrap();
    }
    let to_pods =
        json!({"spec": {"targets": {"nodeSelector": null, "podSelector": {"matchLabels": {"app": "web"}}}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&to_pods)).await.unwrap();
    wait_ready_with(&t, "web", &ids(&nodes[1..])).await;
    cached_pods(1.0, "the one remaining pod cached").await;
    assert_eq!(deregister_calls(&emu), [vec![nodes[0].1.clone()]], "node A left once its pods were gone");
}

/// A restarted operator reconciles a pod-targeted binding from a complete pod list: no Register or Deregister
/// (a reconcile that read the pod cache before its list was in would deregister every backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_pod_backends_without_writes() {
    let (t, emu) = setup("pod-restart").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 3).await;
    let on: Vec<(String, &str)> = (0..6).map(|i| (format!("web-{i}"), nodes[i % 3].0.as_str())).collect();
    ready_pods(&t, &on.iter().map(|(p, n)| (p.as_str(), *n)).collect::<Vec<_>>()).await;
    let first = OperatorProcess::start(&t, &emu.endpoint(), &[], &[]);
    binding(&t, "web", LB, true, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;
    first.kill();
    let writes = || {
        emu.state()
            .calls
            .iter()
            .filter(|c| c.action.starts_with("Register") || c.action.starts_with("Deregister"))
            .count()
    };
    let before = writes();
    for round in 0..3 {
        // No settle time: a reconcile sends what it decides before it counts as done, so a decision from a
        // partial pod list would show as a write by the time the first reconcile is counted.
        let op = OperatorProcess::start(&t, &emu.endpoint(), &["--settle=0s"], &[]);
        eventually(WAIT, "the binding reconciled by the restarted operator", || async {
            sample(&op.metrics().await, "clb_operator_reconciles_total").filter(|n| *n >= 1.0)
        })
        .await;
        op.kill();
        assert_eq!(writes(), before, "round {round}: CLB writes after a restart");
    }
    assert_eq!(emu.state().backend_ids(LB), ids(&nodes).into_iter().collect::<Vec<_>>());
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
