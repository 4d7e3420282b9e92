//! Tencent's own Python SDK (`tencentcloud-sdk-python-clb` from PyPI, installed by the test into a git-ignored
//! venv) drives the emulator's API 3.0 face: register, deregister and task status succeed, and a request signed
//! with a wrong key is refused. This keeps the emulator honest about signatures this project did not write.

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use clb_operator::{
    clb::Credentials,
    emulator::{SeedListener, StateView},
};
use common::fixtures::{emulator_config, spawn_emulator};

/// The SDK versions the reference's vectors were made with.
const SDK: [&str; 2] = ["tencentcloud-sdk-python-common==3.1.195", "tencentcloud-sdk-python-clb==3.1.194"];

/// A venv with the SDK, made once under the git-ignored `target/`.
fn venv_python() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tencentcloud-sdk-venv");
    let python = dir.join("bin/python");
    let marker = dir.join(format!("installed-{}", SDK.join("+")));
    if !marker.exists() {
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&dir).status().expect("python3 -m venv");
        assert!(ok.success(), "creating the venv failed");
        let out = Command::new(&python).args(["-m", "pip", "install", "-q"]).args(SDK).output().expect("pip");
        assert!(out.status.success(), "pip install failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&marker, "").expect("marker");
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencents_python_sdk_drives_the_v3_emulator() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    // A key with characters every encoding treats differently, as in the reference's vectors.
    let mut config = emulator_config(Duration::from_millis(200), vec![]);
    config.credentials = Credentials::new("AKIDsdk0001", "k+/=&%?# \u{e9}:@;,~!*'()$", None);
    config.listeners = vec![SeedListener {
        load_balancer_id: "lb-sdk0001".into(),
        listener_id: "lbl-sdk0001".into(),
        protocol: "TCP".into(),
        port: 80,
        rules: vec![],
    }];
    let emu = spawn_emulator(config).await;
    let endpoint = emu.local_addr().to_string();
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/clb_v3.py"))
        .args([
            &endpoint,
            "AKIDsdk0001",
            "k+/=&%?# \u{e9}:@;,~!*'()$",
            "lb-sdk0001",
            "lbl-sdk0001",
            "ins-sdk0001",
            "30080",
        ])
        .output()
        .expect("run the SDK script");
    assert!(out.status.success(), "the SDK script failed: {}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(seen["registered"], 0, "{seen}");
    assert_eq!(seen["after_register"], serde_json::json!([["ins-sdk0001", 30080]]), "{seen}");
    assert_eq!(seen["after_register_get"], seen["after_register"], "GET signed by the SDK: {seen}");
    assert_eq!(seen["deregistered"], 0, "{seen}");
    assert_eq!(seen["after_deregister"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["wrong_key"], "AuthFailure.SignatureFailure", "{seen}");

    let state: StateView = emu.state();
    let answered: Vec<(&str, Option<&str>)> =
        state.calls.iter().map(|c| (c.action.as_str(), c.error.as_deref())).collect();
    assert!(answered.contains(&("RegisterTargets", None)), "{answered:?}");
    assert!(answered.contains(&("DeregisterTargets", None)), "{answered:?}");
    assert!(answered.contains(&("DescribeTargets", Some("AuthFailure.SignatureFailure"))), "{answered:?}");
    let got = state
        .calls
        .iter()
        .any(|c| c.action == "DescribeTargets" && c.http_method == "GET" && c.error.is_none());
    assert!(got, "the SDK's GET was accepted: {:?}", state.calls);
}
