//! The reconciler end to end on the legacy CLB API 2.0 (`--clb-api v2`): a real kube-apiserver, the CLB
//! emulator, and the operator, per the Done-when points of the reconciler issue. `tests/v3.rs` is the same on
//! API 3.0, the default.

mod common;

use std::{collections::BTreeSet, time::Duration};

use clb_operator::{
    api::{BackendState, ClbBackendBinding, TaskAction, TaskState},
    clb::Action,
    controller::Config,
    emulator::{EmulatorHandle, Faults},
};
use common::{OperatorProcess, TestNs, eventually, fixtures, scenario::*};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

/// Three nodes are registered; deleting one deregisters exactly its instance, the status shows the task Running
/// with the emulator's requestId, then Succeeded with the instance gone, and Ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_targets_register_all_and_deregister_a_deleted_node() {
    let (t, emu) = setup("node-targets").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 3).await;
    let _op = start_operator_v2(&t, &emu);
    binding(&t, "web", LB, false, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;
    assert_eq!(emu.state().backend_ids(LB).into_iter().collect::<BTreeSet<_>>(), ids(&nodes));

    // Slow the task down so that its Running state is observable.
    emu.set_faults(Faults { task_duration: Duration::from_secs(4), ..emu.faults() }).unwrap();
    let (gone_node, gone_id) = nodes[0].clone();
    Api::<Node>::all(t.client.clone()).delete(&gone_node, &DeleteParams::default()).await.unwrap();
    let running = running_task(&t, "web", TaskAction::Deregister).await;
    assert_eq!(running.instance_ids, std::slice::from_ref(&gone_id));
    let emu_task = emu.state().tasks.iter().find(|x| x.request_id.to_string() == running.request_id).cloned();
    assert!(
        emu_task.is_some_and(|x| x.instance_ids == [gone_id.clone()]),
        "status shows the emulator's requestId"
    );
    let s = status(&t, "web").await;
    let b = s.backends.iter().find(|b| b.instance_id == gone_id).unwrap();
    assert_eq!(
        (b.state, b.request_id.clone(), b.reason.as_deref()),
        (BackendState::Deregistering, Some(running.request_id.clone()), Some("NodeDeleted"))
    );

    let rest: BTreeSet<String> = ids(&nodes[1..]);
    let s = wait_ready_with(&t, "web", &rest).await;
    let done = s.tasks.iter().find(|x| x.request_id == running.request_id).unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert!(done.completed_at.is_some());
    assert_eq!(deregister_calls(&emu), [vec![gone_id.clone()]], "one Deregister, for the deleted node only");
    assert!(!emu.state().backend_ids(LB).contains(&gone_id));
}

/// When every matching pod on node A is terminating (deletionTimestamp set, objects still present), A's instance
/// is deregistered and B's is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_targets_deregister_a_node_whose_pods_all_terminate() {
    let (t, emu) = setup("pod-targets").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let (a, b) = (nodes[0].0.as_str(), nodes[1].0.as_str());
    ready_pods(&t, &[("web-0", a), ("web-1", a), ("web-2", b)]).await;
    let pods: Api<Pod> = t.api();
    let _op = start_operator_v2(&t, &emu);
    binding(&t, "web", LB, true, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;

    // Deleting a bound pod only marks it terminating until its kubelet confirms; none will here.
    pods.delete("web-0", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(deregister_calls(&emu).is_empty(), "node A still runs a Ready pod");
    pods.delete("web-1", &DeleteParams::default()).await.unwrap();
    assert!(
        pods.get("web-1").await.unwrap().metadata.deletion_timestamp.is_some(),
        "pod object still present"
    );

    let s = wait_ready_with(&t, "web", &ids(&nodes[1..])).await;
    assert_eq!(deregister_calls(&emu), [vec![nodes[0].1.clone()]]);
    assert!(s.tasks.iter().any(|x| x.action == TaskAction::Deregister && x.state == TaskState::Succeeded));
    assert!(emu.state().backend_ids(LB).contains(&nodes[1].1), "node B's instance untouched");
}

/// A failed task is retried with backoff while Degraded=True says why; once tasks succeed the binding converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tasks_are_retried_with_backoff_until_they_succeed() {
    let (t, emu) = setup("task-failure").await;
    emu.set_faults(Faults { task_fail_rate: 1.0, ..emu.faults() }).unwrap();
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 1).await;
    let _op = start_operator_v2(&t, &emu);
    binding(&t, "web", LB, false, json!({})).await;

    eventually(WAIT, "Degraded=True TaskFailed after two failed attempts", || async {
        let s = status(&t, "web").await;
        let failed = s.tasks.iter().filter(|x| x.state == TaskState::Failed).count();
        (failed >= 2 && condition(&s, "Degraded") == Some(("True".into(), "TaskFailed".into()))).then_some(())
    })
    .await;
    let submits: Vec<u64> = emu
        .state()
        .calls_of(Action::RegisterInstancesWithLoadBalancer)
        .filter(|c| c.code == 0)
        .map(|c| c.at_ms)
        .collect();
    assert!(submits.len() >= 2);
    assert!(submits[1] - submits[0] >= 1500, "the retry waited for its backoff: {submits:?}");
    let s = status(&t, "web").await;
    assert!(s.backends.is_empty(), "a failed Register leaves the instance unowned: {:?}", s.backends);

    emu.set_faults(Faults { task_fail_rate: 0.0, ..emu.faults() }).unwrap();
    let s = wait_ready_with(&t, "web", &ids(&nodes)).await;
    assert_eq!(condition(&s, "Degraded").map(|c| c.0).as_deref(), Some("False"));
}

/// Instances the binding does not own are never deregistered, also on deletion; instances already on the LB
/// are adopted without a Register call; Deregister removes the owned ones before the finalizer goes, Retain keeps
/// them, and force-finalize releases a binding of an unknown LB with an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_adoption_and_deletion_policies() {
    let t = TestNs::new("ownership").await;
    let tok = token_suffix();
    let foreign = format!("ins-{tok}999");
    let adoptee = format!("ins-{tok}001"); // node 1's instance, already serving before the binding exists
    let emu = emulator(&[&foreign, &adoptee], Duration::from_millis(200)).await;
    let c = emu.credentials();
    t.credentials_secret("clb-credentials", c.secret_id(), c.secret_key()).await;
    let nodes = nodes(&t, &tok, 2).await;
    let _op = start_operator_v2(&t, &emu);
    let api = t.api::<ClbBackendBinding>();
    let registers = |emu: &EmulatorHandle| calls(emu, Action::RegisterInstancesWithLoadBalancer);

    binding(&t, "drop", LB, false, json!({})).await;
    wait_ready_with(&t, "drop", &ids(&nodes)).await;
    assert_eq!(registers(&emu), [vec![nodes[0].1.clone()]], "node 1 is adopted, only node 0 is registered");

    api.delete("drop", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "binding drop gone", || async {
        api.get_opt("drop").await.unwrap().is_none().then_some(())
    })
    .await;
    let deregistered: BTreeSet<String> = deregister_calls(&emu).into_iter().flatten().collect();
    assert_eq!(deregistered, ids(&nodes), "every owned instance was deregistered before the finalizer went");
    assert_eq!(emu.state().backend_ids(LB), std::slice::from_ref(&foreign), "the foreign instance stays");

    binding(&t, "keep", LB, false, json!({"deletionPolicy": "Retain"})).await;
    wait_ready_with(&t, "keep", &ids(&nodes)).await;
    let before = deregister_calls(&emu).len();
    api.delete("keep", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "binding keep gone", || async {
        api.get_opt("keep").await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(deregister_calls(&emu).len(), before, "Retain makes no Deregister call");
    let on_lb: BTreeSet<String> = emu.state().backend_ids(LB).into_iter().collect();
    assert!(on_lb.is_superset(&ids(&nodes)) && on_lb.contains(&foreign), "retained: {on_lb:?}");

    binding(&t, "lost", "lb-doesnotexist", false, json!({})).await;
    eventually(WAIT, "Degraded LoadBalancerNotFound", || async {
        let s = status(&t, "lost").await;
        (condition(&s, "Degraded") == Some(("True".into(), "LoadBalancerNotFound".into()))).then_some(())
    })
    .await;
    let force = json!({"metadata": {"annotations": {"clb.tke.dev/force-finalize": "true"}}});
    api.patch("lost", &PatchParams::default(), &Patch::Merge(&force)).await.unwrap();
    api.delete("lost", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "binding lost gone", || async {
        api.get_opt("lost").await.unwrap().is_none().then_some(())
    })
    .await;
    let events: Api<Event> = t.api();
    eventually(WAIT, "a ForceFinalized event", || async {
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items.iter().any(|e| e.reason.as_deref() == Some("ForceFinalized")).then_some(())
    })
    .await;
    assert!(
        deregister_calls(&emu).iter().flatten().all(|i| i != &foreign),
        "the foreign instance was never touched"
    );
}

/// The API server rejects invalid bindings with the CRD's own messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_rejects_invalid_bindings_with_readable_messages() {
    let t = TestNs::new("validation").await;
    let api = t.api::<ClbBackendBinding>();
    // Selecting every node, without credentials: valid but for what each case changes.
    let all_nodes = |name: &str, lb: &str| {
        fixtures::binding(name, lb).targets(json!({"nodeSelector": {}})).no_credentials()
    };
    let cases = [
        (all_nodes("bad-lb", "LB_1"), "loadBalancerId must be 'lb-'"),
        (
            all_nodes("both", "lb-a1").targets(json!({"nodeSelector": {}, "podSelector": {}})),
            "exactly one of nodeSelector and podSelector",
        ),
        (all_nodes("none", "lb-a1").targets(json!({})), "exactly one of nodeSelector and podSelector"),
        (all_nodes("heavy", "lb-a1").with(json!({"weight": 101})), "weight must be between 0 and 100"),
    ];
    for (b, message) in cases {
        let name = b.name();
        let err = b.try_create(&api).await.expect_err(name).to_string();
        assert!(err.contains(message), "{name}: {err}");
    }
    let created = all_nodes("ok", "lb-a1").try_create(&api).await.unwrap();
    assert_eq!(created.spec.weight, 10, "defaults are applied by the API server");
    let change = json!({"spec": {"loadBalancerId": "lb-b2"}});
    let err = api.patch("ok", &PatchParams::default(), &Patch::Merge(&change)).await.unwrap_err().to_string();
    assert!(err.contains("loadBalancerId is immutable"), "{err}");
}

/// 45 nodes removed at once are deregistered in 3 full calls, plus at most one for the first event (submitted
/// at once, before the burst shows); a resync of the unchanged binding writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_removal_is_batched_and_resync_is_free() {
    let (t, emu) = setup("batching").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 100).await;
    let config = Config { resync: Duration::from_secs(1), ..run_config_v2(&t, &emu) };
    let _op = start_operator_with(&t, config);
    binding(&t, "web", LB, false, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;

    // Several resyncs of an unchanged binding: no CLB call at all, let alone a write.
    let calls_before = emu.state().calls.len();
    let rv_before = t.api::<ClbBackendBinding>().get("web").await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(emu.state().calls.len(), calls_before, "resync made CLB calls");
    let rv_after = t.api::<ClbBackendBinding>().get("web").await.unwrap().resource_version();
    assert_eq!(rv_before, rv_after, "resync rewrote an unchanged status");

    // Remove 45 nodes in one request.
    let doomed: Vec<(String, String)> = nodes[..45].to_vec();
    let api: Api<Node> = Api::all(t.client.clone());
    for (name, _) in &doomed {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"doomed": t.ns}}})),
        )
        .await
        .unwrap();
    }
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&format!("doomed={}", t.ns)),
    )
    .await
    .unwrap();
    wait_ready_with(&t, "web", &ids(&nodes[45..])).await;
    let calls = deregister_calls(&emu);
    let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    let full = sizes.iter().filter(|n| **n == 20).count();
    assert!(
        (3..=4).contains(&calls.len()) && full >= 2,
        "45 instances in 3 calls (+1 for the leading edge), got {sizes:?}"
    );
    assert_eq!(calls.iter().flatten().cloned().collect::<BTreeSet<_>>(), ids(&doomed));
}

/// Killed with SIGKILL while a 5 s Deregister task runs, a restarted operator polls the same requestId instead of
/// submitting again, and reaches the right final status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_operator_resumes_polling_the_same_task() {
    let (t, emu) = setup("crash-safety").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let op = OperatorProcess::start(&t, &emu.endpoint(), &[], &[]);
    binding(&t, "web", LB, false, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;

    emu.set_faults(Faults { task_duration: Duration::from_secs(5), ..emu.faults() }).unwrap();
    let (gone_node, gone_id) = nodes[0].clone();
    Api::<Node>::all(t.client.clone()).delete(&gone_node, &DeleteParams::default()).await.unwrap();
    let running = running_task(&t, "web", TaskAction::Deregister).await;
    op.kill();
    let killed_at_ms = emu.state().calls.last().map(|c| c.at_ms).unwrap_or_default();

    let _op = OperatorProcess::start(&t, &emu.endpoint(), &[], &[]);
    let s = wait_ready_with(&t, "web", &ids(&nodes[1..])).await;
    let task = s.tasks.iter().find(|x| x.request_id == running.request_id).unwrap();
    assert_eq!(task.state, TaskState::Succeeded, "the same requestId finished");
    let deregisters: Vec<Vec<String>> = deregister_calls(&emu);
    assert_eq!(deregisters, [vec![gone_id]], "no second Deregister after the restart");
    let polls_after_restart = emu
        .state()
        .calls_of(Action::DescribeLoadBalancersTaskResult)
        .filter(|c| {
            c.at_ms > killed_at_ms && c.request_id.map(|r| r.to_string()) == Some(running.request_id.clone())
        })
        .count();
    assert!(polls_after_restart >= 1, "the restarted operator polled requestId {}", running.request_id);
}

/// Bindings that exist before the operator starts all wait for the caches together and are all reconciled
/// (kube's store readiness future wakes only one of several concurrent waiters; the operator must not rely
/// on it for each reconcile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_waiting_together_for_the_caches_are_all_reconciled() {
    let (t, emu) = setup("startup-burst").await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    for i in 0..12 {
        binding(&t, &format!("web-{i}"), LB, false, json!({})).await;
    }
    let _op = start_operator_v2(&t, &emu);
    for i in 0..12 {
        wait_ready_with(&t, &format!("web-{i}"), &ids(&nodes)).await;
    }
}
