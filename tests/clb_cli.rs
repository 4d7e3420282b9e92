//! The built `clb-operator clb ...` binary against an in-process emulator: JSON on stdout, batching, `--wait`,
//! and the one-line error with a non-zero exit.

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

/// Runs the binary with only the given credentials in its environment.
async fn clb(emu: &EmulatorHandle, creds: &Credentials, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clb-operator"))
        .arg("clb")
        .args(args)
        .env_clear()
        .env("CLB_ENDPOINT", emu.endpoint().as_str())
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
        .args(["clb", "describe-lbs"])
        .env_clear()
        .env("CLB_ENDPOINT", emu.endpoint().as_str())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TENCENTCLOUD_SECRET_ID"));
}
