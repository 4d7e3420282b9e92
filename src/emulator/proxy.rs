//! The emulator as a small layer-4 load balancer, so that drains can be measured in failed requests: a served
//! listener accepts TCP connections on a loopback address and proxies each to one of its bound targets with
//! weight > 0 (smooth weighted round robin), at its instance's address and the target's port. With a health
//! check, targets are probed by TCP connect as Tencent's CLB does, and unhealthy ones get no new connection.
//!
//! What the real CLB does, as far as its documentation says (https://tencentcloud.com/document/product/214/6097):
//! health checks run whatever the weight (0 included); a target just bound is "detecting" for interval x healthy
//! threshold and gets no traffic until it is healthy; an unhealthy target gets no new requests; when every target
//! is unhealthy, requests go to all of them ("all dead, all alive"). Connections already open to a target that is
//! deregistered or set to weight 0 are not cut here; whether the real CLB keeps them is UNVERIFIED.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, warn};

use super::server::Emulator;

/// `--serve lbl-1=127.0.0.1:18080`: a listener served on an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serve {
    /// The listener.
    pub listener_id: String,
    /// Where its connections are accepted (loopback only in tests).
    pub addr: SocketAddr,
}

impl FromStr for Serve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listener, addr) = s.split_once('=').ok_or_else(|| format!("`{s}` is not LISTENER=IP:PORT"))?;
        let addr = addr.parse().map_err(|e| format!("`{addr}`: {e}"))?;
        Ok(Self { listener_id: listener.to_owned(), addr })
    }
}

/// `--instance ins-a=127.0.0.11`: the private address of a CVM instance, where its targets are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAddr {
    /// The instance.
    pub instance_id: String,
    /// Its address.
    pub ip: IpAddr,
}

impl FromStr for InstanceAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (instance, ip) = s.split_once('=').ok_or_else(|| format!("`{s}` is not INSTANCE=IP"))?;
        let ip = ip.parse().map_err(|e| format!("`{ip}`: {e}"))?;
        Ok(Self { instance_id: instance.to_owned(), ip })
    }
}

/// A listener's TCP health check. The defaults are Tencent's: a check every 5 s, a 2 s response timeout, 3
/// failures to turn unhealthy and 3 successes to turn healthy
/// (https://www.tencentcloud.com/document/product/1245/65406, and the CLB console's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between checks of a target.
    pub interval: Duration,
    /// How long a connect may take.
    pub timeout: Duration,
    /// Consecutive failures that make a target unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that make a target healthy.
    pub healthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 3,
            healthy_threshold: 3,
        }
    }
}

/// `--health-check lbl-1` (the defaults) or `--health-check lbl-1=INTERVAL,TIMEOUT,UNHEALTHY,HEALTHY`, e.g.
/// `lbl-1=1s,500ms,2,2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerHealthCheck {
    /// The listener.
    pub listener_id: String,
    /// Its check.
    pub check: HealthCheck,
}

impl FromStr for ListenerHealthCheck {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((listener, spec)) = s.split_once('=') else {
            return Ok(Self { listener_id: s.to_owned(), check: HealthCheck::default() });
        };
        let bad = || format!("`{s}` is not LISTENER=INTERVAL,TIMEOUT,UNHEALTHY,HEALTHY");
        let parts: Vec<&str> = spec.split(',').collect();
        let [interval, timeout, unhealthy, healthy] = parts[..] else { return Err(bad()) };
        let duration = |d: &str| humantime::parse_duration(d).map_err(|_| bad());
        let count = |n: &str| n.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(bad);
        let check = HealthCheck {
            interval: duration(interval)?,
            timeout: duration(timeout)?,
            unhealthy_threshold: count(unhealthy)?,
            healthy_threshold: count(healthy)?,
        };
        Ok(Self { listener_id: listener.to_owned(), check })
    }
}

/// A target as the proxy sees it: instance and port.
type Backend = (String, u16);

/// What a health check knows about a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Health {
    state: HealthState,
    successes: u32,
    failures: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum HealthState {
    /// Just bound: no traffic until it has passed `healthy_threshold` checks.
    #[default]
    Detecting,
    Healthy,
    Unhealthy,
}

impl Health {
    /// Records one check's result.
    fn observe(&mut self, ok: bool, check: &HealthCheck) {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= check.healthy_threshold {
                self.state = HealthState::Healthy;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= check.unhealthy_threshold {
                self.state = HealthState::Unhealthy;
            }
        }
    }
}

/// One served listener: its weighted round robin and its targets' health.
struct Served {
    listener_id: String,
    check: Option<HealthCheck>,
    /// Smooth weighted round robin: each candidate's current weight.
    current: Mutex<HashMap<Backend, i64>>,
    health: Mutex<HashMap<Backend, Health>>,
}

/// Smooth weighted round robin (as nginx does it): every candidate gains its weight, the largest is picked and
/// loses the total. Over any window each is picked in proportion to its weight, interleaved.
fn pick(current: &mut HashMap<Backend, i64>, candidates: &[(Backend, u32)]) -> Option<Backend> {
    current.retain(|b, _| candidates.iter().any(|(c, _)| c == b));
    let total: i64 = candidates.iter().map(|(_, w)| i64::from(*w)).sum();
    let mut best: Option<(&Backend, i64)> = None;
    for (backend, weight) in candidates {
        let c = current.entry(backend.clone()).or_default();
        *c += i64::from(*weight);
        if best.is_none_or(|(_, b)| *c > b) {
            best = Some((backend, *c));
        }
    }
    let (chosen, _) = best?;
    let chosen = chosen.clone();
    if let Some(c) = current.get_mut(&chosen) {
        *c -= total;
    }
    Some(chosen)
}

impl Served {
    /// The targets a new connection may go to: weight > 0, and with a health check the healthy ones (all of
    /// them when every one is unhealthy).
    fn candidates(&self, bound: &[(Backend, u32)]) -> Vec<(Backend, u32)> {
        let serving: Vec<(Backend, u32)> = bound.iter().filter(|(_, w)| *w > 0).cloned().collect();
        if self.check.is_none() {
            return serving;
        }
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let state = |b: &Backend| health.get(b).map(|h| h.state).unwrap_or_default();
        let healthy: Vec<(Backend, u32)> =
            serving.iter().filter(|(b, _)| state(b) == HealthState::Healthy).cloned().collect();
        if healthy.is_empty()
            && !serving.is_empty()
            && serving.iter().all(|(b, _)| state(b) == HealthState::Unhealthy)
        {
            return serving;
        }
        healthy
    }
}

/// Serves `serve` until `stopped`: each listener on its address, with its health check if one is given.
pub(crate) async fn run(
    emulator: Arc<Emulator>,
    serve: Vec<(Serve, TcpListener)>,
    checks: Vec<ListenerHealthCheck>,
    instances: HashMap<String, IpAddr>,
    stopped: watch::Receiver<bool>,
) {
    let instances = Arc::new(instances);
    let mut tasks = Vec::new();
    for (s, listener) in serve {
        let check = checks.iter().find(|c| c.listener_id == s.listener_id).map(|c| c.check);
        let served = Arc::new(Served {
            listener_id: s.listener_id.clone(),
            check,
            current: Mutex::default(),
            health: Mutex::default(),
        });
        if let Some(check) = check {
            let (e, sv, i, st) = (emulator.clone(), served.clone(), instances.clone(), stopped.clone());
            tasks.push(tokio::spawn(health_checks(e, sv, i, check, st)));
        }
        let (e, i, st) = (emulator.clone(), instances.clone(), stopped.clone());
        tasks.push(tokio::spawn(accept(e, served, listener, i, st)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn accept(
    emulator: Arc<Emulator>,
    served: Arc<Served>,
    listener: TcpListener,
    instances: Arc<HashMap<String, IpAddr>>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let Ok((client, _)) = client else { continue };
        let bound = emulator.serving(&served.listener_id);
        let candidates = served.candidates(&bound);
        let chosen = pick(&mut served.current.lock().unwrap_or_else(|p| p.into_inner()), &candidates);
        let Some((instance, port)) = chosen else {
            // No target to send it to: the client sees the connection closed.
            debug!(listener = %served.listener_id, "No target for a new connection");
            continue;
        };
        let Some(ip) = instances.get(&instance).copied() else {
            warn!(listener = %served.listener_id, instance, "No address for the instance (--instance)");
            continue;
        };
        tokio::spawn(async move {
            let Ok(Ok(mut upstream)) =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect((ip, port))).await
            else {
                return;
            };
            let mut client = client;
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

async fn health_checks(
    emulator: Arc<Emulator>,
    served: Arc<Served>,
    instances: Arc<HashMap<String, IpAddr>>,
    check: HealthCheck,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let bound: Vec<Backend> = emulator.serving(&served.listener_id).into_iter().map(|(b, _)| b).collect();
        let probes = bound.iter().map(|(instance, port)| {
            let ip = instances.get(instance).copied();
            let port = *port;
            async move {
                let Some(ip) = ip else { return false };
                matches!(tokio::time::timeout(check.timeout, TcpStream::connect((ip, port))).await, Ok(Ok(_)))
            }
        });
        let results = futures::future::join_all(probes).await;
        {
            let mut health = served.health.lock().unwrap_or_else(|p| p.into_inner());
            health.retain(|b, _| bound.contains(b));
            for (backend, ok) in bound.iter().zip(results) {
                health.entry(backend.clone()).or_default().observe(ok, &check);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(check.interval) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(i: &str) -> Backend {
        (i.to_owned(), 80)
    }

    /// Weighted round robin spreads picks by weight, interleaved, and skips weight 0.
    #[test]
    fn picks_follow_the_weights() {
        let mut current = HashMap::new();
        let candidates = [(b("a"), 3), (b("b"), 1)];
        let picks: Vec<String> = (0..8).map(|_| pick(&mut current, &candidates).unwrap().0).collect();
        assert_eq!(picks.iter().filter(|p| *p == "a").count(), 6);
        assert_ne!(picks[..4], ["a", "a", "a", "a"], "interleaved, not in runs");
        assert_eq!(pick(&mut current, &[]), None);
    }

    /// Health follows the thresholds; all unhealthy means all serve, detecting means none.
    #[test]
    fn health_follows_the_thresholds() {
        let check = HealthCheck { healthy_threshold: 2, unhealthy_threshold: 2, ..HealthCheck::default() };
        let served = Served {
            listener_id: "l".into(),
            check: Some(check),
            current: Mutex::default(),
            health: Mutex::default(),
        };
        let bound = [(b("a"), 10), (b("b"), 10), (b("c"), 0)];
        assert!(served.candidates(&bound).is_empty(), "just bound: detecting");
        {
            let mut h = served.health.lock().unwrap();
            for _ in 0..2 {
                h.entry(b("a")).or_default().observe(true, &check);
                h.entry(b("b")).or_default().observe(false, &check);
            }
        }
        assert_eq!(served.candidates(&bound), [(b("a"), 10)]);
        served.health.lock().unwrap().entry(b("a")).or_default().observe(false, &check);
        assert_eq!(served.candidates(&bound), [(b("a"), 10)], "one failure is below the threshold");
        served.health.lock().unwrap().entry(b("a")).or_default().observe(false, &check);
        assert_eq!(served.candidates(&bound).len(), 2, "all unhealthy: all serve");
        let parsed: ListenerHealthCheck = "lbl-1=1s,500ms,2,3".parse().unwrap();
        assert_eq!((parsed.check.interval, parsed.check.healthy_threshold), (Duration::from_secs(1), 3));
        assert_eq!("lbl-1".parse::<ListenerHealthCheck>().unwrap().check, HealthCheck::default());
        assert!("lbl-1=1s,2".parse::<ListenerHealthCheck>().is_err());
    }
}
