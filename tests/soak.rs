//! The crash-safety soak: SIGKILL rounds with CLB tasks in flight, CLB errors and failed tasks injected,
//! membership changes between rounds, and a kube-apiserver stop and restart while a task runs; then convergence.
//! Everything is checked from the emulator's call log and task table, and from every status the binding showed.
//!
//! `SOAK_ROUNDS` sets the number of kill rounds (default 10, what CI runs). This binary holds this one test
//! only: it stops the shared API server for a while.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clb_operator::{
    api::{ClbBackendBinding, TaskState},
    clb::{Action, Credentials},
    emulator::{EmulatorHandle, Faults, StateView},
};
use common::{
    OperatorProcess, TestNs, eventually,
    fixtures::{NodeFixture, emulator_config, seed, spawn_emulator},
    scenario::{LB, binding, condition, is_ready},
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

/// A key with characters that every encoding (URL, JSON, base64) writes differently.
const SECRET_KEY: &str = "s3cr3t+/=&%?#: k\u{e9}y\"\\";
const DRAIN_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Unix milliseconds, the emulator's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// What the harness did to each instance's node, over time: whether the instance should serve.
#[derive(Default)]
struct Intent {
    /// (time in Unix ms, serving) per instance, in order.
    serving: BTreeMap<String, Vec<(u64, bool)>>,
}

impl Intent {
    fn set(&mut self, instance: &str, serving: bool) {
        self.serving.entry(instance.to_owned()).or_default().push((now_ms(), serving));
    }

    fn now(&self, instance: &str) -> bool {
        self.serving.get(instance).and_then(|v| v.last()).is_some_and(|(_, s)| *s)
    }

    /// Whether the instance should have served all through `[from, to]`.
    fn served_throughout(&self, instance: &str, from: u64, to: u64) -> bool {
        let Some(history) = self.serving.get(instance) else { return false };
        let at_start = history.iter().rev().find(|(t, _)| *t <= from).is_some_and(|(_, s)| *s);
        at_start && history.iter().filter(|(t, _)| *t > from && *t <= to).all(|(_, s)| *s)
    }

    fn desired(&self) -> BTreeSet<String> {
        self.serving.keys().filter(|i| self.now(i)).cloned().collect()
    }
}

struct Soak {
    t: TestNs,
    emu: EmulatorHandle,
    tok: String,
    intent: Intent,
    nodes: Api<Node>,
    /// Instance of each node the harness created, by node name.
    alive: BTreeMap<String, String>,
    tainted: BTreeSet<String>,
    deleted: Vec<(String, String)>,
    next: usize,
}

impl Soak {
    async fn add(&mut self, name: String, instance: String) {
        let node = NodeFixture::new(&name).label("clb-test", &self.t.ns).instance(&instance).build();
        let params = PostParams::default();
        retry(|| self.nodes.create(&params, &node)).await;
        self.intent.set(&instance, true);
        self.alive.insert(name, instance);
    }

    async fn new_node(&mut self) {
        let (name, instance) =
            (format!("{}-n{}", self.t.ns, self.next), format!("ins-{}{:03}", self.tok, self.next));
        self.next += 1;
        self.add(name, instance).await;
    }

    /// One membership change, chosen by round: delete, taint, untaint, taint two, a deleted node's CVM coming
    /// back; a new node where the choice cannot be made.
    async fn change(&mut self, round: usize) {
        let untainted: Vec<String> =
            self.alive.keys().filter(|n| !self.tainted.contains(*n)).cloned().collect();
        match round % 5 {
            0 if untainted.len() > 2 => {
                let name = untainted[round % untainted.len()].clone();
                let instance = self.alive.remove(&name).unwrap_or_default();
                self.intent.set(&instance, false);
                let params = DeleteParams::default();
                retry(|| self.nodes.delete(&name, &params)).await;
                self.deleted.push((name, instance));
            }
            1 if untainted.len() > 2 => {
                let name = untainted[round % untainted.len()].clone();
                self.intent.set(&self.alive[&name], false);
                let taint = json!({"spec": {"taints": [{"key": DRAIN_TAINT, "effect": "NoSchedule"}]}});
                let (params, patch) = (PatchParams::default(), Patch::Merge(&taint));
                retry(|| self.nodes.patch(&name, &params, &patch)).await;
                self.tainted.insert(name);
            }
            2 if !self.tainted.is_empty() => {
                let name = self.tainted.pop_first().unwrap_or_default();
                self.intent.set(&self.alive[&name], true);
                let clear = json!({"spec": {"taints": null}});
                let (params, patch) = (PatchParams::default(), Patch::Merge(&clear));
                retry(|| self.nodes.patch(&name, &params, &patch)).await;
            }
            3 if untainted.len() > 3 => {
                // Two nodes at once: one Deregister task for both.
                for name in untainted.iter().rev().take(2) {
                    self.intent.set(&self.alive[name], false);
                    let taint = json!({"spec": {"taints": [{"key": DRAIN_TAINT, "effect": "NoSchedule"}]}});
                    let (params, patch) = (PatchParams::default(), Patch::Merge(&taint));
                    retry(|| self.nodes.patch(name, &params, &patch)).await;
                    self.tainted.insert(name.clone());
                }
            }
            4 if !self.deleted.is_empty() => {
                let (name, instance) = self.deleted.remove(0);
                self.add(name, instance).await;
            }
            _ => self.new_node().await,
        }
    }
}

/// Retries an API call while the API server is away (it is restarted once during the soak).
async fn retry<T, F, Fut>(call: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("soak: API call failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("API call failed for 60 s: {e}"),
        }
    }
}

/// Waits until the emulator has accepted more than `before` tasks (or `limit` passes), then `jitter_ms` at most:
/// kills land between the CLB accepting a task and the status recording it, or while it runs.
async fn new_task(emu: &EmulatorHandle, before: usize, limit: Duration, jitter_ms: u64) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && emu.state().tasks.len() <= before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % (jitter_ms + 1))).await;
}

/// Waits (up to `limit`, without failing) until the binding is Ready.
async fn settled(api: &Api<ClbBackendBinding>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if api.get("soak").await.ok().and_then(|b| b.status).is_some_and(|s| is_ready(&s)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every requestId a status of the binding ever showed Running.
fn watch_running(t: &TestNs) -> Arc<Mutex<BTreeSet<u64>>> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let api: Api<ClbBackendBinding> = t.api();
    let out = seen.clone();
    tokio::spawn(async move {
        let mut events =
            std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
        while let Some(event) = events.next().await {
            let Ok(b) = event else { continue };
            let running =
                b.status.iter().flat_map(|s| s.tasks.iter()).filter(|t| t.state == TaskState::Running);
            out.lock().unwrap().extend(running.filter_map(|t| t.request_id.parse::<u64>().ok()));
        }
    });
    seen
}

fn start(t: &TestNs, emu: &EmulatorHandle, n: usize) -> OperatorProcess {
    let log = std::env::temp_dir().join(format!("{}-soak-operator-{n}.log", t.ns));
    common::OperatorCommand::new(&t.plane.kubeconfig, &emu.endpoint(), log)
        .namespace(&t.ns)
        .rust_log("info,clb_operator=debug")
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_kill_rounds_with_faults_converge_without_losing_or_repeating_tasks() {
    let rounds: usize = std::env::var("SOAK_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let t = TestNs::new("soak").await;
    let tok = format!("{:x}", rand::random::<u32>());
    let foreign = format!("ins-{tok}999");
    let mut config = emulator_config(Duration::from_millis(600), vec![seed(LB, vec![foreign.clone()])]);
    config.credentials = Credentials::new(format!("AKID{tok}soak"), SECRET_KEY, None);
    let emu = spawn_emulator(config).await;
    t.credentials_secret("clb-credentials", &format!("AKID{tok}soak"), SECRET_KEY).await;
    let mut soak = Soak {
        nodes: Api::all(t.client.clone()),
        t,
        emu,
        tok,
        intent: Intent::default(),
        alive: BTreeMap::new(),
        tainted: BTreeSet::new(),
        deleted: Vec::new(),
        next: 0,
    };
    for _ in 0..6 {
        soak.new_node().await;
    }
    let running = watch_running(&soak.t);
    let mut operator = start(&soak.t, &soak.emu, 0);
    binding(&soak.t, "soak", LB, false, json!({})).await;
    let api: Api<ClbBackendBinding> = soak.t.api();
    settled(&api, Duration::from_secs(30)).await;
    let faults = Faults {
        task_duration: Duration::from_millis(600),
        task_fail_rate: 0.1,
        error_rate: 0.3,
        ..Faults::default()
    };
    soak.emu.set_faults(faults).unwrap();
    let plane_dir = soak.t.plane.kubeconfig.parent().unwrap().to_owned();
    let mut logs = vec![operator_log(&operator)];
    let mut api_restart_s = None;
    let started = Instant::now();
    for round in 0..rounds {
        let before = soak.emu.state().tasks.len();
        soak.change(round).await;
        // Even rounds kill within milliseconds of the CLB accepting a task; odd ones while it runs.
        let jitter = if round % 2 == 0 { 3 } else { 400 };
        new_task(&soak.emu, before, Duration::from_secs(3), jitter).await;
        if round == rounds / 2 {
            // The API server goes away while a task runs, and comes back on the same port.
            let out = common::testenv(&plane_dir, &["stop-apiserver"]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let out = common::testenv(&plane_dir, &["start-apiserver"]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let back = Instant::now();
            settled(&api, Duration::from_secs(60)).await;
            api_restart_s = Some(back.elapsed());
            continue;
        }
        operator.kill();
        operator = start(&soak.t, &soak.emu, round + 1);
        logs.push(operator_log(&operator));
        settled(&api, Duration::from_secs(3)).await;
    }
    // Faults off: convergence, with the operator of the last round.
    soak.emu.set_faults(Faults { task_duration: Duration::from_millis(600), ..Faults::default() }).unwrap();
    let converge = Instant::now();
    let desired = soak.intent.desired();
    let hint = soak.t.logs_hint();
    eventually(
        Duration::from_secs(120),
        &format!("convergence ({hint}; operator logs {logs:?})"),
        || async {
            let b = api.get("soak").await.ok()?;
            let s = b.status.unwrap_or_default();
            let registered: BTreeSet<String> = s.backends.iter().map(|b| b.instance_id.clone()).collect();
            (is_ready(&s) && registered == desired && s.intents.is_empty()).then_some(())
        },
    )
    .await;
    let converged_s = converge.elapsed().as_secs_f64();
    let metrics = operator.metrics().await;
    let state = soak.emu.state();
    let check = Checks { state: &state, intent: &soak.intent, foreign: &foreign };

    // The load balancer holds exactly the desired CVMs, plus the foreign one that no call ever named.
    let mut expected = desired.clone();
    expected.insert(foreign.clone());
    assert_eq!(state.backend_ids(LB).into_iter().collect::<BTreeSet<_>>(), expected);
    assert!(check.foreign_untouched(), "a call named the foreign instance {foreign}");
    let resubmits = check.deregister_resubmissions();
    assert!(
        resubmits.is_empty(),
        "Deregister resubmitted while an accepted one ran or had succeeded: {resubmits:?}"
    );
    let forgotten = check.forgotten(&running.lock().unwrap());
    assert!(forgotten.is_empty(), "tasks shown in a status but never polled to their end: {forgotten:?}");
    let wrong = check.wrong_deregistrations();
    assert!(wrong.is_empty(), "instances deregistered while their node should serve: {wrong:?}");
    let status = api.get("soak").await.unwrap().status.unwrap_or_default();
    assert_eq!(condition(&status, "Ready").map(|c| c.0), Some("True".into()));
    let mut all_logs = String::new();
    for log in &logs {
        all_logs.push_str(&std::fs::read_to_string(log).unwrap_or_default());
    }
    assert!(!all_logs.contains("panicked"), "an operator panicked; logs: {logs:?}");

    // Secret hygiene: the key appears in no log, metric, event or status, in any of its encodings.
    let events = Api::<Event>::namespaced(soak.t.client.clone(), &soak.t.ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let places = [
        ("operator logs", all_logs),
        ("/metrics", metrics),
        ("events", serde_json::to_string(&events.items).unwrap()),
        ("status", serde_json::to_string(&status).unwrap()),
    ];
    for (place, text) in &places {
        for (encoding, form) in secret_forms() {
            assert!(!text.contains(&form), "the secret key ({encoding}) appears in {place}");
        }
    }

    let accepted = |action| state.calls_of(action).filter(|c| c.code == 0).count();
    let errors = state.calls.iter().filter(|c| c.code != 0).count();
    let failed = state.tasks.iter().filter(|t| t.status == clb_operator::clb::TaskState::Failed).count();
    println!(
        "soak: {rounds} rounds, {} kills, {} calls ({errors} answered with an error), {} Register and {} \
         Deregister accepted, {failed} of {} tasks failed, {} tasks seen in a status, {} resubmissions, {} lost, \
         Ready {:?} after the API server came back, converged in {converged_s:.1} s, total {:.0} s",
        logs.len() - 1,
        state.calls.len(),
        accepted(Action::RegisterInstancesWithLoadBalancer),
        accepted(Action::DeregisterInstancesFromLoadBalancer),
        state.tasks.len(),
        running.lock().unwrap().len(),
        resubmits.len(),
        forgotten.len(),
        api_restart_s,
        started.elapsed().as_secs_f64(),
    );
}

fn operator_log(op: &OperatorProcess) -> std::path::PathBuf {
    op.log.clone()
}

/// The secret key as written, URL-encoded (both ways), base64 and JSON-escaped.
fn secret_forms() -> Vec<(&'static str, String)> {
    use base64::Engine as _;
    let json = serde_json::to_string(SECRET_KEY).unwrap();
    vec![
        ("as written", SECRET_KEY.to_owned()),
        ("URL-encoded", form_urlencoded::byte_serialize(SECRET_KEY.as_bytes()).collect()),
        (
            "percent-encoded",
            percent_encoding::utf8_percent_encode(SECRET_KEY, percent_encoding::NON_ALPHANUMERIC).to_string(),
        ),
        ("base64", base64::engine::general_purpose::STANDARD.encode(SECRET_KEY)),
        ("JSON-escaped", json.trim_matches('"').to_owned()),
    ]
}

/// The checks made from the emulator's call log and tasks.
struct Checks<'a> {
    state: &'a StateView,
    intent: &'a Intent,
    foreign: &'a str,
}

impl Checks<'_> {
    fn foreign_untouched(&self) -> bool {
        self.state.calls.iter().all(|c| !c.instance_ids.iter().any(|i| i == self.foreign))
    }

    fn task(&self, request_id: Option<u64>) -> Option<&clb_operator::emulator::TaskRecord> {
        self.state.tasks.iter().find(|t| Some(t.request_id) == request_id)
    }

    /// Accepted Deregisters of an instance while an earlier accepted one for it still ran, or after it had
    /// succeeded with no accepted Register of the instance in between.
    fn deregister_resubmissions(&self) -> Vec<String> {
        let accepted = |action: Action| {
            self.state
                .calls_of(action)
                .filter(|c| c.code == 0)
                .map(|c| (c.at_ms, c.request_id, c.instance_ids.clone()))
        };
        let registers: Vec<_> = accepted(Action::RegisterInstancesWithLoadBalancer).collect();
        let mut last: BTreeMap<String, (u64, Option<u64>)> = BTreeMap::new();
        let mut wrong = Vec::new();
        for (at, request_id, ids) in accepted(Action::DeregisterInstancesFromLoadBalancer) {
            for id in &ids {
                if let Some((before_at, before_id)) = last.get(id)
                    && let Some(before) = self.task(*before_id)
                {
                    let ran = before.finished_at_ms.is_none_or(|end| end > at);
                    let succeeded = before.status == clb_operator::clb::TaskState::Succeeded;
                    let registered_since = registers
                        .iter()
                        .any(|(r_at, _, r_ids)| *r_at > *before_at && *r_at < at && r_ids.contains(id));
                    if ran || (succeeded && !registered_since) {
                        wrong.push(format!("{id}: task {before_id:?}, then {request_id:?} at {at}"));
                    }
                }
                last.insert(id.clone(), (at, request_id));
            }
        }
        wrong
    }

    /// Tasks a status showed Running that were never polled after they ended.
    fn forgotten(&self, running: &BTreeSet<u64>) -> Vec<u64> {
        running
            .iter()
            .copied()
            .filter(|id| {
                let end = self.task(Some(*id)).and_then(|t| t.finished_at_ms).unwrap_or(u64::MAX);
                !self
                    .state
                    .calls_of(Action::DescribeLoadBalancersTaskResult)
                    .any(|c| c.request_id == Some(*id) && c.code == 0 && c.at_ms >= end)
            })
            .collect()
    }

    /// Accepted Deregisters of an instance whose node should have served for the 3 s before the call (a change
    /// undone within that time may still be acted on).
    fn wrong_deregistrations(&self) -> Vec<String> {
        let deregisters =
            self.state.calls_of(Action::DeregisterInstancesFromLoadBalancer).filter(|c| c.code == 0);
        deregisters
            .flat_map(|c| {
                c.instance_ids
                    .iter()
                    .filter(|id| self.intent.served_throughout(id, c.at_ms.saturating_sub(3000), c.at_ms))
                    .map(move |id| format!("{id} at {}", c.at_ms))
            })
            .collect()
    }
}
