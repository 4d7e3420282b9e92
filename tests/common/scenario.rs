//! Shared pieces of the operator scenarios: an emulator, test nodes and bindings, status probes, and the
//! operator in process.

use std::{collections::BTreeSet, time::Duration};

use clb_operator::{
    api::{BackendState, ClbBackendBinding, ClbBackendBindingStatus, TaskAction, TaskRecord, TaskState},
    clb::{Action, ClientConfig, cloud::ClbApi},
    controller::Config,
    emulator::EmulatorHandle,
};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use super::{
    TestNs, eventually,
    fixtures::{self, NodeFixture, PodFixture, emulator_config, seed, spawn_emulator},
};

pub const LB: &str = "lb-test0001";
pub const WAIT: Duration = Duration::from_secs(30);

/// An emulator on 127.0.0.1 with `LB` seeded with `seeded` instances.
pub async fn emulator(seeded: &[&str], task_duration: Duration) -> EmulatorHandle {
    let seeded = seeded.iter().map(|s| s.to_string()).collect();
    spawn_emulator(emulator_config(task_duration, vec![seed(LB, seeded)])).await
}

/// The operator, in process, watching only the test's namespace; stops when dropped.
pub struct Operator(pub tokio::task::JoinHandle<()>);

impl Drop for Operator {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The operator's configuration for a test: the shipped defaults (so the tests run the settle time, batch size,
/// backoffs and the API users get: CLB API 3.0), pointed at the test's namespace and emulator.
pub fn run_config(t: &TestNs, emu: &EmulatorHandle) -> Config {
    let defaults = Config::default();
    Config {
        namespace: Some(t.ns.clone()),
        api: ClbApi::V3,
        clb: ClientConfig { endpoint: emu.v3_endpoint(), rate_limit_per_second: 50, ..defaults.clb },
        http_addr: "127.0.0.1:0".parse().unwrap(),
        concurrency: 4,
        ..defaults
    }
}

/// [`run_config`] on the legacy CLB API 2.0 (`--clb-api v2`).
pub fn run_config_v2(t: &TestNs, emu: &EmulatorHandle) -> Config {
    let config = run_config(t, emu);
    Config { api: ClbApi::V2, clb: ClientConfig { endpoint: emu.endpoint(), ..config.clb }, ..config }
}

/// Runs the operator on CLB API 2.0 ([`run_config_v2`]) in process, until dropped.
pub fn start_operator_v2(t: &TestNs, emu: &EmulatorHandle) -> Operator {
    start_operator_with(t, run_config_v2(t, emu))
}

/// Runs the operator with `config` in process, against the test's control plane, until dropped.
pub fn start_operator_with(t: &TestNs, config: Config) -> Operator {
    start_operator_on(t.client.clone(), config)
}

/// Runs the operator with `config` in process on `client` (e.g. one with a fault layer), until dropped.
pub fn start_operator_on(client: kube::Client, config: Config) -> Operator {
    Operator(tokio::spawn(async move {
        if let Err(e) = clb_operator::controller::run(config, client).await {
            panic!("operator failed: {e:#}");
        }
    }))
}

/// Runs the operator with the test defaults ([`run_config`]) in process, until dropped.
pub fn start_operator(t: &TestNs, emu: &EmulatorHandle) -> Operator {
    start_operator_with(t, run_config(t, emu))
}

/// A lowercase alphanumeric token, so instance IDs (`ins-<token><n>`) are unique per test.
pub fn token_suffix() -> String {
    let n: u32 = rand::random();
    format!("{:x}", n)
}

/// Creates `count` nodes labelled for the test, with TKE provider IDs; returns (node name, instance ID) pairs.
pub async fn nodes(t: &TestNs, tok: &str, count: usize) -> Vec<(String, String)> {
    test_nodes(t, tok, count, false).await
}

/// [`nodes`] that kwok manages (so pods on them turn Ready), named `<ns>-k<i>`.
pub async fn kwok_nodes(t: &TestNs, tok: &str, count: usize) -> Vec<(String, String)> {
    test_nodes(t, tok, count, true).await
}

async fn test_nodes(t: &TestNs, tok: &str, count: usize, kwok: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..count {
        let name = format!("{}-{}{i}", t.ns, if kwok { "k" } else { "n" });
        let id = format!("ins-{tok}{i:03}");
        let node = NodeFixture::new(&name).label("clb-test", &t.ns).instance(&id);
        if kwok { node.kwok() } else { node }.create(&t.client).await;
        out.push((name, id));
    }
    out
}

/// A binding named `name` selecting the test's nodes (or, with `pods`, the test's `app=web` pods), with `extra`
/// spec fields.
pub async fn binding(
    t: &TestNs,
    name: &str,
    lb: &str,
    pods: bool,
    extra: serde_json::Value,
) -> ClbBackendBinding {
    let b = fixtures::binding(name, lb);
    let b = if pods { b.pods("web") } else { b.nodes("clb-test", &t.ns) };
    b.with(extra).try_create(&t.api()).await.unwrap()
}

pub async fn status(t: &TestNs, name: &str) -> ClbBackendBindingStatus {
    t.api::<ClbBackendBinding>().get(name).await.unwrap().status.unwrap_or_default()
}

pub fn condition(s: &ClbBackendBindingStatus, type_: &str) -> Option<(String, String)> {
    s.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn is_ready(s: &ClbBackendBindingStatus) -> bool {
    condition(s, "Ready").is_some_and(|(v, _)| v == "True")
}

pub fn registered(s: &ClbBackendBindingStatus) -> BTreeSet<String> {
    s.backends.iter().filter(|b| b.state == BackendState::Registered).map(|b| b.instance_id.clone()).collect()
}

/// Waits until the binding is Ready with exactly `ids` registered.
pub async fn wait_ready_with(t: &TestNs, name: &str, ids: &BTreeSet<String>) -> ClbBackendBindingStatus {
    eventually(WAIT, &format!("{name} Ready with {ids:?} ({})", t.logs_hint()), || async {
        let s = status(t, name).await;
        (is_ready(&s) && &registered(&s) == ids && s.backends.len() == ids.len()).then_some(s)
    })
    .await
}

/// The instance IDs of each successful `action` call, in order.
pub fn calls(emu: &EmulatorHandle, action: Action) -> Vec<Vec<String>> {
    emu.state().calls_of(action).filter(|c| c.code == 0).map(|c| c.instance_ids.clone()).collect()
}

/// The instances of each successful removal from a classic load balancer, by either API
/// (DeregisterInstancesFromLoadBalancer or DeregisterTargetsFromClassicalLB), in order.
pub fn deregister_calls(emu: &EmulatorHandle) -> Vec<Vec<String>> {
    const NAMES: [&str; 2] = ["DeregisterInstancesFromLoadBalancer", "DeregisterTargetsFromClassicalLB"];
    let state = emu.state();
    (state.calls.iter())
        .filter(|c| NAMES.contains(&c.action.as_str()) && c.code == 0)
        .map(|c| c.instance_ids.clone())
        .collect()
}

/// Waits until binding `name` shows an `action` task Running; returns it.
pub async fn running_task(t: &TestNs, name: &str, action: TaskAction) -> TaskRecord {
    eventually(WAIT, &format!("a running {action:?} task in {name}'s status"), || async {
        let s = status(t, name).await;
        s.tasks.into_iter().find(|x| x.action == action && x.state == TaskState::Running)
    })
    .await
}

pub fn ids(pairs: &[(String, String)]) -> BTreeSet<String> {
    pairs.iter().map(|(_, id)| id.clone()).collect()
}

/// Creates pods labelled `app: web` in the test namespace, each on the given node, and reports them Running and
/// Ready (there is no kubelet to do it).
pub async fn ready_pods(t: &TestNs, pods: &[(&str, &str)]) {
    let api: Api<Pod> = t.api();
    for (name, node) in pods {
        PodFixture::new(*name).app("web").on(*node).ready().create(&api).await;
    }
}

pub async fn setup(test: &str) -> (TestNs, EmulatorHandle) {
    let t = TestNs::new(test).await;
    let emu = emulator(&[], Duration::from_millis(300)).await;
    let c = emu.credentials();
    t.credentials_secret("clb-credentials", c.secret_id(), c.secret_key()).await;
    (t, emu)
}
