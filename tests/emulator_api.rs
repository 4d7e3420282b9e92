//! The emulator as an API endpoint, driven with hand-signed raw requests: authentication codes, batch and rate
//! limits, task semantics, the control endpoints and the state file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clb_operator::clb::sign::{self, urlencode};
use clb_operator::clb::{Action, Credentials, TaskState};
use clb_operator::emulator::{self, EmulatorConfig, EmulatorHandle, Faults, SeedLoadBalancer};
use common::fixtures::{emulator_config, seed, spawn_emulator as start};
use serde_json::{Value, json};

mod common;

const LB: &str = "lb-emu00001";

fn config() -> EmulatorConfig {
    emulator_config(Duration::from_millis(20), vec![seed(LB, vec!["ins-seed0001".into()])])
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A raw request whose common parameters can be varied one at a time.
struct Raw {
    method: &'static str,
    action: String,
    extra: Vec<(String, String)>,
    timestamp: u64,
    nonce: u64,
    secret_id: String,
    secret_key: String,
}

impl Raw {
    fn new(emu: &EmulatorHandle, action: Action, extra: &[(&str, &str)]) -> Self {
        let creds: &Credentials = emu.credentials();
        Self {
            method: "GET",
            action: action.as_str().into(),
            extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            timestamp: now(),
            nonce: rand::random_range(1..=u32::MAX as u64),
            secret_id: creds.secret_id().into(),
            secret_key: creds.secret_key().into(),
        }
    }

    /// The parameters with a correct signature for this emulator's host and path.
    fn signed(&self, emu: &EmulatorHandle) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = [
            ("Action", self.action.clone()),
            ("Region", "gz".into()),
            ("SecretId", self.secret_id.clone()),
            ("SignatureMethod", "HmacSHA256".into()),
            ("Timestamp", self.timestamp.to_string()),
            ("Nonce", self.nonce.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        params.extend(self.extra.iter().cloned());
        let host = format!("127.0.0.1:{}", emu.local_addr().port());
        let signature = sign::sign(self.method, &host, emulator::API_PATH, &params, &self.secret_key);
        params.push(("Signature".into(), signature));
        params
    }

    async fn send(&self, emu: &EmulatorHandle) -> Value {
        send_params(emu, self.method, &self.signed(emu)).await
    }
}

async fn send_params(emu: &EmulatorHandle, method: &str, params: &[(String, String)]) -> Value {
    let http = reqwest::Client::new();
    let encoded = urlencode(params);
    let request = match method {
        "GET" => http.get(format!("{}?{encoded}", emu.endpoint())),
        _ => http
            .post(emu.endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encoded),
    };
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn code(v: &Value) -> i64 {
    v["code"].as_i64().unwrap_or_else(|| panic!("no code in {v}"))
}

fn backends(n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("backends.{i}.instanceId"), format!("ins-{i:08}"))).collect()
}

fn with(raw: &mut Raw, extra: Vec<(String, String)>) {
    raw.extra.extend(extra);
}

/// A correctly signed request passes over GET and POST; SHA-1 too.
#[tokio::test]
async fn correctly_signed_requests_are_accepted() {
    let emu = start(config()).await;
    for method in ["GET", "POST"] {
        let mut raw = Raw::new(&emu, Action::DescribeLoadBalancerBackends, &[("loadBalancerId", LB)]);
        raw.method = method;
        let reply = raw.send(&emu).await;
        assert_eq!(code(&reply), 0, "{reply}");
        assert_eq!(reply["backendSet"][0]["unInstanceId"], "ins-seed0001");
        assert_eq!(reply["codeDesc"], "Success");
    }
    let raw = Raw::new(&emu, Action::DescribeLoadBalancers, &[]);
    let mut params = raw.signed(&emu);
    params.retain(|(k, _)| k != "SignatureMethod" && k != "Signature");
    let host = format!("127.0.0.1:{}", emu.local_addr().port());
    let sig = sign::sign("GET", &host, emulator::API_PATH, &params, emu.credentials().secret_key());
    params.push(("Signature".into(), sig));
    assert_eq!(code(&send_params(&emu, "GET", &params).await), 0);
}

/// A parameter changed after signing, a flipped signature character, or a GET signature sent as POST: 4100.
#[tokio::test]
async fn tampered_signature_is_4100() {
    let emu = start(config()).await;
    let raw = Raw::new(&emu, Action::DescribeLoadBalancerBackends, &[("loadBalancerId", LB)]);
    let mut params = raw.signed(&emu);
    params[6].1 = "lb-other".into();
    assert_eq!(code(&send_params(&emu, "GET", &params).await), 4100);

    let mut params = Raw::new(&emu, Action::DescribeLoadBalancers, &[]).signed(&emu);
    let sig = &mut params.last_mut().unwrap().1;
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    sig.replace_range(0..1, flipped);
    assert_eq!(code(&send_params(&emu, "GET", &params).await), 4100);

    let params = Raw::new(&emu, Action::DescribeLoadBalancers, &[]).signed(&emu);
    assert_eq!(code(&send_params(&emu, "POST", &params).await), 4100);

    let mut params = Raw::new(&emu, Action::DescribeLoadBalancers, &[]).signed(&emu);
    params.pop();
    assert_eq!(code(&send_params(&emu, "GET", &params).await), 4100, "missing signature");
}

/// The identical request sent twice: the second is a replay, 4500.
#[tokio::test]
async fn replayed_nonce_is_4500() {
    let emu = start(config()).await;
    let raw = Raw::new(&emu, Action::DescribeLoadBalancers, &[]);
    assert_eq!(code(&raw.send(&emu).await), 0);
    let replay = raw.send(&emu).await;
    assert_eq!(code(&replay), 4500, "{replay}");
    let mut fresh = Raw::new(&emu, Action::DescribeLoadBalancers, &[]);
    fresh.nonce = raw.nonce;
    fresh.timestamp = raw.timestamp + 1;
    assert_eq!(code(&fresh.send(&emu).await), 4500, "a reused nonce with another timestamp");
}

/// A timestamp more than 300 s off either way is 4500; 200 s off is accepted. (Not 301: the emulator reads its
/// clock a moment after the request was signed, and across a second boundary 301 s ahead is 300 s ahead.)
#[tokio::test]
async fn stale_timestamp_is_4500() {
    let emu = start(config()).await;
    for (offset, expected) in [(-305i64, 4500), (305, 4500), (-200, 0), (200, 0)] {
        let mut raw = Raw::new(&emu, Action::DescribeLoadBalancers, &[]);
        raw.timestamp = now().checked_add_signed(offset).unwrap();
        assert_eq!(code(&raw.send(&emu).await), expected, "offset {offset}");
    }
}

/// An unknown SecretId is 4104, even when the request is signed with the right key.
#[tokio::test]
async fn wrong_secret_id_is_4104() {
    let emu = start(config()).await;
    let mut raw = Raw::new(&emu, Action::DescribeLoadBalancers, &[]);
    raw.secret_id = "AKIDunknown".into();
    let reply = raw.send(&emu).await;
    assert_eq!(code(&reply), 4104);
    assert_eq!(reply["codeDesc"], "AuthFailure");
}

/// More than --max-batch backends is 4000; exactly the limit is accepted. Gaps in the numbering are 4000.
#[tokio::test]
async fn oversized_batch_is_4000() {
    let emu = start(config()).await;
    let mut raw = Raw::new(&emu, Action::DeregisterInstancesFromLoadBalancer, &[("loadBalancerId", LB)]);
    with(&mut raw, backends(21));
    assert_eq!(code(&raw.send(&emu).await), 4000);
    let mut raw = Raw::new(&emu, Action::DeregisterInstancesFromLoadBalancer, &[("loadBalancerId", LB)]);
    with(&mut raw, backends(20));
    assert_eq!(code(&raw.send(&emu).await), 0);
    let mut raw = Raw::new(&emu, Action::DeregisterInstancesFromLoadBalancer, &[("loadBalancerId", LB)]);
    with(&mut raw, vec![("backends.1.instanceId".into(), "ins-gap".into())]);
    assert_eq!(code(&raw.send(&emu).await), 4000);
    let mut raw = Raw::new(&emu, Action::RegisterInstancesWithLoadBalancer, &[("loadBalancerId", LB)]);
    with(
        &mut raw,
        vec![("backends.0.instanceId".into(), "ins-a".into()), ("backends.0.weight".into(), "101".into())],
    );
    assert_eq!(code(&raw.send(&emu).await), 4000, "weight above 100");
}

/// Above --qps per action, requests are answered 4400; other actions have their own budget.
#[tokio::test]
async fn over_qps_is_4400() {
    let emu = start(EmulatorConfig { qps: 2, ..config() }).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(code(&Raw::new(&emu, Action::DescribeLoadBalancers, &[]).send(&emu).await));
    }
    // A burst of `qps` passes; the rest of the second is refused (unless every request took 500 ms).
    assert_eq!(&codes[..2], [0, 0]);
    assert!(codes[2..].contains(&4400), "{codes:?}");
    assert!(codes.iter().all(|c| *c == 0 || *c == 4400), "{codes:?}");
    let other = Raw::new(&emu, Action::DescribeLoadBalancerBackends, &[("loadBalancerId", LB)]);
    assert_eq!(code(&other.send(&emu).await), 0);
}

/// Unknown LB: 5000 for backends and submits; an instance not on a known LB: accepted with a task.
/// An unknown action is 6100; an unknown task 5000.
#[tokio::test]
async fn unknown_resources_and_actions() {
    let emu = start(config()).await;
    let raw = Raw::new(&emu, Action::DescribeLoadBalancerBackends, &[("loadBalancerId", "lb-nope")]);
    assert_eq!(code(&raw.send(&emu).await), 5000);
    let mut raw =
        Raw::new(&emu, Action::DeregisterInstancesFromLoadBalancer, &[("loadBalancerId", "lb-nope")]);
    with(&mut raw, backends(1));
    assert_eq!(code(&raw.send(&emu).await), 5000);
    let mut raw = Raw::new(&emu, Action::DeregisterInstancesFromLoadBalancer, &[("loadBalancerId", LB)]);
    with(&mut raw, vec![("backends.0.instanceId".into(), "ins-notthere".into())]);
    let reply = raw.send(&emu).await;
    assert_eq!(code(&reply), 0);
    assert!(reply["requestId"].as_u64().is_some());
    let mut raw = Raw::new(&emu, Action::DescribeLoadBalancers, &[]);
    raw.action = "DeleteLoadBalancers".into();
    assert_eq!(code(&raw.send(&emu).await), 6100);
    let raw = Raw::new(&emu, Action::DescribeLoadBalancersTaskResult, &[("requestId", "99999999")]);
    assert_eq!(code(&raw.send(&emu).await), 5000);
}

/// DescribeLoadBalancers filters by id (unknown ids are absent) and pages with offset/limit.
#[tokio::test]
async fn describe_load_balancers_filters_and_pages() {
    let seeds = (0..5).map(|i| SeedLoadBalancer { id: format!("lb-{i}"), instance_ids: vec![] }).collect();
    let emu = start(EmulatorConfig { load_balancers: seeds, ..config() }).await;
    let raw = Raw::new(
        &emu,
        Action::DescribeLoadBalancers,
        &[("loadBalancerIds.0", "lb-3"), ("loadBalancerIds.1", "lb-missing")],
    );
    let reply = raw.send(&emu).await;
    assert_eq!(reply["totalCount"], 1);
    assert_eq!(reply["loadBalancerSet"][0]["loadBalancerId"], "lb-3");
    let reply =
        Raw::new(&emu, Action::DescribeLoadBalancers, &[("offset", "4"), ("limit", "2")]).send(&emu).await;
    assert_eq!(reply["totalCount"], 5);
    let ids: Vec<&str> = reply["loadBalancerSet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["loadBalancerId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["lb-4"]);
}

/// Tasks run for --task-duration, then change backends; a failed task changes nothing. The state endpoint
/// shows it all, and every request is in the call log with its code.
#[tokio::test]
async fn tasks_state_endpoint_and_call_log() {
    let emu = start(EmulatorConfig {
        faults: Faults { task_duration: Duration::from_millis(300), ..Faults::default() },
        ..config()
    })
    .await;
    let mut raw = Raw::new(&emu, Action::RegisterInstancesWithLoadBalancer, &[("loadBalancerId", LB)]);
    with(
        &mut raw,
        vec![("backends.0.instanceId".into(), "ins-new".into()), ("backends.0.weight".into(), "42".into())],
    );
    let reply = raw.send(&emu).await;
    let request_id = reply["requestId"].as_u64().unwrap().to_string();
    let query = || Raw::new(&emu, Action::DescribeLoadBalancersTaskResult, &[("requestId", &request_id)]);
    assert_eq!(query().send(&emu).await["data"]["status"], 2, "running right after submit");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(query().send(&emu).await["data"]["status"], 0);

    let state: Value = reqwest::get(format!("http://{}/emulator/state", emu.local_addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lb = &state["loadBalancers"][LB]["backends"];
    assert!(lb.as_array().unwrap().contains(&json!({"instanceId": "ins-new", "weight": 42})), "{lb}");
    let task = &state["tasks"][0];
    assert_eq!(task["status"], "succeeded");
    assert_eq!(task["action"], "RegisterInstancesWithLoadBalancer");
    assert_eq!(task["loadBalancerId"], LB);
    assert_eq!(task["instanceIds"], json!(["ins-new"]));
    assert!(task["submittedAtMs"].as_u64().unwrap() <= task["finishedAtMs"].as_u64().unwrap());
    let calls = state["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0]["action"], "RegisterInstancesWithLoadBalancer");
    assert_eq!(calls[0]["instanceIds"], json!(["ins-new"]));
    assert_eq!(calls[0]["code"], 0);
    assert!(calls[0]["requestId"].as_u64().is_some() && calls[0]["atMs"].as_u64().is_some());

    // Failing tasks leave the backends alone.
    emu.set_faults(Faults { task_fail_rate: 1.0, ..emu.faults() }).unwrap();
    let mut raw = Raw::new(&emu, Action::DeregisterInstancesFromLoadBalancer, &[("loadBalancerId", LB)]);
    with(&mut raw, vec![("backends.0.instanceId".into(), "ins-new".into())]);
    raw.send(&emu).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let state = emu.state();
    assert_eq!(state.tasks[1].status, TaskState::Failed);
    assert!(state.backend_ids(LB).contains(&"ins-new".to_owned()));
}

/// `POST /emulator/config` changes faults at run time; bad values are 400 and change nothing.
#[tokio::test]
async fn config_endpoint_changes_faults() {
    let emu = start(config()).await;
    let url = format!("http://{}/emulator/config", emu.local_addr());
    let http = reqwest::Client::new();
    let reply: Value = http
        .post(&url)
        .json(&json!({"taskFailRate": 1, "taskDuration": "2s", "errorRate": 0.25}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["taskFailRate"], 1.0);
    assert_eq!(reply["taskDuration"], "2s");
    assert_eq!(emu.faults().error_rate, 0.25);
    assert_eq!(emu.faults().task_duration, Duration::from_secs(2));
    let bad = http.post(&url).json(&json!({"errorRate": 2})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(emu.faults().error_rate, 0.25);
    let typo = http.post(&url).json(&json!({"error_rate": 0})).send().await.unwrap();
    assert!(typo.status().is_client_error());
    let current: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(current["latency"], "0s");
}

/// With --error-rate 1 every authenticated request is 6000, but authentication still comes first.
#[tokio::test]
async fn error_rate_injects_6000_after_authentication() {
    let emu =
        start(EmulatorConfig { faults: Faults { error_rate: 1.0, ..Faults::default() }, ..config() }).await;
    assert_eq!(code(&Raw::new(&emu, Action::DescribeLoadBalancers, &[]).send(&emu).await), 6000);
    let mut raw = Raw::new(&emu, Action::DescribeLoadBalancers, &[]);
    raw.secret_id = "AKIDwrong".into();
    assert_eq!(code(&raw.send(&emu).await), 4104);
}

/// The state file keeps LBs and tasks across a restart; running tasks resume and requestIds continue.
#[tokio::test]
async fn state_file_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let emu = start(EmulatorConfig { state_file: Some(path.clone()), ..config() }).await;
    let creds = emu.credentials().clone();
    let mut raw = Raw::new(&emu, Action::RegisterInstancesWithLoadBalancer, &[("loadBalancerId", LB)]);
    with(&mut raw, backends(2));
    let first_id = raw.send(&emu).await["requestId"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut raw = Raw::new(&emu, Action::DeregisterInstancesFromLoadBalancer, &[("loadBalancerId", LB)]);
    with(&mut raw, vec![("backends.0.instanceId".into(), "ins-seed0001".into())]);
    emu.set_faults(Faults { task_duration: Duration::from_millis(1000), ..emu.faults() }).unwrap();
    raw.send(&emu).await;
    emu.shutdown().await;

    let saved: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(saved["tasks"][1]["status"], "running");
    assert_eq!(saved["calls"], json!([]), "the call log is not persisted");

    // Seeds for an LB the file already has do not reset it.
    let emu = start(EmulatorConfig { state_file: Some(path.clone()), credentials: creds, ..config() }).await;
    assert_eq!(emu.state().backend_ids(LB), ["ins-00000000", "ins-00000001", "ins-seed0001"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let state = emu.state();
    assert_eq!(
        state.backend_ids(LB),
        ["ins-00000000", "ins-00000001"],
        "the running task finished after restart"
    );
    let mut raw = Raw::new(&emu, Action::DeregisterInstancesFromLoadBalancer, &[("loadBalancerId", LB)]);
    with(&mut raw, backends(1));
    assert_eq!(raw.send(&emu).await["requestId"].as_u64().unwrap(), first_id + 2);
}

/// The state file keeps API 3.0 targets and tasks too: a task running at shutdown finishes after the restart,
/// and its RequestId is still known to DescribeTaskStatus.
#[tokio::test]
async fn state_file_keeps_api_3_targets_and_tasks() {
    use clb_operator::clb::{
        cloud::{Cloud, Placement, Submitted, Target},
        v3_client::V3Client,
        v3_cloud::V3Cloud,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let listener: emulator::SeedListener = "lb-app/lbl-1=TCP:80".parse().unwrap();
    let with_state = |creds: Option<Credentials>| {
        let mut c =
            EmulatorConfig { state_file: Some(path.clone()), listeners: vec![listener.clone()], ..config() };
        if let Some(creds) = creds {
            c.credentials = creds;
        }
        c
    };
    let emu = start(with_state(None)).await;
    let creds = emu.credentials().clone();
    let cloud = |emu: &EmulatorHandle| {
        V3Cloud::new(V3Client::new(emu.v3_endpoint(), emu.credentials().clone(), "ap-guangzhou", 50).unwrap())
    };
    let at = |i: &str| Target {
        instance: i.into(),
        at: Some(Placement { listener_id: "lbl-1".into(), location_id: None, port: 80 }),
    };
    let c = cloud(&emu);
    c.register("lb-app", &[at("ins-a")], 10).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    emu.set_faults(Faults { task_duration: Duration::from_millis(800), ..emu.faults() }).unwrap();
    let running = c.register("lb-app", &[at("ins-b")], 10).await;
    let Ok(Submitted::Task(id)) = &running[0].result else { panic!("{running:?}") };
    emu.shutdown().await;

    let emu = start(with_state(Some(creds))).await;
    let bound: Vec<String> = emu.state().targets["lb-app"].iter().map(|t| t.instance_id.clone()).collect();
    assert_eq!(bound, ["ins-a"], "the finished task's target, the running one not yet");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let c = cloud(&emu);
    assert_eq!(c.task(id).await.unwrap(), clb_operator::clb::cloud::TaskState::Succeeded);
    let bound: Vec<String> = emu.state().targets["lb-app"].iter().map(|t| t.instance_id.clone()).collect();
    assert_eq!(bound, ["ins-a", "ins-b"], "the running task finished after the restart");
}
