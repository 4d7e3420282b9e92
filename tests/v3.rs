//! The reconciler end to end on CLB API 3.0, the default: application CLBs with a TCP listener and an HTTP rule,
//! classic CLBs through the ClassicalLB actions, batch calls, crash safety, and specs that do not fit the load
//! balancer. A real kube-apiserver, the CLB emulator (checking TC3 signatures), and the operator.

mod common;

use std::{collections::BTreeSet, time::Duration};

use clb_operator::{
    api::{BackendState, ClbBackendBinding, ClbBackendBindingStatus, TaskAction, TaskState},
    clb::{
        cloud::ClbApi,
        v3::{Action, Empty},
        v3_client::V3Client,
    },
    controller::Config,
    emulator::{EmulatorConfig, EmulatorHandle, Faults, SeedListener, SeedRule},
};
use common::{OperatorProcess, TestNs, eventually, fixtures, scenario::*};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// The application load balancer of these tests.
const APP: &str = "lb-app00001";
/// Its TCP listener.
const TCP: &str = "lbl-tcp00001";
/// Its HTTP listener, with one rule.
const HTTP: &str = "lbl-http0001";
/// The HTTP listener's rule.
const RULE: &str = "loc-web00001";

fn listeners() -> Vec<SeedListener> {
    let rule = SeedRule { location_id: RULE.into(), domain: "web.example".into(), url: "/".into() };
    vec![
        SeedListener {
            load_balancer_id: APP.into(),
            listener_id: TCP.into(),
            protocol: "TCP".into(),
            port: 80,
            rules: vec![],
        },
        SeedListener {
            load_balancer_id: APP.into(),
            listener_id: HTTP.into(),
            protocol: "HTTP".into(),
            port: 8080,
            rules: vec![rule],
        },
    ]
}

/// A test namespace with credentials, and an emulator holding the application LB and the classic `LB`.
async fn setup_v3(test: &str, config: impl FnOnce(&mut EmulatorConfig)) -> (TestNs, EmulatorHandle) {
    let t = TestNs::new(test).await;
    let mut c = fixtures::emulator_config(Duration::from_millis(300), vec![fixtures::seed(LB, vec![])]);
    c.listeners = listeners();
    config(&mut c);
    let emu = fixtures::spawn_emulator(c).await;
    let creds = emu.credentials();
    t.credentials_secret("clb-credentials", creds.secret_id(), creds.secret_key()).await;
    (t, emu)
}

/// The operator's configuration on API 3.0, the default, against the emulator's `/`.
fn v3_config(t: &TestNs, emu: &EmulatorHandle) -> Config {
    let mut config = run_config(t, emu);
    config.api = ClbApi::V3;
    config.clb.endpoint = emu.v3_endpoint();
    config
}

/// The spec's listeners: the TCP listener at 30080, the HTTP rule (by domain and url) at 30081.
fn spec_listeners() -> serde_json::Value {
    json!({"listeners": [
        {"listenerId": TCP, "port": 30080},
        {"listenerId": HTTP, "domain": "web.example", "url": "/", "port": 30081},
    ]})
}

/// (listener, rule, instance, port) of every target the emulator has bound on `lb`.
fn bound(emu: &EmulatorHandle, lb: &str) -> BTreeSet<(String, Option<String>, String, u16)> {
    let state = emu.state();
    let targets = state.targets.get(lb).cloned().unwrap_or_default();
    targets.into_iter().map(|t| (t.listener_id, t.location_id, t.instance_id, t.port)).collect()
}

/// Our targets for `instances`: each on both listeners.
fn ours(instances: &BTreeSet<String>) -> BTreeSet<(String, Option<String>, String, u16)> {
    let mut out = BTreeSet::new();
    for i in instances {
        out.insert((TCP.to_owned(), None, i.clone(), 30080));
        out.insert((HTTP.to_owned(), Some(RULE.to_owned()), i.clone(), 30081));
    }
    out
}

/// The targets the status shows Registered, in the same form.
fn registered_targets(s: &ClbBackendBindingStatus) -> BTreeSet<(String, Option<String>, String, u16)> {
    (s.backends.iter())
        .filter(|b| b.state == BackendState::Registered)
        .filter_map(|b| Some((b.listener_id.clone()?, b.location_id.clone(), b.instance_id.clone(), b.port?)))
        .collect()
}

/// Waits until binding `name` is Ready owning exactly `targets`.
async fn wait_targets(
    t: &TestNs,
    name: &str,
    targets: &BTreeSet<(String, Option<String>, String, u16)>,
) -> ClbBackendBindingStatus {
    eventually(WAIT, &format!("{name} Ready with {} targets ({})", targets.len(), t.logs_hint()), || async {
        let s = status(t, name).await;
        (is_ready(&s) && &registered_targets(&s) == targets && s.backends.len() == targets.len()).then_some(s)
    })
    .await
}

/// Successful calls of a v3 `action`: the instance ids each named.
fn v3_calls(emu: &EmulatorHandle, action: Action) -> Vec<Vec<String>> {
    let state = emu.state();
    state
        .calls
        .iter()
        .filter(|c| c.action == action.as_str() && c.error.is_none())
        .map(|c| c.instance_ids.clone())
        .collect()
}

/// Binds a target the operator does not own, with a client of our own, and waits for its task.
async fn foreign_target(emu: &EmulatorHandle) {
    let creds = emu.credentials().clone();
    let client = V3Client::new(emu.v3_endpoint(), creds, "gz", 20).unwrap();
    let request = json!({"LoadBalancerId": APP, "ListenerId": TCP,
        "Targets": [{"InstanceId": "ins-foreign", "Port": 8080, "Weight": 10}]});
    client.call::<Empty>(Action::RegisterTargets, &request).await.unwrap();
    eventually(WAIT, "the foreign target bound", || async {
        bound(emu, APP).iter().any(|t| t.2 == "ins-foreign").then_some(())
    })
    .await;
}

/// Three nodes over two listeners (TCP and an HTTP rule) are six targets; deleting a node removes both of its
/// targets in one batch call, the status shows them gone only after DescribeTaskStatus reports success, and a
/// target the operator does not own on the same listener is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_register_and_a_deleted_node_leaves_both_in_one_batch() {
    let (t, emu) = setup_v3("v3-listeners", |_| {}).await;
    foreign_target(&emu).await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 3).await;
    let _op = start_operator_with(&t, v3_config(&t, &emu));
    binding(&t, "web", APP, false, spec_listeners()).await;
    let s = wait_targets(&t, "web", &ours(&ids(&nodes))).await;
    assert_eq!(s.desired, 6, "3 instances x 2 listeners");
    let registers = v3_calls(&emu, Action::BatchRegisterTargets);
    assert_eq!(registers.len(), 1, "six targets in one batch call: {registers:?}");
    let mut expected = ours(&ids(&nodes));
    expected.insert((TCP.into(), None, "ins-foreign".into(), 8080));
    assert_eq!(bound(&emu, APP), expected);

    emu.set_faults(Faults { task_duration: Duration::from_secs(4), ..emu.faults() }).unwrap();
    let (gone_node, gone_id) = nodes[0].clone();
    Api::<Node>::all(t.client.clone()).delete(&gone_node, &DeleteParams::default()).await.unwrap();
    let running = running_task(&t, "web", TaskAction::Deregister).await;
    assert_eq!(running.instance_ids, std::slice::from_ref(&gone_id));
    assert_eq!(running.targets.len(), 2, "both listeners' targets: {:?}", running.targets);
    let s = status(&t, "web").await;
    let leaving: Vec<_> = s.backends.iter().filter(|b| b.instance_id == gone_id).collect();
    assert_eq!(leaving.len(), 2, "still shown while the task runs");
    assert!(leaving.iter().all(|b| b.state == BackendState::Deregistering
        && b.request_id.as_deref() == Some(running.request_id.as_str())));

    let rest: BTreeSet<String> = ids(&nodes[1..]);
    let s = wait_targets(&t, "web", &ours(&rest)).await;
    let done = s.tasks.iter().find(|x| x.request_id == running.request_id).unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    let deregisters = v3_calls(&emu, Action::BatchDeregisterTargets);
    assert_eq!(deregisters, [vec![gone_id.clone(), gone_id.clone()]], "one batch call, both targets");
    let state = emu.state();
    let polls = state.calls.iter().filter(|c| {
        c.action == "DescribeTaskStatus" && c.task_id.as_deref() == Some(running.request_id.as_str())
    });
    assert!(polls.count() >= 1, "the task was polled by its RequestId");
    let mut expected = ours(&rest);
    expected.insert((TCP.into(), None, "ins-foreign".into(), 8080));
    assert_eq!(bound(&emu, APP), expected, "the foreign target is untouched");
}

/// Killed with SIGKILL while a 4 s BatchDeregisterTargets task runs, a restarted operator polls the same
/// RequestId and never submits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_operator_resumes_polling_the_same_request_id() {
    let (t, emu) = setup_v3("v3-crash", |_| {}).await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let op = OperatorProcess::start(&t, &emu.v3_endpoint(), &[], &[]);
    binding(&t, "web", APP, false, spec_listeners()).await;
    wait_targets(&t, "web", &ours(&ids(&nodes))).await;

    emu.set_faults(Faults { task_duration: Duration::from_secs(4), ..emu.faults() }).unwrap();
    let (gone_node, gone_id) = nodes[0].clone();
    Api::<Node>::all(t.client.clone()).delete(&gone_node, &DeleteParams::default()).await.unwrap();
    let running = running_task(&t, "web", TaskAction::Deregister).await;
    op.kill();
    let killed_at_ms = emu.state().calls.last().map(|c| c.at_ms).unwrap_or_default();

    let _op = OperatorProcess::start(&t, &emu.v3_endpoint(), &[], &[]);
    let s = wait_targets(&t, "web", &ours(&ids(&nodes[1..]))).await;
    let task = s.tasks.iter().find(|x| x.request_id == running.request_id).unwrap();
    assert_eq!(task.state, TaskState::Succeeded, "the same RequestId finished");
    assert_eq!(
        v3_calls(&emu, Action::BatchDeregisterTargets),
        [vec![gone_id.clone(), gone_id]],
        "no resubmission"
    );
    let state = emu.state();
    let polled = state.calls.iter().filter(|c| {
        c.at_ms > killed_at_ms
            && c.action == "DescribeTaskStatus"
            && c.task_id.as_deref() == Some(running.request_id.as_str())
    });
    assert!(polled.count() >= 1, "the restarted operator polled RequestId {}", running.request_id);
}

/// When a batch call names one listener as failed, the other listener's target goes at once and only the
/// failed listener's target is submitted again; with batch calls that are no tasks (applied at once, the
/// RequestId unknown to DescribeTaskStatus), the result is confirmed from DescribeTargets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_failure_retries_only_the_failed_listener() {
    let (t, emu) = setup_v3("v3-partial", |c| c.batch_sync = true).await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let _op = start_operator_with(&t, v3_config(&t, &emu));
    binding(&t, "web", APP, false, spec_listeners()).await;
    let s = wait_targets(&t, "web", &ours(&ids(&nodes))).await;
    assert!(
        s.tasks.iter().all(|x| x.state == TaskState::Succeeded),
        "confirmed from the targets: {:?}",
        s.tasks
    );

    emu.fail_listeners(&[HTTP]);
    let (gone_node, gone_id) = nodes[0].clone();
    Api::<Node>::all(t.client.clone()).delete(&gone_node, &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "the TCP target gone, the HTTP one kept and reported", || async {
        let s = status(&t, "web").await;
        let mine: Vec<_> = s.backends.iter().filter(|b| b.instance_id == gone_id).collect();
        let http_left = mine.len() == 1 && mine[0].listener_id.as_deref() == Some(HTTP);
        let degraded = condition(&s, "Degraded").is_some_and(|(v, _)| v == "True");
        (http_left && degraded).then_some(())
    })
    .await;
    assert!(!bound(&emu, APP).iter().any(|b| b.2 == gone_id && b.0 == TCP), "the TCP target went at once");

    emu.fail_listeners(&[]);
    wait_targets(&t, "web", &ours(&ids(&nodes[1..]))).await;
    let deregisters = v3_calls(&emu, Action::BatchDeregisterTargets);
    let sizes: Vec<usize> = deregisters.iter().map(Vec::len).collect();
    assert!(
        sizes.len() >= 2 && sizes[0] == 2 && sizes[1..].iter().all(|n| *n == 1),
        "then only the failed one: {sizes:?}"
    );
}

/// A binding without listeners on a classic CLB is served through the ClassicalLB actions; it has no weight
/// call, so a weight-0 pre-drain is reported as not possible and instances are deregistered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_load_balancer_goes_through_the_classical_actions() {
    let (t, emu) = setup_v3("v3-classic", |_| {}).await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let _op = start_operator_with(&t, v3_config(&t, &emu));
    binding(&t, "web", LB, false, json!({"drain": {"weightZeroFor": "1h"}})).await;
    let s = wait_ready_with(&t, "web", &ids(&nodes)).await;
    assert_eq!(condition(&s, "PreDrain"), Some(("False".into(), "ClassicLoadBalancer".into())));
    assert_eq!(emu.state().backend_ids(LB).into_iter().collect::<BTreeSet<_>>(), ids(&nodes));
    assert_eq!(v3_calls(&emu, Action::RegisterTargetsWithClassicalLB).len(), 1);

    let (gone_node, gone_id) = nodes[0].clone();
    Api::<Node>::all(t.client.clone()).delete(&gone_node, &DeleteParams::default()).await.unwrap();
    wait_ready_with(&t, "web", &ids(&nodes[1..])).await;
    assert_eq!(v3_calls(&emu, Action::DeregisterTargetsFromClassicalLB), [vec![gone_id]]);
    let v2 = emu.state().calls.iter().filter(|c| c.action.contains("Instances")).count();
    assert_eq!(v2, 0, "no API 2.0 call");
}

/// Changing the NodePort of the Service a listener names moves its targets to the new port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_node_port_moves_the_targets() {
    let (t, emu) = setup_v3("v3-nodeport", |_| {}).await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let services: Api<Service> = t.api();
    // NodePorts are cluster-wide, and namespaces of earlier runs linger (no controller manager deletes them).
    let (first, second) = {
        let p = 30000 + rand::random::<u16>() % 2700;
        (p, p + 1)
    };
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080, "nodePort": first}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &service).await.unwrap();
    let _op = start_operator_with(&t, v3_config(&t, &emu));
    let spec = json!({"listeners": [{"listenerId": TCP, "service": {"name": "web", "port": 80}}]});
    binding(&t, "web", APP, false, spec).await;
    let at =
        |port: u16| ids(&nodes).into_iter().map(|i| (TCP.to_owned(), None, i, port)).collect::<BTreeSet<_>>();
    wait_targets(&t, "web", &at(first)).await;

    let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080, "nodePort": second}]}});
    services.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let s = wait_targets(&t, "web", &at(second)).await;
    assert!(s.tasks.iter().any(|x| x.action == TaskAction::Deregister), "the old port was deregistered");
    assert_eq!(bound(&emu, APP), at(second), "nothing left at the old port");
}

/// Specs that do not fit the load balancer show their own reason and make no CLB write; malformed listener
/// fields are refused by the API server with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specs_that_do_not_fit_are_reported_and_nothing_is_written() {
    let (t, emu) = setup_v3("v3-misfit", |_| {}).await;
    let tok = token_suffix();
    nodes(&t, &tok, 1).await;
    let _op = start_operator_with(&t, v3_config(&t, &emu));
    let cases = [
        (
            "unknown-listener",
            APP,
            json!({"listeners": [{"listenerId": "lbl-nope0001", "port": 80}]}),
            "ListenerNotFound",
        ),
        (
            "listeners-on-classic",
            LB,
            json!({"listeners": [{"listenerId": TCP, "port": 80}]}),
            "LoadBalancerTypeMismatch",
        ),
        ("none-on-application", APP, json!({}), "LoadBalancerTypeMismatch"),
        (
            "no-such-service",
            APP,
            json!({"listeners": [{"listenerId": TCP, "service": {"name": "nope", "port": 80}}]}),
            "ServicePortNotFound",
        ),
        ("rule-missing", APP, json!({"listeners": [{"listenerId": HTTP, "port": 80}]}), "InvalidSpec"),
    ];
    for (name, lb, spec, _) in &cases {
        binding(&t, name, lb, false, spec.clone()).await;
    }
    for (name, _, _, reason) in &cases {
        eventually(WAIT, &format!("{name} Degraded with {reason}"), || async {
            let s = status(&t, name).await;
            (condition(&s, "Degraded") == Some(("True".into(), reason.to_string()))).then_some(())
        })
        .await;
    }
    let writes = emu
        .state()
        .calls
        .iter()
        .filter(|c| c.action.contains("Register") || c.action.contains("Deregister"))
        .count();
    assert_eq!(writes, 0, "no CLB write for a spec that does not fit");

    let api: Api<ClbBackendBinding> = t.api();
    let refused = [
        (json!({"listeners": [{"listenerId": "listener-1", "port": 80}]}), "listenerId must be 'lbl-'"),
        (json!({"listeners": [{"listenerId": TCP}]}), "exactly one of port and service"),
        (json!({"listeners": [{"listenerId": TCP, "port": 70000}]}), "port must be between 1 and 65535"),
        (
            json!({"listeners": [{"listenerId": HTTP, "port": 80, "domain": "a.example"}]}),
            "domain and url go together",
        ),
        (
            json!({"listeners": [{"listenerId": HTTP, "port": 80, "locationId": RULE, "domain": "a", "url": "/"}]}),
            "not both",
        ),
        (
            json!({"listeners": [{"listenerId": TCP, "port": 80}, {"listenerId": TCP, "port": 81}]}),
            "same listener and rule twice",
        ),
    ];
    for (i, (spec, message)) in refused.into_iter().enumerate() {
        let b = fixtures::binding(&format!("bad-{i}"), APP).nodes("clb-test", &t.ns).with(spec);
        let err = b.try_create(&api).await.expect_err("refused by the API server");
        assert!(err.to_string().contains(message), "case {i}: {err}");
    }
}

/// The weights the emulator holds for `instance`'s targets on the application load balancer.
fn weights(emu: &EmulatorHandle, instance: &str) -> Vec<u32> {
    let state = emu.state();
    let targets = state.targets.get(APP).cloned().unwrap_or_default();
    targets.iter().filter(|t| t.instance_id == instance).map(|t| t.weight).collect()
}

async fn taint(t: &TestNs, node: &str, on: bool) {
    let taints = match on {
        true => json!([{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]),
        false => json!([]),
    };
    let patch = json!({"spec": {"taints": taints}});
    Api::<Node>::all(t.client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// With `drain.weightZeroFor`, a tainted node's targets go to weight 0 first and are deregistered only when the
/// wait (kept in the status) is over, across a SIGKILL of the operator; a node whose taint is removed during
/// the wait gets its weight back and is never deregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_pre_drain_waits_then_deregisters() {
    let (t, emu) = setup_v3("v3-weight-zero", |_| {}).await;
    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 3).await;
    let op = OperatorProcess::start(&t, &emu.v3_endpoint(), &[], &[]);
    let mut spec = spec_listeners();
    spec["drain"] = json!({"weightZeroFor": "5s"});
    binding(&t, "web", APP, false, spec).await;
    let s = wait_targets(&t, "web", &ours(&ids(&nodes))).await;
    assert_eq!(condition(&s, "PreDrain"), Some(("True".into(), "WeightZero".into())));

    let (node_a, ins_a) = nodes[0].clone();
    let (node_b, ins_b) = nodes[1].clone();
    taint(&t, &node_a, true).await;
    let until = eventually(WAIT, "node A's targets Quiesced at weight 0", || async {
        let s = status(&t, "web").await;
        let mine: Vec<_> = s.backends.iter().filter(|b| b.instance_id == ins_a).collect();
        let quiesced = mine.len() == 2 && mine.iter().all(|b| b.state == BackendState::Quiesced);
        (quiesced && weights(&emu, &ins_a) == [0, 0]).then(|| mine[0].quiesced_until.clone().unwrap().0)
    })
    .await;
    assert!(v3_calls(&emu, Action::BatchDeregisterTargets).is_empty(), "not deregistered during the wait");

    // Killed during the wait: the restarted operator neither skips it nor starts it again.
    op.kill();
    let _op = OperatorProcess::start(&t, &emu.v3_endpoint(), &[], &[]);
    taint(&t, &node_b, true).await;
    eventually(WAIT, "node B's targets Quiesced", || async {
        (weights(&emu, &ins_b) == [0, 0]).then_some(())
    })
    .await;
    taint(&t, &node_b, false).await;
    eventually(WAIT, "node B back at its weight", || async {
        let s = status(&t, "web").await;
        let back =
            s.backends.iter().filter(|b| b.instance_id == ins_b).all(|b| b.state == BackendState::Registered);
        (back && weights(&emu, &ins_b) == [10, 10]).then_some(())
    })
    .await;

    let rest: BTreeSet<String> = ids(&nodes[1..]);
    wait_targets(&t, "web", &ours(&rest)).await;
    let state = emu.state();
    let removals: Vec<_> =
        state.calls.iter().filter(|c| c.action == "BatchDeregisterTargets" && c.error.is_none()).collect();
    assert_eq!(removals.len(), 1, "only node A was deregistered: {removals:?}");
    assert_eq!(removals[0].instance_ids, [ins_a.clone(), ins_a.clone()]);
    let until_ms = u64::try_from(until.as_millisecond()).unwrap();
    assert!(removals[0].at_ms >= until_ms, "deregistered after the wait: {} < {until_ms}", removals[0].at_ms);
    assert!(removals[0].at_ms < until_ms + 5_000, "and not a second wait later");
    let modifies =
        state.calls.iter().filter(|c| c.action == "ModifyTargetWeight" && c.error.is_none()).count();
    assert!(modifies >= 3, "weight 0 for A (2 listeners... per call) and B, and back for B: {modifies}");
}
