//! The built `clb-operator emulator` binary: it refuses to start without credentials, prints its endpoint,
//! serves signed requests, and on SIGTERM exits cleanly after writing its state file.

use std::process::Stdio;
use std::time::Duration;

use clb_operator::clb::{ClbClient, ClientConfig, Credentials};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_clb-operator");

/// Without --secret-id/--secret-key or their environment variables the emulator does not start.
#[tokio::test]
async fn emulator_without_credentials_refuses_to_start() {
    let out =
        Command::new(BIN).args(["emulator", "--listen", "127.0.0.1:0"]).env_clear().output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--secret-key") && stderr.contains("TENCENTCLOUD_SECRET_KEY"), "{stderr}");
}

/// The binary serves its seeded LB to a signed client and persists its state when terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let mut child = Command::new(BIN)
        .args(["emulator", "--listen", "127.0.0.1:0", "--load-balancer", "lb-bin=ins-a,ins-b"])
        .args(["--task-duration", "50ms", "--state-file"])
        .arg(&state_file)
        .env_clear()
        .env("TENCENTCLOUD_SECRET_ID", "AKIDbinary")
        .env("TENCENTCLOUD_SECRET_KEY", "binary key +/=")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let endpoint = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the emulator prints its endpoint")
        .unwrap()
        .expect("a line");
    assert!(endpoint.starts_with("http://127.0.0.1:") && endpoint.ends_with("/v2/index.php"), "{endpoint}");

    let config = ClientConfig { endpoint: endpoint.parse().unwrap(), ..ClientConfig::default() };
    let client = ClbClient::new(config, Credentials::new("AKIDbinary", "binary key +/=", None)).unwrap();
    let backends = client.describe_backends("lb-bin").await.unwrap();
    let ids: Vec<&str> = backends.iter().map(|b| b.instance_id.as_str()).collect();
    assert_eq!(ids, ["ins-a", "ins-b"]);

    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(saved["loadBalancers"]["lb-bin"]["backends"][0]["instanceId"], "ins-a");
}
