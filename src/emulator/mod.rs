//! `clb-operator emulator`: a local CLB API v2 endpoint with signature checks, asynchronous tasks, fault
//! injection and an inspectable state, used in place of the cloud by the demo, the tests and the benchmarks.
//!
//! Control endpoints next to the API (which answers on every other path):
//! - `GET /emulator/state`: [`StateView`] as JSON (load balancers, tasks, the call log).
//! - `GET /emulator/config`: the current [`Faults`].
//! - `POST /emulator/config`: change faults at run time with a JSON body whose fields are all optional, e.g.
//!   `{"taskFailRate": 0, "errorRate": 0.3, "taskDuration": "200ms", "latency": "0s"}`; answers the new faults
//!   (400 with `{"error": …}` for a rate outside 0..=1 or a bad duration).

pub mod proxy;
mod server;
mod state;
mod v3;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use url::Url;

use crate::clb::{Credentials, ENV_SECRET_ID, ENV_SECRET_KEY};
use server::{Emulator, lock, now_ms};
pub use state::{BackendView, CallRecord, LoadBalancerView, StateView, TargetView, TaskRecord, V3TaskView};
pub use v3::{SeedListener, SeedRule};

/// The path the emulator advertises in its endpoint URL (the real API's path; any path is served).
pub const API_PATH: &str = "/v2/index.php";

/// A pre-seeded load balancer: `lb-x` or `lb-x=ins-a,ins-b`; seeded backends get weight 10.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedLoadBalancer {
    /// Load balancer ID.
    pub id: String,
    /// Its initial backends.
    pub instance_ids: Vec<String>,
}

impl FromStr for SeedLoadBalancer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, instances) = s.split_once('=').unwrap_or((s, ""));
        if id.trim().is_empty() {
            return Err(format!("`{s}` names no load balancer; expected lb-x or lb-x=ins-a,ins-b"));
        }
        let instance_ids =
            instances.split(',').map(str::trim).filter(|i| !i.is_empty()).map(String::from).collect();
        Ok(Self { id: id.trim().to_owned(), instance_ids })
    }
}

/// Faults and timings that can change while the emulator runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// How long a task runs.
    #[serde(serialize_with = "serialize_duration")]
    pub task_duration: Duration,
    /// Share of tasks that fail, 0..=1 (decided when a task ends).
    pub task_fail_rate: f64,
    /// Share of authenticated requests answered 6000, 0..=1.
    pub error_rate: f64,
    /// Delay before each API answer.
    #[serde(serialize_with = "serialize_duration")]
    pub latency: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            task_duration: Duration::from_millis(500),
            task_fail_rate: 0.0,
            error_rate: 0.0,
            latency: Duration::ZERO,
        }
    }
}

impl Faults {
    /// Checks that both rates are within 0..=1.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [("taskFailRate", self.task_fail_rate), ("errorRate", self.error_rate)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0..=1, got {rate}"));
            }
        }
        Ok(())
    }
}

/// A partial update of [`Faults`], the body of `POST /emulator/config`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultsPatch {
    /// New task duration, e.g. `"500ms"`.
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub task_duration: Option<Duration>,
    /// New task failure rate.
    pub task_fail_rate: Option<f64>,
    /// New error rate.
    pub error_rate: Option<f64>,
    /// New latency, e.g. `"50ms"`.
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub latency: Option<Duration>,
}

impl FaultsPatch {
    /// `current` with the given fields replaced, if the result is valid.
    pub fn apply(&self, current: Faults) -> Result<Faults, String> {
        let faults = Faults {
            task_duration: self.task_duration.unwrap_or(current.task_duration),
            task_fail_rate: self.task_fail_rate.unwrap_or(current.task_fail_rate),
            error_rate: self.error_rate.unwrap_or(current.error_rate),
            latency: self.latency.unwrap_or(current.latency),
        };
        faults.validate().map(|()| faults)
    }
}

fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map(Some).map_err(serde::de::Error::custom)
}

/// Everything an emulator starts with.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The one SecretId/SecretKey pair accepted. The default is random, so an emulator is never open to a
    /// well-known key; read it back from the config or [`EmulatorHandle::credentials`].
    pub credentials: Credentials,
    /// Initial faults; see [`EmulatorHandle::set_faults`].
    pub faults: Faults,
    /// Most backends per Register/Deregister call (20), API 2.0.
    pub max_batch: usize,
    /// Most targets per API 3.0 RegisterTargets / DeregisterTargets / classic call (20).
    pub max_targets: usize,
    /// Most targets per BatchRegisterTargets / BatchDeregisterTargets call (500).
    pub max_batch_targets: usize,
    /// Whether the batch calls apply at once and hand out no task (a reading of the API that one Tencent
    /// controller follows); by default they are tasks like every other write.
    pub batch_sync: bool,
    /// Whether an API 3.0 write on a load balancer that runs another task is answered
    /// `FailedOperation.ResourceInOperating`, as the real CLB may do.
    pub resource_in_operating: bool,
    /// Requests per second admitted per action; 0 (the default) admits all.
    pub qps: u32,
    /// Load balancers to start with.
    pub load_balancers: Vec<SeedLoadBalancer>,
    /// Listeners of application load balancers (API 3.0) to start with; their load balancers are created.
    pub listeners: Vec<SeedListener>,
    /// Where load balancers and tasks are kept across restarts.
    pub state_file: Option<PathBuf>,
    /// Listeners that carry real TCP traffic, each on an address (see [`proxy`]).
    pub serve: Vec<proxy::Serve>,
    /// The private address of each CVM instance, where served listeners reach its targets.
    pub instances: Vec<proxy::InstanceAddr>,
    /// Health checks of served listeners (none: traffic goes to every target with weight > 0).
    pub health_checks: Vec<proxy::ListenerHealthCheck>,
    /// Largest accepted difference between a request's Timestamp and the emulator's clock (300 s, the
    /// stricter of the documented values).
    pub timestamp_window: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        let random = |len: usize| -> String {
            rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
        };
        Self {
            credentials: Credentials::new(format!("AKID{}", random(32)), random(32), None),
            faults: Faults::default(),
            max_batch: 20,
            max_targets: crate::clb::v3::MAX_TARGETS,
            max_batch_targets: crate::clb::v3::MAX_BATCH_TARGETS,
            batch_sync: false,
            resource_in_operating: false,
            qps: 0,
            load_balancers: Vec::new(),
            listeners: Vec::new(),
            state_file: None,
            serve: Vec::new(),
            instances: Vec::new(),
            health_checks: Vec::new(),
            timestamp_window: Duration::from_secs(300),
        }
    }
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// No credentials were given.
    #[error(
        "the emulator needs credentials to check signatures: pass --secret-id and --secret-key or set \
         {ENV_SECRET_ID} and {ENV_SECRET_KEY}"
    )]
    MissingCredentials,
    /// A setting is out of range.
    #[error("invalid emulator setting: {0}")]
    Invalid(String),
    /// The listen address could not be bound or read.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The state file could not be read or parsed.
    #[error("cannot load state file {}: {error}", path.display())]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: String,
    },
}

/// A running emulator. Dropping it stops the server; [`EmulatorHandle::shutdown`] also waits for the final
/// state-file write.
#[derive(Debug)]
pub struct EmulatorHandle {
    addr: SocketAddr,
    endpoint: Url,
    emulator: Arc<Emulator>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("credentials", self.credentials()).finish_non_exhaustive()
    }
}

impl EmulatorHandle {
    /// The address the emulator listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API endpoint URL, `http://<addr>/v2/index.php`.
    pub fn endpoint(&self) -> Url {
        self.endpoint.clone()
    }

    /// The API 3.0 endpoint URL, `http://<addr>/` (the same server; requests with `X-TC-Action` are API 3.0).
    pub fn v3_endpoint(&self) -> Url {
        let mut url = self.endpoint.clone();
        url.set_path("/");
        url
    }

    /// Makes every API 3.0 batch call report `listeners` as failed in `FailListenerIdSet` (empty: none).
    pub fn fail_listeners(&self, listeners: &[&str]) {
        let owned: Vec<String> = listeners.iter().map(|l| l.to_string()).collect();
        self.emulator.fail_listeners(&owned);
    }

    /// The accepted credentials.
    pub fn credentials(&self) -> &Credentials {
        self.emulator.credentials()
    }

    /// A snapshot of the state, including the call log.
    pub fn state(&self) -> StateView {
        self.emulator.view(true)
    }

    /// Creates an empty load balancer `id` while the emulator runs; false if it exists already.
    pub fn add_load_balancer(&self, id: &str) -> bool {
        let added = lock(&self.emulator.store).add_load_balancer(id);
        self.emulator.changed.notify_one();
        added
    }

    /// The current faults.
    pub fn faults(&self) -> Faults {
        self.emulator.faults()
    }

    /// Replaces the faults (as `POST /emulator/config` does); rates must be within 0..=1.
    pub fn set_faults(&self, faults: Faults) -> Result<(), EmulatorError> {
        faults.validate().map_err(EmulatorError::Invalid)?;
        self.emulator.set_faults(faults);
        Ok(())
    }

    /// Stops serving, then writes the state file one last time.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.await {
                warn!(error = %e, "Emulator task ended abnormally");
            }
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Starts an emulator on `listener`: loads the state file (if configured and present), then serves until the
/// handle is shut down or dropped.
pub async fn spawn(config: EmulatorConfig, listener: TcpListener) -> Result<EmulatorHandle, EmulatorError> {
    config.faults.validate().map_err(EmulatorError::Invalid)?;
    if config.max_batch == 0
        || config.max_targets == 0
        || config.max_batch_targets == 0
        || config.timestamp_window.is_zero()
    {
        return Err(EmulatorError::Invalid("max_batch and timestamp_window must be positive".into()));
    }
    if config.credentials.secret_id().is_empty() || config.credentials.secret_key().is_empty() {
        return Err(EmulatorError::MissingCredentials);
    }
    let addr =
        listener.local_addr().map_err(|error| EmulatorError::Listen { addr: "listener".into(), error })?;
    let endpoint = Url::parse(&format!("http://{addr}{API_PATH}"))
        .map_err(|e| EmulatorError::Invalid(format!("no URL for {addr}: {e}")))?;
    let restored = match &config.state_file {
        Some(path) => load_state(path).await?,
        None => None,
    };
    let seeds: Vec<(String, Vec<String>)> =
        config.load_balancers.iter().map(|lb| (lb.id.clone(), lb.instance_ids.clone())).collect();
    let v3_restored = restored.clone();
    let emulator =
        Arc::new(Emulator::new(&config, state::Store::new(restored, &seeds), v3_restored.as_ref()));
    let (shutdown, stopped) = watch::channel(false);

    let mut tasks = Vec::new();
    let mut stop = stopped.clone();
    let server =
        axum::serve(listener, server::router(Arc::clone(&emulator))).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = server.await {
            warn!(error = %e, "Emulator server failed");
        }
    }));
    tasks.push(tokio::spawn(run_tasks(Arc::clone(&emulator), stopped.clone())));
    if !config.serve.is_empty() {
        let mut served = Vec::new();
        for s in &config.serve {
            let l = tokio::net::TcpListener::bind(s.addr)
                .await
                .map_err(|error| EmulatorError::Listen { addr: s.addr.to_string(), error })?;
            served.push((s.clone(), l));
        }
        let instances = config.instances.iter().map(|i| (i.instance_id.clone(), i.ip)).collect();
        let proxy = proxy::run(
            Arc::clone(&emulator),
            served,
            config.health_checks.clone(),
            instances,
            stopped.clone(),
        );
        tasks.push(tokio::spawn(proxy));
    }
    if let Some(path) = config.state_file.clone() {
        // Written once at start too, so a fresh file exists as soon as the emulator is up.
        emulator.changed.notify_one();
        tasks.push(tokio::spawn(persist(Arc::clone(&emulator), path, stopped)));
    }
    Ok(EmulatorHandle { addr, endpoint, emulator, shutdown, tasks })
}

/// Ends tasks when they are due: sleeps until the next due time, or until a task is added.
async fn run_tasks(emulator: Arc<Emulator>, mut stopped: watch::Receiver<bool>) {
    loop {
        let wait = match emulator.finish_due_tasks() {
            Some(due) => Duration::from_millis(due.saturating_sub(now_ms())),
            // Nothing running: sleep until woken by a submit.
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = emulator.task_added.notified() => {}
            _ = stopped.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Writes the state file after every change (coalescing bursts), and once more at shutdown.
async fn persist(emulator: Arc<Emulator>, path: PathBuf, mut stopped: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            () = emulator.changed.notified() => false,
            _ = stopped.wait_for(|stopped| *stopped) => true,
        };
        // Both APIs' state (v3 tasks that are due applied first), without the call log.
        let json = serde_json::to_vec_pretty(&emulator.view(false));
        match json {
            Ok(json) => {
                if let Err(e) = write_atomically(&path, &json).await {
                    warn!(path = %path.display(), error = %e, "Cannot write emulator state file");
                }
            }
            Err(e) => warn!(error = %e, "Cannot serialise emulator state"),
        }
        if stopping {
            return;
        }
    }
}

/// Writes to a temporary file beside `path` and renames it over `path`, so a crash never leaves half a file.
async fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    tokio::fs::write(&tmp, contents).await?;
    tokio::fs::rename(&tmp, path).await
}

/// The saved state, or `None` if the file does not exist yet.
async fn load_state(path: &Path) -> Result<Option<StateView>, EmulatorError> {
    let failed = |error: String| EmulatorError::StateFile { path: path.to_owned(), error };
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| failed(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Runs `clb-operator emulator` on `listen` until SIGINT or SIGTERM. Prints the endpoint URL on stdout once
/// listening.
pub async fn run(config: EmulatorConfig, listen: SocketAddr) -> ExitCode {
    match serve_until_signal(config, listen).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_until_signal(config: EmulatorConfig, listen: SocketAddr) -> Result<(), EmulatorError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|error| EmulatorError::Listen { addr: listen.to_string(), error })?;
    let handle = spawn(config, listener).await?;
    info!(endpoint = %handle.endpoint(), "CLB emulator listening");
    println!("{}", handle.endpoint());
    shutdown_signal().await;
    info!("CLB emulator stopping");
    handle.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (the latter is what Kubernetes and `kill` send).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
