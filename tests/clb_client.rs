//! The client against the in-process emulator on 127.0.0.1: the signing matrix, batching, task polling,
//! retries, rate limiting and transport failures.

use std::time::{Duration, Instant};

use clb_operator::clb::{
    Action, ClbClient, ClbError, ClientConfig, Credentials, HttpMethod, PollBackoff, RetryConfig, SignMethod,
    Submitted, TaskState,
};
use clb_operator::emulator::{EmulatorConfig, EmulatorHandle, Faults, SeedLoadBalancer};
use common::fixtures::{emulator_config as config_with, seed, spawn_emulator as start};
use tokio::net::TcpListener;

mod common;

const LB: &str = "lb-client01";

fn instances(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("ins-{prefix}{i:04}")).collect()
}

fn emulator_config() -> EmulatorConfig {
    config_with(Duration::from_millis(30), vec![seed(LB, vec![])])
}

/// Fast retries, so fault-injection tests stay quick.
fn fast_retry(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
        jitter: true,
    }
}

fn client_for(emu: &EmulatorHandle, config: ClientConfig) -> ClbClient {
    ClbClient::new(ClientConfig { endpoint: emu.endpoint(), ..config }, emu.credentials().clone()).unwrap()
}

fn client(emu: &EmulatorHandle) -> ClbClient {
    client_for(emu, ClientConfig { retry: fast_retry(4), ..ClientConfig::default() })
}

const FAST_POLL: PollBackoff =
    PollBackoff { initial: Duration::from_millis(10), factor: 2, max: Duration::from_millis(100) };

/// Submits, then waits for every task; panics on any failure.
async fn wait_all(client: &ClbClient, outcomes: Vec<clb_operator::clb::BatchOutcome>) -> Vec<TaskState> {
    let mut states = Vec::new();
    for outcome in outcomes {
        match outcome.result {
            Ok(Submitted::Task { request_id }) => {
                states.push(client.wait_task(request_id, &FAST_POLL, Duration::from_secs(10)).await.unwrap());
            }
            other => panic!("batch {:?}: {other:?}", outcome.instance_ids),
        }
    }
    states
}

/// Every combination of GET/POST, HmacSHA1/HmacSHA256 and awkward secret keys (with `+/=&%?#`, spaces and
/// non-ASCII), with and without a session token and with an odd region value, is accepted by the emulator.
#[tokio::test]
async fn emulator_accepts_everything_the_client_signs() {
    let keys = ["k+/=&%?#key", "with spaces  and\ttab", "clé-密钥-ключ ü€ +/=&%?#"];
    for key in keys {
        let creds = Credentials::new("AKIDmatrix", key, None);
        let emu = start(EmulatorConfig { credentials: creds.clone(), ..emulator_config() }).await;
        for http_method in [HttpMethod::Get, HttpMethod::Post] {
            for sign_method in [SignMethod::HmacSha1, SignMethod::HmacSha256] {
                for token in [None, Some("tok+/= en".to_owned())] {
                    let config = ClientConfig {
                        endpoint: emu.endpoint(),
                        http_method,
                        sign_method,
                        region: "ap-guangzhou +/&ü".into(),
                        retry: fast_retry(1),
                        ..ClientConfig::default()
                    };
                    let with_token = Credentials::new("AKIDmatrix", key, token);
                    let client = ClbClient::new(config, with_token).unwrap();
                    let what = format!("{key:?} {http_method:?} {sign_method:?}");
                    let lbs = client.describe_load_balancers(&[LB.to_owned()]).await.expect(&what);
                    assert_eq!(lbs.len(), 1, "{what}");
                    let outcomes = client.register(LB, &[("ins-matrix".to_owned(), 10)]).await;
                    assert!(outcomes[0].result.is_ok(), "{what}: {:?}", outcomes[0].result);
                    client.describe_backends(LB).await.expect(&what);
                }
            }
        }
        let state = emu.state();
        assert!(state.calls.iter().all(|c| c.code == 0), "{:?}", state.calls.iter().find(|c| c.code != 0));
        assert_eq!(state.calls.len(), 2 * 2 * 2 * 3);
        assert_eq!(state.calls.iter().filter(|c| c.http_method == "POST").count(), 12);
        emu.shutdown().await;
    }
}

/// Register 45 instances, then deregister them: exactly 3 Deregister calls (20+20+5), each task polled to
/// success, and the LB ends up empty.
#[tokio::test]
async fn register_then_deregister_45_instances_in_3_calls() {
    let emu = start(emulator_config()).await;
    let client = client(&emu);
    let ids = instances("a", 45);
    let backends: Vec<(String, u32)> = ids.iter().map(|id| (id.clone(), 20)).collect();
    let states = wait_all(&client, client.register(LB, &backends).await).await;
    assert_eq!(states, [TaskState::Succeeded; 3]);
    let on_lb = client.describe_backends(LB).await.unwrap();
    assert_eq!(on_lb.len(), 45);
    assert!(on_lb.iter().all(|b| b.weight == 20));

    let outcomes = client.deregister(LB, &ids).await;
    let sizes: Vec<usize> = outcomes.iter().map(|o| o.instance_ids.len()).collect();
    assert_eq!(sizes, [20, 20, 5]);
    assert_eq!(wait_all(&client, outcomes).await, [TaskState::Succeeded; 3]);
    assert!(client.describe_backends(LB).await.unwrap().is_empty());

    let state = emu.state();
    let deregisters: Vec<_> = state.calls_of(Action::DeregisterInstancesFromLoadBalancer).collect();
    assert_eq!(deregisters.len(), 3);
    let logged: Vec<String> = deregisters.iter().flat_map(|c| c.instance_ids.clone()).collect();
    assert_eq!(logged, ids, "every instance exactly once, in order");
}

/// A task that fails comes back as `TaskState::Failed`; once the fault is cleared, the retry succeeds.
#[tokio::test]
async fn failed_task_is_reported_as_failed() {
    let emu = start(EmulatorConfig {
        faults: Faults { task_fail_rate: 1.0, task_duration: Duration::from_millis(20), ..Faults::default() },
        load_balancers: vec![SeedLoadBalancer { id: LB.into(), instance_ids: vec!["ins-x".into()] }],
        ..emulator_config()
    })
    .await;
    let client = client(&emu);
    let states = wait_all(&client, client.deregister(LB, &["ins-x".to_owned()]).await).await;
    assert_eq!(states, [TaskState::Failed]);
    assert_eq!(emu.state().backend_ids(LB), ["ins-x"]);

    emu.set_faults(Faults { task_fail_rate: 0.0, ..emu.faults() }).unwrap();
    let states = wait_all(&client, client.deregister(LB, &["ins-x".to_owned()]).await).await;
    assert_eq!(states, [TaskState::Succeeded]);
    assert!(emu.state().backend_ids(LB).is_empty());
}

/// With 30 % of requests failing with 6000, every operation still succeeds within a 10-attempt budget
/// (0.3^10 ≈ 6e-6 per call), and the call log shows the retries.
#[tokio::test]
async fn error_rate_is_absorbed_by_retries() {
    let emu = start(EmulatorConfig {
        faults: Faults { error_rate: 0.3, task_duration: Duration::from_millis(20), ..Faults::default() },
        ..emulator_config()
    })
    .await;
    let client = client_for(&emu, ClientConfig { retry: fast_retry(10), ..ClientConfig::default() });
    let ids = instances("e", 30);
    for round in 0..3 {
        let backends: Vec<(String, u32)> = ids.iter().map(|id| (id.clone(), 10)).collect();
        assert!(
            wait_all(&client, client.register(LB, &backends).await)
                .await
                .iter()
                .all(|s| *s == TaskState::Succeeded)
        );
        assert_eq!(client.describe_backends(LB).await.unwrap().len(), 30, "round {round}");
        assert_eq!(client.describe_load_balancers(&[LB.to_owned()]).await.unwrap().len(), 1);
        assert!(
            wait_all(&client, client.deregister(LB, &ids).await)
                .await
                .iter()
                .all(|s| *s == TaskState::Succeeded)
        );
    }
    let state = emu.state();
    assert!(state.calls.iter().any(|c| c.code == 6000), "faults were injected");
    assert!(state.calls.iter().all(|c| c.code == 0 || c.code == 6000));
}

/// A 4100 (wrong key) is permanent: exactly one call reaches the emulator.
#[tokio::test]
async fn auth_failure_is_not_retried() {
    let emu = start(emulator_config()).await;
    let wrong = Credentials::new(emu.credentials().secret_id(), "not-the-key", None);
    let config = ClientConfig { endpoint: emu.endpoint(), retry: fast_retry(5), ..ClientConfig::default() };
    let client = ClbClient::new(config, wrong).unwrap();
    let outcomes = client.deregister(LB, &["ins-1".to_owned()]).await;
    let err = outcomes.into_iter().next().unwrap().result.unwrap_err();
    assert_eq!(err.code(), Some(4100));
    assert_eq!(err.kind(), "auth");
    assert!(!err.is_retryable());
    assert_eq!(emu.state().calls.len(), 1);
}

/// 5000 on Deregister (the LB is gone) is "already gone", not an error; an instance missing from a known LB
/// still gets a task.
#[tokio::test]
async fn deregister_not_found_is_already_gone() {
    let emu = start(emulator_config()).await;
    let client = client(&emu);
    let outcomes = client.deregister("lb-gone", &["ins-1".to_owned()]).await;
    assert!(matches!(outcomes[0].result, Ok(Submitted::AlreadyGone)));
    let outcomes = client.deregister(LB, &["ins-never".to_owned()]).await;
    assert!(matches!(outcomes[0].result, Ok(Submitted::Task { .. })));
    let err = client.describe_backends("lb-gone").await.unwrap_err();
    assert_eq!((err.code(), err.kind()), (Some(5000), "not_found"));
}

/// A burst of 200 concurrent calls is paced by the client: at 100/s they take at least ~2 s, and no
/// one-second window of the emulator's log holds more than the limit (plus the one-request burst and some
/// scheduling jitter between release and arrival).
#[tokio::test]
async fn rate_limit_holds_under_a_burst_of_200() {
    const RATE: u32 = 100;
    let emu = start(emulator_config()).await;
    let client = client_for(&emu, ClientConfig { rate_limit_per_second: RATE, ..ClientConfig::default() });
    let started = Instant::now();
    let calls = (0..200).map(|_| {
        let client = client.clone();
        async move { client.describe_load_balancers(&[LB.to_owned()]).await }
    });
    let results = futures::future::join_all(calls).await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(Result::is_ok));
    // 199 intervals of 10 ms after the first request.
    assert!(elapsed >= Duration::from_millis(1990 - 50), "200 calls took only {elapsed:?}");

    let times: Vec<u64> = emu.state().calls.iter().map(|c| c.at_ms).collect();
    assert_eq!(times.len(), 200);
    let busiest =
        times.iter().map(|start| times.iter().filter(|t| **t >= *start && **t < start + 1000).count()).max();
    assert!(busiest.unwrap() <= RATE as usize + 1 + 10, "busiest second had {busiest:?} calls");

    // Another action is not held back by the exhausted DescribeLoadBalancers budget.
    let other = Instant::now();
    client.describe_backends(LB).await.unwrap();
    assert!(other.elapsed() < Duration::from_millis(500));
}

/// Long requests switch from GET to POST by themselves (the URL would pass 2000 bytes).
#[tokio::test]
async fn long_requests_are_sent_as_post() {
    let emu = start(EmulatorConfig { max_batch: 100, ..emulator_config() }).await;
    let client =
        client_for(&emu, ClientConfig { max_batch: 100, retry: fast_retry(1), ..ClientConfig::default() });
    let ids: Vec<String> = (0..60).map(|i| format!("ins-a-rather-long-instance-name-{i:04}")).collect();
    let outcomes = client.deregister(LB, &ids).await;
    assert!(outcomes[0].result.is_ok());
    client.describe_backends(LB).await.unwrap();
    let methods: Vec<String> = emu.state().calls.iter().map(|c| c.http_method.clone()).collect();
    assert_eq!(methods, ["POST", "GET"]);
}

/// DescribeLoadBalancers without ids pages through everything; with ids, unknown ones are just absent.
#[tokio::test]
async fn describe_load_balancers_pages_and_filters() {
    let seeds: Vec<SeedLoadBalancer> =
        (0..45).map(|i| SeedLoadBalancer { id: format!("lb-p{i:03}"), instance_ids: vec![] }).collect();
    let emu = start(EmulatorConfig { load_balancers: seeds, ..emulator_config() }).await;
    let client = client(&emu);
    let all = client.describe_load_balancers(&[]).await.unwrap();
    assert_eq!(all.len(), 45);
    assert_eq!(emu.state().calls.len(), 3, "pages of 20");
    let some =
        client.describe_load_balancers(&["lb-p007".to_owned(), "lb-unknown".to_owned()]).await.unwrap();
    let ids: Vec<&str> = some.iter().map(|l| l.load_balancer_id.as_str()).collect();
    assert_eq!(ids, ["lb-p007"]);
}

/// Connection refused is a retryable transport error; a slow answer is a retryable timeout.
#[tokio::test]
async fn transport_failures_and_timeouts_are_typed() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let config = ClientConfig {
        endpoint: format!("http://{addr}/v2/index.php").parse().unwrap(),
        retry: fast_retry(2),
        ..ClientConfig::default()
    };
    let client = ClbClient::new(config, Credentials::new("id", "key", None)).unwrap();
    let err = client.describe_backends(LB).await.unwrap_err();
    assert!(matches!(err, ClbError::Transport { .. }), "{err}");
    assert!(err.is_retryable() && err.kind() == "transport");

    let emu = start(EmulatorConfig {
        faults: Faults { latency: Duration::from_millis(400), ..Faults::default() },
        ..emulator_config()
    })
    .await;
    let client = client_for(
        &emu,
        ClientConfig {
            request_timeout: Duration::from_millis(50),
            retry: fast_retry(2),
            ..ClientConfig::default()
        },
    );
    let err = client.describe_backends(LB).await.unwrap_err();
    assert!(matches!(err, ClbError::Timeout { .. }), "{err}");
    assert!(err.is_retryable() && err.kind() == "timeout");
}

/// `wait_task` gives up with `TaskTimeout` when the task outlives the wait.
#[tokio::test]
async fn wait_task_times_out() {
    let emu = start(EmulatorConfig {
        faults: Faults { task_duration: Duration::from_secs(30), ..Faults::default() },
        ..emulator_config()
    })
    .await;
    let client = client(&emu);
    let Ok(Submitted::Task { request_id }) =
        client.deregister(LB, &["ins-1".to_owned()]).await.remove(0).result
    else {
        panic!("no task")
    };
    assert_eq!(client.task_result(request_id).await.unwrap(), TaskState::Running);
    let err = client.wait_task(request_id, &FAST_POLL, Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, ClbError::TaskTimeout { request_id: id, .. } if id == request_id), "{err}");
}
