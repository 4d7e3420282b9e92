//! The emulator as a layer-4 load balancer: connections through a served listener are spread over its targets
//! by weight, weight 0 and deregistered targets get none, an unhealthy target is skipped after the threshold,
//! and without a health check a stopped backend produces errors. Backends are tiny TCP servers on the loopback
//! addresses the instances are given (127.0.0.0/8 is all loopback on Linux).

mod common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

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
use common::fixtures::{emulator_config, spawn_emulator};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

const INSTANCES: [(&str, &str); 3] =
    [("ins-a", "127.0.0.11"), ("ins-b", "127.0.0.12"), ("ins-c", "127.0.0.13")];

/// A backend answering every connection with its instance's name; stops when aborted.
fn backend(listener: TcpListener, name: &'static str) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let _ = c.write_all(name.as_bytes()).await;
        }
    })
}

/// Backends for every instance on one port (the same NodePort on every node), found free on all three.
async fn backends() -> (u16, BTreeMap<&'static str, JoinHandle<()>>) {
    'port: loop {
        let port = 20000 + rand::random::<u16>() % 20000;
        let mut bound = Vec::new();
        for (name, ip) in INSTANCES {
            match TcpListener::bind((ip.parse::<std::net::IpAddr>().unwrap(), port)).await {
                Ok(l) => bound.push((name, l)),
                Err(_) => continue 'port,
            }
        }
        return (port, bound.into_iter().map(|(n, l)| (n, backend(l, n))).collect());
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// One request through the proxy: the backend's name, or `None` when the connection failed or was closed
/// without an answer.
async fn request(addr: SocketAddr) -> Option<String> {
    let mut c = TcpStream::connect(addr).await.ok()?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(2), c.read_to_string(&mut answer)).await.ok()?.ok()?;
    (!answer.is_empty()).then_some(answer)
}

async fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(request(addr).await.unwrap_or_else(|| "error".into())).or_default() += 1;
    }
    counts
}

fn on(listener: &str, instance: &str, port: u16) -> Target {
    let at = Placement { listener_id: listener.into(), location_id: None, port };
    Target { instance: instance.into(), at: Some(at) }
}

async fn done(cloud: &V3Cloud, batches: Vec<clb_operator::clb::cloud::Batch>) {
    for b in batches {
        let Ok(Submitted::Task(id)) = &b.result else { panic!("{b:?}") };
        while cloud.task(id).await.unwrap() == TaskState::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn emulator(
    serve: &[(&str, SocketAddr)],
    checks: Vec<ListenerHealthCheck>,
) -> (EmulatorHandle, V3Cloud) {
    let mut config = emulator_config(Duration::from_millis(20), vec![]);
    config.listeners =
        vec!["lb-p/lbl-plain=TCP:80".parse().unwrap(), "lb-p/lbl-checked=TCP:81".parse().unwrap()];
    config.serve = serve.iter().map(|(l, a)| Serve { listener_id: l.to_string(), addr: *a }).collect();
    config.instances = INSTANCES
        .iter()
        .map(|(i, ip)| InstanceAddr { instance_id: i.to_string(), ip: ip.parse().unwrap() })
        .collect();
    config.health_checks = checks;
    let emu = spawn_emulator(config).await;
    let client = V3Client::new(emu.v3_endpoint(), emu.credentials().clone(), "gz", 100).unwrap();
    (emu, V3Cloud::new(client))
}

/// Weighted, weight 0, deregistered, and a stopped backend without a health check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_follows_weights_and_registrations() {
    let (port, mut servers) = backends().await;
    let addr = free_addr();
    let (_emu, cloud) = emulator(&[("lbl-plain", addr)], vec![]).await;
    assert_eq!(spread(addr, 3).await, BTreeMap::from([("error".into(), 3)]), "no target: errors");

    done(&cloud, cloud.register("lb-p", &[on("lbl-plain", "ins-a", port)], 30).await).await;
    done(&cloud, cloud.register("lb-p", &[on("lbl-plain", "ins-b", port)], 10).await).await;
    let counts = spread(addr, 40).await;
    assert_eq!(counts, BTreeMap::from([("ins-a".into(), 30), ("ins-b".into(), 10)]), "by weight");

    done(&cloud, cloud.set_weight("lb-p", &[on("lbl-plain", "ins-a", port)], 0).await).await;
    assert_eq!(spread(addr, 10).await, BTreeMap::from([("ins-b".into(), 10)]), "weight 0: no new connection");

    done(&cloud, cloud.deregister("lb-p", &[on("lbl-plain", "ins-b", port)]).await).await;
    assert_eq!(spread(addr, 5).await, BTreeMap::from([("error".into(), 5)]), "deregistered: no connection");

    done(&cloud, cloud.register("lb-p", &[on("lbl-plain", "ins-c", port)], 10).await).await;
    assert_eq!(spread(addr, 5).await, BTreeMap::from([("ins-c".into(), 5)]));
    servers.remove("ins-c").unwrap().abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(spread(addr, 5).await, BTreeMap::from([("error".into(), 5)]), "no health check: errors");
}

/// With a health check, a just-bound target gets traffic once healthy, and a stopped one is skipped after the
/// unhealthy threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_targets_are_skipped() {
    let (port, mut servers) = backends().await;
    let addr = free_addr();
    let check = HealthCheck {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(100),
        unhealthy_threshold: 2,
        healthy_threshold: 2,
    };
    let checks = vec![ListenerHealthCheck { listener_id: "lbl-checked".into(), check }];
    let (_emu, cloud) = emulator(&[("lbl-checked", addr)], checks).await;
    let both = [on("lbl-checked", "ins-a", port), on("lbl-checked", "ins-b", port)];
    done(&cloud, cloud.register("lb-p", &both, 10).await).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let counts = spread(addr, 10).await;
    assert_eq!(counts, BTreeMap::from([("ins-a".into(), 5), ("ins-b".into(), 5)]), "both healthy");

    servers.remove("ins-b").unwrap().abort();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(spread(addr, 10).await, BTreeMap::from([("ins-a".into(), 10)]), "the stopped one is skipped");
    servers.remove("ins-a").unwrap().abort();
}
