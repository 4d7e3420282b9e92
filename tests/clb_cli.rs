//! The built `clb-operator clb ...` binary against an in-process emulator: JSON on stdout, batching, `--wait`,
//! and the one-line error with a non-zero exit; on API 2.0 (`--api v2`) and on API 3.0, the default.

use std::process::Output;
use std::time::Duration;

use clb_operator::clb::{Action, Credentials};
use clb_operator::emulator::EmulatorHandle;
use common::fixtures::{emulator_config, seed, spawn_emulator};
use serde_json::Value;
use tokio::process::Command;

mod common;

const LB: &str = "lb-cli00001";

async fn start() -> EmulatorHandle {
    let instances = (0..25).map(|i| format!("ins-cli{i:05}")).collect();
    spawn_emulator(emulator_config(Duration::from_millis(30), vec![seed(LB, instances)])).await
}

/// Runs the binary on API 2.0 with only the given credentials in its environment.
async fn clb(emu: &EmulatorHandle, creds: &Credentials, args: &[&str]) -> Output {
    run(emu.endpoint().as_str(), "v2", creds, args).await
}

/// Runs the binary on API 3.0 (the default: no `--api`) with the emulator's credentials.
async fn clb3(emu: &EmulatorHandle, args: &[&str]) -> Output {
    run(emu.v3_endpoint().as_str(), "", emu.credentials(), args).await
}

async fn run(endpoint: &str, api: &str, creds: &Credentials, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clb-operator"));
    cmd.arg("clb");
    if !api.is_empty() {
        cmd.args(["--api", api]);
    }
    cmd.args(args)
        .env_clear()
        .env("CLB_ENDPOINT", endpoint)
        .env("TENCENTCLOUD_SECRET_ID", creds.secret_id())
        .env("TENCENTCLOUD_SECRET_KEY", creds.secret_key())
        .output()
        .await
        .unwrap()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// `clb deregister` of 25 instances makes two calls (20 + 5), waits for both tasks and prints JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_25_instances_is_two_calls() {
    let emu = start().await;
    let mut args = vec!["deregister", "--lb", LB, "--wait"];
    let ids: Vec<String> = (0..25).map(|i| format!("ins-cli{i:05}")).collect();
    // Both forms: repeated flags and one comma-separated list.
    for id in &ids[..20] {
        args.extend(["--instance", id]);
    }
    let rest = ids[20..].join(",");
    args.extend(["--instance", &rest]);
    let out = clb(&emu, emu.credentials(), &args).await;
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "stderr: {}", String::from_utf8_lossy(&out.stderr));

    let json = stdout_json(&out);
    let batches = json["batches"].as_array().unwrap();
    let sizes: Vec<usize> = batches.iter().map(|b| b["instanceIds"].as_array().unwrap().len()).collect();
    assert_eq!(sizes, [20, 5]);
    for batch in batches {
        assert_eq!(batch["outcome"], "submitted");
        assert!(batch["requestId"].as_u64().is_some());
        assert_eq!(batch["task"], "succeeded");
    }
    let state = emu.state();
    let calls: Vec<usize> =
        state.calls_of(Action::DeregisterInstancesFromLoadBalancer).map(|c| c.instance_ids.len()).collect();
    assert_eq!(calls, [20, 5]);
    assert!(state.backend_ids(LB).is_empty());
}

/// Describe commands print JSON; task-result reports the state by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_and_task_result_print_json() {
    let emu = start().await;
    let out = clb(&emu, emu.credentials(), &["describe-lbs"]).await;
    assert!(out.status.success());
    assert_eq!(stdout_json(&out)["loadBalancers"][0]["loadBalancerId"], LB);

    let out =
        clb(&emu, emu.credentials(), &["describe-backends", "--lb", LB, "--sign-method", "HmacSHA256"]).await;
    assert!(out.status.success());
    assert_eq!(stdout_json(&out)["backends"].as_array().unwrap().len(), 25);

    let out = clb(
        &emu,
        emu.credentials(),
        &["register", "--lb", LB, "--instance", "ins-new", "--weight", "7", "--http-method", "POST"],
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let request_id = stdout_json(&out)["batches"][0]["requestId"].as_u64().unwrap().to_string();
    let out = clb(&emu, emu.credentials(), &["task-result", "--request-id", &request_id]).await;
    assert!(out.status.success());
    let state = stdout_json(&out)["state"].as_str().unwrap().to_owned();
    assert!(state == "running" || state == "succeeded", "{state}");
}

/// An API failure is one line on stderr with the code and the message, nothing on stdout, exit status 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_is_one_line_on_stderr() {
    let emu = start().await;
    let wrong = Credentials::new(emu.credentials().secret_id(), "wrong-key", None);
    let out = clb(&emu, &wrong, &["describe-backends", "--lb", LB]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("4100") && stderr.contains("signature mismatch"), "{stderr}");
    assert!(!stderr.contains("wrong-key"));

    // A batch failure still prints the batches (so requestIds are never lost) and fails the command.
    let out = clb(&emu, &wrong, &["deregister", "--lb", LB, "--instance", "ins-cli00000"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["batches"][0]["error"]["code"], 4100);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("4100"));

    // Missing credentials are reported clearly.
    let out = Command::new(env!("CARGO_BIN_EXE_clb-operator"))
        .args(["clb", "--api", "v2", "describe-lbs"])
        .env_clear()
        .env("CLB_ENDPOINT", emu.endpoint().as_str())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TENCENTCLOUD_SECRET_ID"));
}

/// API 3.0 from the command line: listeners and targets are described, targets registered on a listener, set
/// to weight 0 and deregistered with `--wait`, a task looked up by its RequestId; v3-only commands refuse
/// `--api v2` with a clear line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_3_commands() {
    let mut config = emulator_config(Duration::from_millis(30), vec![seed(LB, vec!["ins-c".into()])]);
    config.listeners = vec!["lb-app/lbl-web=HTTP:80,loc-web=web.example/".parse().unwrap()];
    let emu = spawn_emulator(config).await;
    let ok = |out: &Output| assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));

    let out = clb3(&emu, &["describe-lbs"]).await;
    ok(&out);
    let set = stdout_json(&out)["response"]["LoadBalancerSet"].as_array().unwrap().clone();
    assert!(set.iter().any(|l| l["LoadBalancerId"] == "lb-app" && l["Forward"] == 1), "{set:?}");
    let out = clb3(&emu, &["describe-listeners", "--lb", "lb-app"]).await;
    ok(&out);
    assert_eq!(stdout_json(&out)["response"]["Listeners"][0]["Rules"][0]["LocationId"], "loc-web");

    let at = ["--lb", "lb-app", "--listener", "lbl-web", "--location", "loc-web", "--port", "30080"];
    let mut register = vec!["register", "--instance", "ins-a,ins-b", "--wait"];
    register.extend(at);
    let out = clb3(&emu, &register).await;
    ok(&out);
    let json = stdout_json(&out);
    assert_eq!(json["batches"][0]["task"], "Succeeded", "{json}");
    let task = json["batches"][0]["taskId"].as_str().unwrap().to_owned();
    let out = clb3(&emu, &["task-status", "--task", &task]).await;
    ok(&out);
    assert_eq!(stdout_json(&out)["state"], "Succeeded");

    let mut weight = vec!["set-weight", "--instance", "ins-a", "--weight", "0", "--wait"];
    weight.extend(at);
    ok(&clb3(&emu, &weight).await);
    let out = clb3(&emu, &["describe-targets", "--lb", "lb-app", "--listener", "lbl-web"]).await;
    ok(&out);
    let rule = &stdout_json(&out)["response"]["Listeners"][0]["Rules"][0];
    let weights: Vec<(String, u64)> = (rule["Targets"].as_array().unwrap().iter())
        .map(|t| (t["InstanceId"].as_str().unwrap().to_owned(), t["Weight"].as_u64().unwrap()))
        .collect();
    assert_eq!(weights, [("ins-a".to_owned(), 0), ("ins-b".to_owned(), 10)]);

    let mut deregister = vec!["deregister", "--instance", "ins-a,ins-b", "--wait"];
    deregister.extend(at);
    ok(&clb3(&emu, &deregister).await);
    assert!(emu.state().targets["lb-app"].is_empty());
    assert_eq!(emu.state().calls.iter().filter(|c| c.action == "BatchDeregisterTargets").count(), 1);

    // A classic CLB through the ClassicalLB actions.
    let out = clb3(&emu, &["deregister", "--lb", LB, "--instance", "ins-c", "--wait"]).await;
    ok(&out);
    assert!(emu.state().backend_ids(LB).is_empty());
    let out = clb3(&emu, &["describe-targets", "--lb", LB]).await;
    ok(&out);
    assert_eq!(stdout_json(&out)["response"]["Targets"], serde_json::json!([]));

    let out = clb(&emu, emu.credentials(), &["describe-listeners", "--lb", "lb-app"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs CLB API 3.0"));
    let out =
        clb3(&emu, &["register", "--lb", "lb-app", "--instance", "ins-a", "--listener", "lbl-web"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listener and --port go together"));
}
