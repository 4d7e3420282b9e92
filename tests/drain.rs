//! Node drain flows end to end, with kwok-managed nodes and pods: `kubectl drain`, autoscaler and Karpenter
//! taints, the exclusion label, cordon, and `clb-operator wait-drained`.

mod common;

use std::{
    process::{Child, Command, ExitStatus},
    time::Duration,
};

use clb_operator::{
    api::{BackendState, ClbBackendBinding, DEREGISTERED_AT_ANNOTATION},
    emulator::{EmulatorHandle, Faults},
};
use common::{
    TestNs, eventually,
    fixtures::{NodeFixture, PodFixture},
    scenario::*,
    spawn_piped,
};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

/// A finalizer that keeps evicted test pods terminating until the test lets them go, standing in for a pod's
/// grace period (kwok would otherwise delete them at once).
const HOLD: &str = "clb.tke.dev/test-hold";

fn wait_drained(t: &TestNs, node: &str, timeout: &str) -> Child {
    spawn_piped(
        Command::new(env!("CARGO_BIN_EXE_clb-operator"))
            .args(["wait-drained", node, "--timeout", timeout])
            .arg("--kubeconfig")
            .arg(&t.plane.kubeconfig),
    )
}

fn finish(child: Child) -> (ExitStatus, String) {
    let out = child.wait_with_output().unwrap();
    (out.status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn node_patch(t: &TestNs, name: &str, patch: serde_json::Value) {
    let api: Api<Node> = Api::all(t.client.clone());
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// Waits until `instance` is Deregistering because of `reason`, then until it has left the binding, and checks
/// that its node still exists and the emulator no longer has it.
async fn expect_deregistered(t: &TestNs, emu: &EmulatorHandle, node: &str, instance: &str, reason: &str) {
    eventually(WAIT, &format!("{instance} Deregistering because of {reason}"), || async {
        let s = status(t, "web").await;
        s.backends
            .iter()
            .any(|b| {
                b.instance_id == instance
                    && b.state == BackendState::Deregistering
                    && b.reason.as_deref() == Some(reason)
            })
            .then_some(())
    })
    .await;
    eventually(WAIT, &format!("{instance} gone from the binding"), || async {
        let s = status(t, "web").await;
        (!s.backends.iter().any(|b| b.instance_id == instance) && is_ready(&s)).then_some(())
    })
    .await;
    assert!(!emu.state().backend_ids(LB).contains(&instance.to_string()));
    let n = Api::<Node>::all(t.client.clone()).get(node).await.expect("the node still exists");
    assert!(n.annotations().contains_key(DEREGISTERED_AT_ANNOTATION), "{node} carries the drained mark");
}

/// `kubectl drain` of the node that runs the only matching pods of a pod-targeted binding: the Deregister goes
/// out while the pods are still terminating, and `wait-drained` returns before the drain command does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_deregisters_while_pods_terminate() {
    let (t, emu) = setup("drain-pods").await;
    let tok = token_suffix();
    let nodes = kwok_nodes(&t, &tok, 2).await;
    let pods: Api<Pod> = t.api();
    for (i, node) in [0, 0, 1].into_iter().enumerate() {
        PodFixture::new(format!("web-{i}")).app("web").on(&nodes[node].0).held(HOLD).create(&pods).await;
    }
    let _op = start_operator(&t, &emu);
    binding(&t, "web", LB, true, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;

    let (node_a, ins_a) = nodes[0].clone();
    let drain = spawn_piped(
        Command::new(common::kubectl_bin())
            .args(["drain", &node_a, "--ignore-daemonsets", "--force", "--timeout=60s"])
            .arg("--kubeconfig")
            .arg(&t.plane.kubeconfig),
    );
    eventually(WAIT, "a Deregister of node A's instance", || async {
        deregister_calls(&emu).iter().any(|c| c == std::slice::from_ref(&ins_a)).then_some(())
    })
    .await;
    for name in ["web-0", "web-1"] {
        let pod = pods.get(name).await.unwrap();
        assert!(
            pod.metadata.deletion_timestamp.is_some(),
            "{name} is terminating, not gone, at deregistration"
        );
    }

    let waiter = wait_drained(&t, &node_a, "30s");
    let (code, out) = tokio::task::spawn_blocking(move || finish(waiter)).await.unwrap();
    assert!(code.success(), "wait-drained failed: {out}");
    assert!(out.contains("deregistered from every load balancer"), "{out}");
    let mut drain = drain;
    assert!(drain.try_wait().unwrap().is_none(), "wait-drained returned before the drain command");

    // Let the pods go: the drain completes.
    for name in ["web-0", "web-1"] {
        pods.patch(name, &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}})))
            .await
            .unwrap();
    }
    let (code, out) = tokio::task::spawn_blocking(move || finish(drain)).await.unwrap();
    assert!(code.success(), "kubectl drain failed: {out}");
    assert_eq!(deregister_calls(&emu), [vec![ins_a]], "node B's instance untouched");
    let _ = pods
        .patch("web-2", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"finalizers": null}})))
        .await;
}

/// Drain taints deregister while the node still exists, and removing one registers the node again; Karpenter's
/// taint, the exclusion label (even "false") and a user's own taint deregister too; cordon only with onCordon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_signals_deregister_while_the_node_exists() {
    let (t, emu) = setup("drain-signals").await;
    emu.set_faults(Faults { task_duration: Duration::from_secs(3), ..emu.faults() }).unwrap();
    let tok = token_suffix();
    let nodes = kwok_nodes(&t, &tok, 5).await;
    let _op = start_operator(&t, &emu);
    let drain = json!({"drain": {"taints": ["ToBeDeletedByClusterAutoscaler", "karpenter.sh/disrupted", "example.com/node-terminating"]}});
    binding(&t, "web", LB, false, drain).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;

    let taint = |key: &str| json!({"spec": {"taints": [{"key": key, "value": "1", "effect": "NoSchedule"}]}});
    node_patch(&t, &nodes[0].0, taint("ToBeDeletedByClusterAutoscaler")).await;
    expect_deregistered(&t, &emu, &nodes[0].0, &nodes[0].1, "Taint/ToBeDeletedByClusterAutoscaler").await;

    // The autoscaler changed its mind: the taint goes, the node serves again and loses the drained mark.
    node_patch(&t, &nodes[0].0, json!({"spec": {"taints": null}})).await;
    wait_ready_with(&t, "web", &ids(&nodes[..])).await;
    eventually(WAIT, "the drained mark removed", || async {
        let n = Api::<Node>::all(t.client.clone()).get(&nodes[0].0).await.ok()?;
        (!n.annotations().contains_key(DEREGISTERED_AT_ANNOTATION)).then_some(())
    })
    .await;

    node_patch(&t, &nodes[1].0, taint("karpenter.sh/disrupted")).await;
    expect_deregistered(&t, &emu, &nodes[1].0, &nodes[1].1, "Taint/karpenter.sh/disrupted").await;
    let exclude =
        json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "false"}}});
    node_patch(&t, &nodes[2].0, exclude).await;
    expect_deregistered(&t, &emu, &nodes[2].0, &nodes[2].1, "ExclusionLabel").await;
    node_patch(&t, &nodes[3].0, taint("example.com/node-terminating")).await;
    expect_deregistered(&t, &emu, &nodes[3].0, &nodes[3].1, "Taint/example.com/node-terminating").await;

    node_patch(&t, &nodes[4].0, json!({"spec": {"unschedulable": true}})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = status(&t, "web").await;
    assert!(registered(&s).contains(&nodes[4].1), "cordon alone does not deregister by default");
    let on_cordon = json!({"spec": {"drain": {"onCordon": true}}});
    t.api::<ClbBackendBinding>()
        .patch("web", &PatchParams::default(), &Patch::Merge(&on_cordon))
        .await
        .unwrap();
    expect_deregistered(&t, &emu, &nodes[4].0, &nodes[4].1, "Cordoned").await;
}

/// A selected node without an instance ID gets an event and is skipped; `wait-drained` returns at once for a
/// node no binding owns, and times out (non-zero, naming the owner) for a node that still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_ids_and_unowned_nodes_behave() {
    let (t, emu) = setup("drain-edges").await;
    let tok = token_suffix();
    let nodes = kwok_nodes(&t, &tok, 1).await;
    let anonymous = format!("{}-anon", t.ns);
    NodeFixture::new(&anonymous).label("clb-test", &t.ns).create(&t.client).await;
    let _op = start_operator(&t, &emu);
    binding(&t, "web", LB, false, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;
    let events: Api<Event> = t.api();
    let note = eventually(WAIT, "an InstanceIdMissing event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InstanceIdMissing"))
            .and_then(|e| e.message)
    })
    .await;
    assert!(note.contains(&anonymous), "{note}");

    let started = std::time::Instant::now();
    let (code, out) = finish(wait_drained(&t, &anonymous, "30s"));
    assert!(code.success(), "{out}");
    assert!(out.contains("no binding owns its CVM"), "{out}");
    eprintln!("wait-drained on an unowned node took {:?}", started.elapsed());

    let (code, out) = finish(wait_drained(&t, &nodes[0].0, "1s"));
    assert!(!code.success(), "a serving node is not drained");
    assert!(out.contains(&format!("{}/web", t.ns)) && out.contains(&nodes[0].1), "{out}");
}
