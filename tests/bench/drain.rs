//! Benchmark: failed requests during a rolling drain, with clb-operator and with what users have without it.
//!
//! Real traffic flows through the CLB emulator's served listener to tiny HTTP backends on the nodes' instance
//! addresses (one per kwok node, standing in for its pods). A load generator sends a fixed rate of requests,
//! half on keep-alive connections and half on fresh ones, while nodes are drained one after another the way
//! cluster-autoscaler and `kubectl drain` do it: taint, the pods' preStop delay (the backend still serves),
//! the backend stops, the node is deleted. Scenarios, each on a fresh emulator with Tencent's default health
//! check (5 s, 2 s, 3 failures) and 2 s tasks:
//!
//! - `operator`: clb-operator with the default drain policy;
//! - `operator-weight-zero`: clb-operator with `drain.weightZeroFor`;
//! - `health-checks-only`: no controller; the CLB notices the dead backend by itself;
//! - `deregister-on-node-deletion`: a controller that deregisters a node's target when the Node is deleted.
//!
//! `cargo bench --bench drain` writes tests/bench/DRAIN.md, drain.json and drain-timeline.png; `-- --quick` is
//! the CI size (results under target/bench/drain/). It fails only on functional invariants: the operator
//! scenarios must have 0 failed requests, and the health-checks-only one more than 0 (else nothing is measured).

#[path = "../common/mod.rs"]
mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clb_operator::{
    clb::{
        cloud::{Cloud, Placement, Submitted, Target, TaskState},
        v3_client::V3Client,
        v3_cloud::V3Cloud,
    },
    emulator::{
        EmulatorHandle,
        proxy::{HealthCheck, InstanceAddr, ListenerHealthCheck, Serve},
    },
};
use common::{
    OperatorCommand, OperatorProcess,
    fixtures::{self, NodeFixture, emulator_config, spawn_emulator},
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc},
};

const LB: &str = "lb-drain0001";
const LISTENER: &str = "lbl-web00001";
/// The backend port on every node (a NodePort).
const PORT: u16 = 30080;
/// How long a CLB task takes in the emulator.
const TASK: Duration = Duration::from_secs(2);
/// How long a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Keep-alive connections of the load generator.
const POOL: usize = 8;

/// Sizes and timings.
#[derive(Clone, Debug)]
struct Size {
    name: &'static str,
    nodes: usize,
    drained: usize,
    rate: u32,
    pre_stop: Duration,
    delete_after: Duration,
    gap: Duration,
    weight_zero_for: &'static str,
}

const QUICK: Size = Size {
    name: "quick",
    nodes: 3,
    drained: 2,
    rate: 100,
    pre_stop: Duration::from_secs(5),
    delete_after: Duration::from_secs(1),
    gap: Duration::from_secs(1),
    weight_zero_for: "2s",
};
const FULL: Size = Size {
    name: "full",
    nodes: 6,
    drained: 4,
    rate: 200,
    pre_stop: Duration::from_secs(8),
    delete_after: Duration::from_secs(2),
    gap: Duration::from_secs(2),
    weight_zero_for: "4s",
};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

/// Which controller takes care of the load balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Operator,
    OperatorWeightZero,
    HealthChecksOnly,
    DeregisterOnNodeDeletion,
}

impl Scenario {
    const ALL: [Scenario; 4] =
        [Self::Operator, Self::OperatorWeightZero, Self::HealthChecksOnly, Self::DeregisterOnNodeDeletion];

    fn name(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::OperatorWeightZero => "operator-weight-zero",
            Self::HealthChecksOnly => "health-checks-only",
            Self::DeregisterOnNodeDeletion => "deregister-on-node-deletion",
        }
    }

    fn operator(self) -> bool {
        matches!(self, Self::Operator | Self::OperatorWeightZero)
    }
}

/// A tiny HTTP/1.1 backend on one instance address: answers every request with its node's name, keeps
/// connections alive, and on stop closes its listener and its idle connections (as a server does when its pod's
/// preStop ends and it gets SIGTERM).
struct Backend {
    stop: Arc<Notify>,
    stopped: Arc<AtomicBool>,
}

impl Backend {
    async fn start(ip: IpAddr, name: String) -> Backend {
        let listener =
            TcpListener::bind((ip, PORT)).await.unwrap_or_else(|e| panic!("bind {ip}:{PORT}: {e}"));
        let stop = Arc::new(Notify::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let (s, st) = (stop.clone(), stopped.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = s.notified() => return,
                };
                let Ok((conn, _)) = accepted else { continue };
                let (name, st) = (name.clone(), st.clone());
                tokio::spawn(serve_connection(conn, name, st));
            }
        });
        Backend { stop, stopped }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify_one();
    }
}

async fn serve_connection(conn: TcpStream, name: String, stopped: Arc<AtomicBool>) {
    let mut reader = BufReader::new(conn);
    loop {
        // An idle connection is closed once the backend stops; one mid-request is answered first.
        let mut first = String::new();
        let read = tokio::select! {
            r = reader.read_line(&mut first) => r,
            () = wait_for(&stopped) => return,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return;
        }
        let mut line = String::new();
        while reader.read_line(&mut line).await.is_ok_and(|n| n > 2) {
            line.clear();
        }
        let close = stopped.load(Ordering::SeqCst);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{name}",
            name.len(),
            if close { "close" } else { "keep-alive" }
        );
        if reader.get_mut().write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

async fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request's outcome: who answered, or why it failed.
#[derive(Clone, Debug)]
struct Sample {
    at_ms: u64,
    keep_alive: bool,
    result: Result<String, &'static str>,
}

/// Reads one HTTP response: its status, body and whether the server closes the connection.
async fn read_response(reader: &mut BufReader<TcpStream>) -> Result<(u16, String, bool), &'static str> {
    let mut status_line = String::new();
    match reader.read_line(&mut status_line).await {
        Ok(0) => return Err("closed"),
        Ok(_) => {}
        Err(_) => return Err("reset"),
    }
    let status: u16 =
        status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("malformed")?;
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.map_err(|_| "reset")? == 0 {
            return Err("closed");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| "malformed")?;
        }
        close |= lower == "connection: close";
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.map_err(|_| "reset")?;
    Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// A request on a fresh connection.
async fn fresh(addr: SocketAddr) -> Result<String, &'static str> {
    let conn = TcpStream::connect(addr).await.map_err(|_| "connect")?;
    let mut reader = BufReader::new(conn);
    reader.get_mut().write_all(REQUEST).await.map_err(|_| "reset")?;
    match read_response(&mut reader).await? {
        (200, body, _) => Ok(body),
        _ => Err("non-2xx"),
    }
}

/// One request on the worker's connection (a new one if it has none). The error says whether it was a reused
/// connection the server had closed while idle.
async fn on_connection(
    addr: SocketAddr,
    conn: &mut Option<BufReader<TcpStream>>,
) -> Result<String, (&'static str, bool)> {
    let reused = conn.is_some();
    let mut reader = match conn.take() {
        Some(r) => r,
        None => BufReader::new(TcpStream::connect(addr).await.map_err(|_| ("connect", false))?),
    };
    reader.get_mut().write_all(REQUEST).await.map_err(|_| ("reset", reused))?;
    match read_response(&mut reader).await {
        Ok((200, body, close)) => {
            if !close {
                *conn = Some(reader);
            }
            Ok(body)
        }
        Ok(_) => Err(("non-2xx", false)),
        Err(kind) => Err((kind, reused && kind == "closed")),
    }
}

/// A keep-alive worker: requests on one connection while it lasts. A reused connection the server closed while
/// idle is retried once on a fresh one, as HTTP clients do for idempotent requests; anything else counts.
async fn keep_alive_worker(addr: SocketAddr, mut jobs: mpsc::Receiver<u64>, out: Arc<Mutex<Vec<Sample>>>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while let Some(at_ms) = jobs.recv().await {
        let first = tokio::time::timeout(REQUEST_TIMEOUT, on_connection(addr, &mut conn)).await;
        let result = match first {
            Ok(Err((_, true))) => {
                match tokio::time::timeout(REQUEST_TIMEOUT, on_connection(addr, &mut conn)).await {
                    Ok(r) => r.map_err(|(k, _)| k),
                    Err(_) => Err("timeout"),
                }
            }
            Ok(r) => r.map_err(|(k, _)| k),
            Err(_) => Err("timeout"),
        };
        if result.is_err() {
            conn = None;
        }
        out.lock().unwrap().push(Sample { at_ms, keep_alive: true, result });
    }
}

/// Sends `rate` requests a second until `stop`, alternating keep-alive and fresh connections.
fn load(
    addr: SocketAddr,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let o = out.clone();
    let task = tokio::spawn(async move {
        let mut workers = Vec::new();
        for _ in 0..POOL {
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(keep_alive_worker(addr, rx, o.clone()));
            workers.push(tx);
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0usize;
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let at_ms = now_ms();
            if n.is_multiple_of(2) {
                let _ = workers[(n / 2) % POOL].try_send(at_ms);
            } else {
                let o = o.clone();
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(REQUEST_TIMEOUT, fresh(addr)).await {
                        Ok(r) => r,
                        Err(_) => Err("timeout"),
                    };
                    o.lock().unwrap().push(Sample { at_ms, keep_alive: false, result });
                });
            }
            n += 1;
        }
        drop(workers);
        tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
    });
    (out, task)
}

fn node_name(s: usize, n: usize) -> String {
    format!("drain-s{s}-n{n}")
}

fn instance(s: usize, n: usize) -> String {
    format!("ins-drain{s}{n:02}")
}

/// Each scenario's nodes on their own loopback addresses, 127.0.<s+1>.<n+10>.
fn ip(s: usize, n: usize) -> IpAddr {
    IpAddr::from([127, 0, s as u8 + 1, n as u8 + 10])
}

fn target(s: usize, n: usize) -> Target {
    let at = Placement { listener_id: LISTENER.into(), location_id: None, port: PORT };
    Target { instance: instance(s, n), at: Some(at) }
}

/// Waits for the tasks of `batches`.
async fn done(cloud: &V3Cloud, batches: Vec<clb_operator::clb::cloud::Batch>) {
    for b in batches {
        if let Ok(Submitted::Task(id)) = &b.result {
            while cloud.task(id).await.is_ok_and(|s| s == TaskState::Running) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What one scenario measured.
struct Outcome {
    samples: Vec<Sample>,
    signals: Vec<(String, u64)>,
    start_ms: u64,
}

async fn run_scenario(
    client: &Client,
    plane: &common::Plane,
    logs: &std::path::Path,
    size: &Size,
    s: usize,
    scenario: Scenario,
) -> Outcome {
    let ns = format!("drain-{}-{}", scenario.name(), rand::random::<u16>());
    let mut backends = Vec::new();
    for n in 0..size.nodes {
        backends.push(Backend::start(ip(s, n), node_name(s, n)).await);
    }
    let serve_addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut config = emulator_config(TASK, vec![]);
    config.listeners = vec![format!("{LB}/{LISTENER}=TCP:80").parse().unwrap()];
    config.serve = vec![Serve { listener_id: LISTENER.into(), addr: serve_addr }];
    config.instances =
        (0..size.nodes).map(|n| InstanceAddr { instance_id: instance(s, n), ip: ip(s, n) }).collect();
    config.health_checks =
        vec![ListenerHealthCheck { listener_id: LISTENER.into(), check: HealthCheck::default() }];
    let emu: EmulatorHandle = spawn_emulator(config).await;
    let nodes: Api<Node> = Api::all(client.clone());
    for n in 0..size.nodes {
        NodeFixture::new(node_name(s, n))
            .kwok()
            .label("drain-scenario", format!("s{s}"))
            .instance(instance(s, n))
            .create(client)
            .await;
    }

    let cloud = V3Cloud::new(
        V3Client::new(emu.v3_endpoint(), emu.credentials().clone(), "ap-guangzhou", 20).unwrap(),
    );
    let mut operator: Option<OperatorProcess> = None;
    let mut watcher_task = None;
    if scenario.operator() {
        fixtures::namespace(client, &ns).await.unwrap();
        let c = emu.credentials();
        fixtures::credentials_secret(client, &ns, "clb-credentials", c.secret_id(), c.secret_key())
            .await
            .unwrap();
        let log = logs.join(format!("operator-{}.log", scenario.name()));
        operator = Some(
            OperatorCommand::new(&plane.kubeconfig, &emu.v3_endpoint(), log)
                .namespace(&ns)
                .rust_log("info")
                .start(),
        );
        let mut drain = json!({});
        if scenario == Scenario::OperatorWeightZero {
            drain = json!({"weightZeroFor": size.weight_zero_for});
        }
        let spec = json!({"listeners": [{"listenerId": LISTENER, "port": PORT}], "drain": drain});
        let b = fixtures::binding("web", LB)
            .nodes("drain-scenario", &format!("s{s}"))
            .region("ap-guangzhou")
            .with(spec);
        b.try_create(&Api::namespaced(client.clone(), &ns)).await.unwrap();
    } else {
        let all: Vec<Target> = (0..size.nodes).map(|n| target(s, n)).collect();
        done(&cloud, cloud.register(LB, &all, 10).await).await;
    }
    if scenario == Scenario::DeregisterOnNodeDeletion {
        // What controllers that react only to a deleted Node do: deregister its target when the Node is gone.
        let (cloud, nodes) = (
            V3Cloud::new(
                V3Client::new(emu.v3_endpoint(), emu.credentials().clone(), "ap-guangzhou", 20).unwrap(),
            ),
            nodes.clone(),
        );
        watcher_task = Some(tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(nodes, watcher::Config::default()).default_backoff());
            while let Some(Ok(event)) = events.next().await {
                if let watcher::Event::Delete(node) = event
                    && let Some(name) = node.metadata.name
                    && let Some(n) = name.strip_prefix(&format!("drain-s{s}-n")).and_then(|n| n.parse().ok())
                {
                    cloud.deregister(LB, &[target(s, n)]).await;
                }
            }
        }));
    }

    // Every node serves (its target registered and healthy: 3 checks 5 s apart) before the load starts.
    let ready = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < size.nodes && ready.elapsed() < Duration::from_secs(120) {
        if let Ok(Ok(name)) = tokio::time::timeout(REQUEST_TIMEOUT, fresh(serve_addr)).await {
            seen.insert(name);
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(seen.len(), size.nodes, "{}: every node serving before the drain", scenario.name());

    let stop = Arc::new(AtomicBool::new(false));
    let start_ms = now_ms();
    let (samples, load_task) = load(serve_addr, size.rate, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut signals = Vec::new();
    let taint = json!({"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]}});
    for (n, backend) in backends.iter().enumerate().take(size.drained) {
        let name = node_name(s, n);
        signals.push((name.clone(), now_ms()));
        nodes.patch(&name, &PatchParams::default(), &Patch::Merge(&taint)).await.unwrap();
        tokio::time::sleep(size.pre_stop).await;
        backend.stop();
        tokio::time::sleep(size.delete_after).await;
        nodes.delete(&name, &DeleteParams::default()).await.unwrap();
        tokio::time::sleep(size.gap).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = load_task.await;
    let samples = samples.lock().unwrap().clone();

    if let Some(op) = operator {
        op.stop();
    }
    if let Some(w) = watcher_task {
        w.abort();
    }
    for (n, backend) in backends.iter().enumerate().skip(size.drained) {
        backend.stop();
        let _ = nodes.delete(&node_name(s, n), &DeleteParams::default()).await;
    }
    emu.shutdown().await;
    Outcome { samples, signals, start_ms }
}

/// The numbers of one scenario.
fn summarize(size: &Size, scenario: Scenario, o: &Outcome) -> Value {
    let mut samples = o.samples.clone();
    samples.sort_by_key(|s| s.at_ms);
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.result.is_err()).collect();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &failed {
        *kinds.entry(f.result.as_ref().err().copied().unwrap_or("?")).or_default() += 1;
    }
    // The longest error burst: failures less than 1 s apart belong to one burst, measured first to last.
    let (mut longest, mut burst): (u64, Option<(u64, u64)>) = (0, None);
    for f in &failed {
        burst = match burst {
            Some((first, last)) if f.at_ms < last + 1000 => Some((first, f.at_ms)),
            _ => Some((f.at_ms, f.at_ms)),
        };
        if let Some((first, last)) = burst {
            longest = longest.max(last - first);
        }
    }
    let nodes: Vec<Value> = o
        .signals
        .iter()
        .map(|(node, at)| {
            let served = |keep_alive: bool| {
                (samples.iter())
                    .filter(|s| s.keep_alive == keep_alive && s.result.as_deref() == Ok(node.as_str()))
                    .map(|s| s.at_ms as i64 - *at as i64)
                    .max()
            };
            json!({"node": node, "last_served_after_signal_ms": served(true).max(served(false)),
                "last_fresh_connection_after_signal_ms": served(false)})
        })
        .collect();
    // Requests and errors per second, for the timeline.
    let mut per_second: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for s in &samples {
        let e = per_second.entry((s.at_ms.saturating_sub(o.start_ms)) / 1000).or_default();
        e.0 += 1;
        e.1 += u64::from(s.result.is_err());
    }
    let keep_alive_failed = failed.iter().filter(|f| f.keep_alive).count();
    json!({
        "scenario": scenario.name(),
        "requests": samples.len(),
        "failed": failed.len(),
        "failed_keep_alive": keep_alive_failed,
        "failed_fresh": failed.len() - keep_alive_failed,
        "failure_kinds": kinds,
        "longest_error_burst_ms": longest,
        "drained_nodes": nodes,
        "signals_ms_since_start": o.signals.iter().map(|(_, at)| at - o.start_ms).collect::<Vec<_>>(),
        "timeline": per_second.iter().map(|(t, (r, e))| json!([t, r, e])).collect::<Vec<_>>(),
        "pre_stop_ms": size.pre_stop.as_millis() as u64,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size = if args.iter().any(|a| a == "--quick") { QUICK } else { FULL };
    println!(
        "drain benchmark size {}: {} nodes, {} drained, {} req/s",
        size.name, size.nodes, size.drained, size.rate
    );
    let repo = common::repo();
    let dir = std::env::var_os("TESTENV_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join(".testenv/bench-drain"));
    let testenv = |args: &[&str]| {
        let ok = common::testenv(&dir, args).status().is_ok_and(|s| s.success());
        assert!(ok, "testenv.sh {args:?} failed; logs in {}", dir.join("logs").display());
    };
    testenv(&["down"]);
    testenv(&["up", "--with-kwok"]);
    let plane = common::Plane::at(&dir);
    common::install_crds_into(&plane).expect("CRDs");
    let client = common::client_for(&plane.kubeconfig).await;
    let out_dir =
        if size.name == "full" { repo.join("tests/bench") } else { repo.join("target/bench/drain") };
    let logs = repo.join("target/bench/drain");
    std::fs::create_dir_all(&logs).unwrap();

    let mut results = Vec::new();
    let mut failures = Vec::new();
    for (s, scenario) in Scenario::ALL.into_iter().enumerate() {
        let started = Instant::now();
        let outcome = run_scenario(&client, &plane, &logs, &size, s, scenario).await;
        let summary = summarize(&size, scenario, &outcome);
        println!(
            "{}: {} of {} requests failed, longest error burst {} ms, {:.0} s; kinds {}; nodes {}",
            scenario.name(),
            summary["failed"],
            summary["requests"],
            summary["longest_error_burst_ms"],
            started.elapsed().as_secs_f64(),
            summary["failure_kinds"],
            summary["drained_nodes"],
        );
        let failed = summary["failed"].as_u64().unwrap_or(u64::MAX);
        match scenario {
            _ if scenario.operator() && failed != 0 => {
                failures.push(format!("{}: {failed} failed requests (must be 0)", scenario.name()))
            }
            Scenario::HealthChecksOnly if failed == 0 => {
                failures.push("health-checks-only: 0 failed requests; the harness measures nothing".into())
            }
            _ => {}
        }
        results.push(summary);
    }
    testenv(&["down"]);
    let report = json!({
        "size": {"name": size.name, "nodes": size.nodes, "drained": size.drained, "rate_per_second": size.rate,
            "pre_stop_ms": size.pre_stop.as_millis() as u64, "delete_after_ms": size.delete_after.as_millis() as u64,
            "task_ms": TASK.as_millis() as u64, "weight_zero_for": size.weight_zero_for,
            "health_check": "TCP, every 5 s, 2 s timeout, unhealthy after 3, healthy after 3 (Tencent's defaults)"},
        "scenarios": results,
    });
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = out_dir.join("drain.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("results: {}", path.display());
    if size.name == "full" {
        write_markdown(&out_dir, &report);
    }
    if !failures.is_empty() {
        eprintln!("drain benchmark invariants failed: {failures:?}");
        std::process::exit(1);
    }
}

/// Writes DRAIN.md beside drain.json, and the timeline plot when python3 has matplotlib.
fn write_markdown(dir: &std::path::Path, r: &Value) {
    let s = &r["size"];
    let mut md = format!(
        "# Drain benchmark: failed requests during a rolling drain\n\n\
         Generated by `cargo bench --bench drain` (see `tests/bench/drain.rs`); raw numbers in `drain.json`, timeline \
         in `drain-timeline.png`.\n\n\
         - {} kwok nodes behind one TCP listener of the CLB emulator, which proxies real connections to a tiny HTTP \
         backend per node (on the node's instance address); {} req/s, half on {POOL} keep-alive connections, half \
         on fresh ones; a request fails on a connect error, a reset, a non-2xx answer or no answer within 1 s\n\
         - {} nodes drained one after another as cluster-autoscaler does it: taint `ToBeDeletedByClusterAutoscaler`, \
         the pods' preStop delay ({} ms, the backend still serves), the backend stops, the node is deleted {} ms \
         later\n\
         - Health check on every scenario: {}; CLB tasks take {} ms\n\n\
         | scenario | failed / total | keep-alive / fresh | longest error burst (ms) | signal -> last request served by the node (ms) | signal -> last fresh connection to it (ms) |\n\
         |---|---|---|---|---|---|\n",
        s["nodes"],
        s["rate_per_second"],
        s["drained"],
        s["pre_stop_ms"],
        s["delete_after_ms"],
        s["health_check"].as_str().unwrap_or(""),
        s["task_ms"]
    );
    for sc in r["scenarios"].as_array().into_iter().flatten() {
        let of = |key: &str| -> String {
            let v: Vec<String> =
                (sc["drained_nodes"].as_array().into_iter().flatten()).map(|n| n[key].to_string()).collect();
            v.join(", ")
        };
        let name = match sc["scenario"].as_str() {
            Some("operator-weight-zero") => format!(
                "operator-weight-zero (weightZeroFor {})",
                s["weight_zero_for"].as_str().unwrap_or("")
            ),
            other => other.unwrap_or("").to_owned(),
        };
        md.push_str(&format!(
            "| {name} | {} / {} | {} / {} | {} | {} | {} |\n",
            sc["failed"],
            sc["requests"],
            sc["failed_keep_alive"],
            sc["failed_fresh"],
            sc["longest_error_burst_ms"],
            of("last_served_after_signal_ms"),
            of("last_fresh_connection_after_signal_ms"),
        ));
    }
    md.push_str(
        "\nKeep-alive connections opened before a deregistration carry on in the emulator (whether the real CLB \
         keeps them is not documented): the node serves them until its backend stops at the end of the preStop delay, then \
         closes them idle, and the client reconnects (one retry of a request on a reused connection the server had \
         closed, as HTTP clients do). So the preStop delay must outlast the deregistration: signal -> task done is \
         about the task time (2 s here) plus tens of milliseconds; the README's pairing follows from these rows. Without the operator, a stopped backend keeps getting \
         its share of new connections until the health check has failed 3 times, 5 s apart (10-15 s), or until a \
         controller that waits for the Node's deletion has deregistered it (the node-deletion delay plus the task).\n",
    );
    std::fs::write(dir.join("DRAIN.md"), md).unwrap();
    let plot = std::process::Command::new(common::plot_python())
        .arg(common::repo().join("tests/bench/drain_plot.py"))
        .arg(dir.join("drain.json"))
        .arg(dir.join("drain-timeline.png"))
        .status();
    if !plot.is_ok_and(|s| s.success()) {
        eprintln!("no timeline plot: tests/bench/drain_plot.py needs python3 with matplotlib");
    }
}
