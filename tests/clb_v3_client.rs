//! The API 3.0 client against the emulator's v3 face: a register and a deregister as tasks polled to success,
//! transient errors retried, a wrong key not retried, and classic load balancers through the ClassicalLB actions
//! on the same state as API 2.0.

mod common;

use std::time::Duration;

use clb_operator::{
    clb::{
        Credentials,
        v3::{
            Action, ClassicalTargetsResponse, DescribeLoadBalancersResponse, DescribeTargetsResponse, Empty,
            ErrorClass, Target, TargetsRequest, TaskStatus, TaskStatusResponse,
        },
        v3_client::V3Client,
    },
    emulator::{EmulatorHandle, Faults, SeedListener},
};
use common::fixtures::{emulator_config, seed, spawn_emulator};
use serde_json::json;

const KEY: &str = "k+/=&%?# \u{e9}\u{4e2d}:@;,~!*'()$";

async fn emulator() -> EmulatorHandle {
    let mut config = emulator_config(Duration::from_millis(150), vec![]);
    config.credentials = Credentials::new("AKIDv3client", KEY, None);
    config.listeners = vec![SeedListener {
        load_balancer_id: "lb-v3".into(),
        listener_id: "lbl-tcp".into(),
        protocol: "TCP".into(),
        port: 80,
        rules: vec![],
    }];
    spawn_emulator(config).await
}

fn client(emu: &EmulatorHandle, key: &str) -> V3Client {
    let endpoint = format!("http://{}/", emu.local_addr()).parse().unwrap();
    V3Client::new(endpoint, Credentials::new("AKIDv3client", key, None), "ap-guangzhou", 50).unwrap()
}

fn targets(instance: &str) -> TargetsRequest {
    TargetsRequest {
        load_balancer_id: "lb-v3".into(),
        listener_id: "lbl-tcp".into(),
        targets: vec![Target {
            port: 30080,
            instance_id: Some(instance.into()),
            eni_ip: None,
            weight: Some(10),
        }],
        location_id: None,
        domain: None,
        url: None,
        weight: None,
    }
}

async fn wait(c: &V3Client, task: &str) -> TaskStatus {
    for _ in 0..100 {
        let (_, status): (_, TaskStatusResponse) =
            c.call(Action::DescribeTaskStatus, &json!({"TaskId": task})).await.unwrap();
        match status.state() {
            Some(TaskStatus::Running) => tokio::time::sleep(Duration::from_millis(20)).await,
            Some(done) => return done,
            None => panic!("unknown status {}", status.status),
        }
    }
    panic!("task {task} still running");
}

async fn bound(c: &V3Client) -> Vec<String> {
    let (_, r): (_, DescribeTargetsResponse) =
        c.call(Action::DescribeTargets, &json!({"LoadBalancerId": "lb-v3"})).await.unwrap();
    r.listeners
        .unwrap_or_default()
        .into_iter()
        .flat_map(|l| l.targets.unwrap_or_default())
        .filter_map(|t| t.instance_id)
        .collect()
}

/// The RequestId of a write is the task: polled to success, then the change shows, both ways.
#[tokio::test]
async fn register_and_deregister_are_tasks_polled_to_success() {
    let emu = emulator().await;
    let c = client(&emu, KEY);
    let (task, _): (_, Empty) = c.call(Action::RegisterTargets, &targets("ins-a")).await.unwrap();
    assert_eq!(task.len(), 36, "a UUID: {task}");
    assert_eq!(wait(&c, &task).await, TaskStatus::Succeeded);
    assert_eq!(bound(&c).await, ["ins-a"]);
    let (task, _): (_, Empty) = c.call(Action::DeregisterTargets, &targets("ins-a")).await.unwrap();
    assert_eq!(wait(&c, &task).await, TaskStatus::Succeeded);
    assert!(bound(&c).await.is_empty());
    let err = c.call::<Empty>(Action::DeregisterTargets, &targets("ins-a")).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Ambiguous, "removing an unbound target: {err}");
}

/// InternalError is retried (every send signed afresh); a wrong key is refused once, not retried.
#[tokio::test]
async fn transient_errors_are_retried_and_auth_errors_are_not() {
    let emu = emulator().await;
    emu.set_faults(Faults { error_rate: 0.3, ..emu.faults() }).unwrap();
    // 12 sends per call: all 12 failing has odds of 5e-7, so each call succeeds (or the test fails on unwrap);
    // 30 calls meet at least one injected error but for odds of 2e-5.
    let c = client(&emu, KEY).with_attempts(12);
    for _ in 0..30 {
        bound(&c).await;
    }
    let errors = emu.state().calls.iter().filter(|c| c.error.as_deref() == Some("InternalError")).count();
    assert!(errors > 0, "errors were injected and retried");
    emu.set_faults(Faults { error_rate: 0.0, ..emu.faults() }).unwrap();
    let before = emu.state().calls.len();
    let err = client(&emu, "wrong")
        .call::<DescribeTargetsResponse>(Action::DescribeTargets, &json!({"LoadBalancerId": "lb-v3"}))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Auth, "{err}");
    assert_eq!(emu.state().calls.len() - before, 1, "an auth error is not retried");
    assert!(!err.to_string().contains("wrong"), "no key in the error: {err}");
}

/// A classic load balancer lives in the API 2.0 state and is served to API 3.0 through the ClassicalLB actions:
/// listed with Forward 0, and what v3 registers is what v2 sees.
#[tokio::test]
async fn classic_load_balancers_share_the_v2_state() {
    let mut config =
        emulator_config(Duration::from_millis(100), vec![seed("lb-classic", vec!["ins-old".into()])]);
    config.credentials = Credentials::new("AKIDv3client", KEY, None);
    let emu = spawn_emulator(config).await;
    let c = client(&emu, KEY);
    let register =
        json!({"LoadBalancerId": "lb-classic", "Targets": [{"InstanceId": "ins-new", "Weight": 10}]});
    let (task, _): (_, Empty) = c.call(Action::RegisterTargetsWithClassicalLB, &register).await.unwrap();
    assert_eq!(wait(&c, &task).await, TaskStatus::Succeeded);
    let (_, lbs): (_, DescribeLoadBalancersResponse) =
        c.call(Action::DescribeLoadBalancers, &json!({})).await.unwrap();
    let classic =
        lbs.load_balancer_set.unwrap_or_default().into_iter().find(|lb| lb.load_balancer_id == "lb-classic");
    assert_eq!(classic.and_then(|lb| lb.forward), Some(0));
    let (_, t): (_, ClassicalTargetsResponse) =
        c.call(Action::DescribeClassicalLBTargets, &json!({"LoadBalancerId": "lb-classic"})).await.unwrap();
    let ids: Vec<String> = t.targets.unwrap_or_default().into_iter().filter_map(|b| b.instance_id).collect();
    assert_eq!(ids, ["ins-new", "ins-old"]);
    assert_eq!(emu.state().backend_ids("lb-classic"), ["ins-new", "ins-old"], "the v2 view shows it too");
    let deregister = json!({"LoadBalancerId": "lb-classic", "InstanceIds": ["ins-old"]});
    let (task, _): (_, Empty) = c.call(Action::DeregisterTargetsFromClassicalLB, &deregister).await.unwrap();
    assert_eq!(wait(&c, &task).await, TaskStatus::Succeeded);
    assert_eq!(emu.state().backend_ids("lb-classic"), ["ins-new"]);
}
