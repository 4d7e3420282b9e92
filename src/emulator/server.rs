//! The emulator's HTTP side: the CLB v2 endpoint (authentication with the client's own signer, admission,
//! fault injection, the five actions) and the `/emulator/*` control endpoints.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tracing::debug;

use crate::clb::{Action, Credentials, TaskState, sign};
use crate::emulator::state::{CallRecord, StateView, Store};
use crate::emulator::v3::{self, V3Store};
use crate::emulator::{EmulatorConfig, Faults, FaultsPatch};

/// DescribeLoadBalancers `limit` when none is given (the documented default) and the largest one served.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// The nonce cache is pruned of expired entries whenever it reaches this size (or twice its last live size).
const NONCE_PRUNE_AT: usize = 4096;

/// The shared emulator: fixed settings, run-time faults and the state.
pub(crate) struct Emulator {
    credentials: Credentials,
    max_batch: usize,
    /// API 3.0 call limits and batch behaviour.
    limits: v3::Limits,
    /// Whether an API 3.0 write on a load balancer with a running task is refused as ResourceInOperating.
    in_operating: bool,
    timestamp_window_secs: i64,
    /// Per-action admission limiters (`--qps`), indexed by [`Action::index`]; `None` when unlimited.
    limiters: Option<[DefaultDirectRateLimiter; Action::ALL.len()]>,
    /// The same for API 3.0 actions, by name, made on first use.
    v3_limiters: Mutex<HashMap<String, DefaultDirectRateLimiter>>,
    qps: u32,
    faults: Mutex<Faults>,
    pub(crate) store: Mutex<Store>,
    /// The API 3.0 state: application load balancers, listeners, targets, tasks.
    v3: Mutex<V3Store>,
    nonces: Mutex<NonceCache>,
    /// Wakes the task scheduler when a task is submitted.
    pub(crate) task_added: Notify,
    /// Wakes the state-file writer when the persistent state changed.
    pub(crate) changed: Notify,
}

/// An API 3.0 request as it arrived.
struct V3Request<'a> {
    method: &'a str,
    query: &'a str,
    headers: &'a HeaderMap,
    host: &'a str,
    body: &'a [u8],
}

/// Locks a mutex even if a panicking thread poisoned it: every critical section leaves the data consistent
/// before anything can panic, and the emulator must keep answering.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A rejection: the API `code` and `message`.
#[derive(Debug)]
struct Reject {
    code: i64,
    message: String,
}

fn reject(code: i64, message: impl Into<String>) -> Reject {
    Reject { code, message: message.into() }
}

/// The `codeDesc` the real API sends with each code.
fn code_desc(code: i64) -> &'static str {
    match code {
        0 => "Success",
        4000 => "InvalidParameter",
        4100..=4199 => "AuthFailure",
        4400 => "RequestLimitExceeded",
        4500 => "InvalidRequest.ReplayAttack",
        5000 => "ResourceNotFound",
        6000 => "InternalError",
        6100 => "UnsupportedOperation",
        _ => "Error",
    }
}

/// Nonces seen recently: a nonce is remembered until its request's timestamp leaves the window, after which a
/// replay would be refused as stale anyway.
#[derive(Debug, Default)]
struct NonceCache {
    seen: HashMap<u64, i64>,
    prune_at: usize,
}

impl NonceCache {
    /// Records `nonce`; false if it was already used.
    fn insert(&mut self, nonce: u64, timestamp: i64, now: i64, window: i64) -> bool {
        if self.seen.len() >= self.prune_at.max(NONCE_PRUNE_AT) {
            self.seen.retain(|_, ts| *ts >= now.saturating_sub(window));
            self.prune_at = self.seen.len() * 2;
        }
        match self.seen.entry(nonce) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(timestamp);
                true
            }
        }
    }
}

/// A decoded API request.
struct ApiRequest<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    params: Vec<(String, String)>,
}

impl ApiRequest<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn require(&self, name: &str) -> Result<&str, Reject> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| reject(4000, format!("missing parameter {name}")))
    }

    /// The values of `prefix.0`, `prefix.1`, … (or of `prefix.N.field`), ordered by N; lenient, for the log
    /// and for filters.
    fn indexed(&self, prefix: &str, field: Option<&str>) -> Vec<String> {
        let mut found: Vec<(usize, &str)> = self
            .params
            .iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
                let index = match field {
                    Some(field) => rest.strip_suffix(field)?.strip_suffix('.')?,
                    None => rest,
                };
                Some((index.parse().unwrap_or(usize::MAX), value.as_str()))
            })
            .collect();
        found.sort_by_key(|(i, _)| *i);
        found.into_iter().map(|(_, v)| v.to_owned()).collect()
    }
}

impl Emulator {
    pub(crate) fn new(config: &EmulatorConfig, store: Store, restored: Option<&StateView>) -> Self {
        let mut v3 = V3Store::new(&config.listeners);
        if let Some(r) = restored {
            v3.restore(&r.targets, &r.v3_tasks);
        }
        // A burst of `qps` (a whole second's budget), like a server counting per second: a client that paces
        // itself at `qps` never sees 4400, a burst above it does.
        let limiters = std::num::NonZeroU32::new(config.qps)
            .map(|qps| std::array::from_fn(|_| RateLimiter::direct(Quota::per_second(qps))));
        Self {
            credentials: config.credentials.clone(),
            max_batch: config.max_batch,
            limits: v3::Limits {
                max_targets: config.max_targets,
                max_batch_targets: config.max_batch_targets,
                batch_sync: config.batch_sync,
            },
            in_operating: config.resource_in_operating,
            timestamp_window_secs: i64::try_from(config.timestamp_window.as_secs()).unwrap_or(i64::MAX),
            limiters,
            v3_limiters: Mutex::default(),
            qps: config.qps,
            faults: Mutex::new(config.faults),
            store: Mutex::new(store),
            v3: Mutex::new(v3),
            nonces: Mutex::new(NonceCache::default()),
            task_added: Notify::new(),
            changed: Notify::new(),
        }
    }

    pub(crate) fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Whether `--qps` admits one more API 3.0 `action` request now.
    fn admit_v3(&self, action: &str) -> bool {
        let Some(qps) = std::num::NonZeroU32::new(self.qps) else { return true };
        let mut limiters = lock(&self.v3_limiters);
        let limiter =
            limiters.entry(action.to_owned()).or_insert_with(|| RateLimiter::direct(Quota::per_second(qps)));
        limiter.check().is_ok()
    }

    /// Makes every batch call report these listeners as failed (empty: none).
    pub(crate) fn fail_listeners(&self, listeners: &[String]) {
        lock(&self.v3).fail_listeners = listeners.iter().cloned().collect();
    }

    pub(crate) fn faults(&self) -> Faults {
        *lock(&self.faults)
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        *lock(&self.faults) = faults;
    }

    /// Ends the tasks that are due; returns when the next one is.
    pub(crate) fn finish_due_tasks(&self) -> Option<u64> {
        let fail_rate = self.faults().task_fail_rate;
        let (finished, next) = lock(&self.store).finish_due(now_ms(), || rand::random::<f64>() < fail_rate);
        if finished > 0 {
            self.changed.notify_one();
        }
        next
    }

    /// The targets bound on `listener` (any load balancer, any rule) with their weights, tasks that are due
    /// applied first: what a new connection may go to.
    pub(crate) fn serving(&self, listener: &str) -> Vec<((String, u16), u32)> {
        let fail_rate = self.faults().task_fail_rate;
        let (changes, bound) = {
            let mut v3 = lock(&self.v3);
            (v3.finish_due(now_ms(), || rand::random::<f64>() < fail_rate), v3.bound_on(listener))
        };
        if !changes.is_empty() {
            lock(&self.store).apply_classic(&changes);
        }
        bound
    }

    /// Everything it knows, v2 and v3, with the v3 tasks that are due applied first.
    pub(crate) fn view(&self, with_calls: bool) -> StateView {
        let fail_rate = self.faults().task_fail_rate;
        let (changes, targets, v3_tasks) = {
            let mut v3 = lock(&self.v3);
            (v3.finish_due(now_ms(), || rand::random::<f64>() < fail_rate), v3.view(), v3.task_views())
        };
        // NB: never both locks at once: the v3 state is released before the v2 state is taken.
        let mut store = lock(&self.store);
        store.apply_classic(&changes);
        let mut view = store.view(with_calls);
        view.targets = targets;
        view.v3_tasks = v3_tasks;
        view
    }

    /// Answers one API 3.0 request (the `X-TC-Action` header names the action) and logs it.
    fn serve_v3(&self, action: &str, request: V3Request<'_>, at_ms: u64) -> Value {
        let V3Request { method, query, headers, host, body } = request;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let request_id = v3::request_id();
        // A GET carries its parameters in the query string; they are read as the JSON a POST would send.
        let from_query;
        let params: &[u8] = match method {
            "GET" => {
                from_query = serde_json::to_vec(&v3::query_to_json(query)).unwrap_or_default();
                &from_query
            }
            _ => body,
        };
        let signed = v3::Signed {
            method,
            query: if method == "GET" { query } else { "" },
            authorization: header("authorization"),
            timestamp: header("x-tc-timestamp"),
            token: header("x-tc-token"),
            host,
            content_type: header("content-type").unwrap_or_default(),
            body,
        };
        let now = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX);
        let faults = self.faults();
        let result =
            v3::authenticate(&self.credentials, &signed, now, self.timestamp_window_secs).and_then(|()| {
                if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
                    return Err(v3::V3Error {
                        code: "InternalError",
                        message: "internal error (injected)".into(),
                    });
                }
                if !self.admit_v3(action) {
                    return Err(v3::V3Error {
                        code: "RequestLimitExceeded",
                        message: format!("request limit of {action} exceeded"),
                    });
                }
                // Classic load balancers live in the v2 state: a snapshot of it for reading, and the changes of
                // finished tasks applied to it afterwards (never both locks at once).
                let classic = lock(&self.store).classic();
                let mut store = lock(&self.v3);
                let changes = store.finish_due(at_ms, || rand::random::<f64>() < faults.task_fail_rate);
                let due = at_ms + u64::try_from(faults.task_duration.as_millis()).unwrap_or(u64::MAX);
                let lb = serde_json::from_slice::<Value>(params)
                    .ok()
                    .and_then(|v| v.get("LoadBalancerId").and_then(Value::as_str).map(str::to_owned));
                if self.in_operating
                    && crate::clb::v3::is_write(action)
                    && lb.is_some_and(|lb| store.busy(&lb, at_ms))
                {
                    return Err(v3::V3Error {
                        code: "FailedOperation.ResourceInOperating",
                        message: "another task runs on the load balancer".into(),
                    });
                }
                let reply = store.execute(action, params, &request_id, due, self.limits, &classic);
                drop(store);
                lock(&self.store).apply_classic(&changes);
                reply
            });
        // The call log names the load balancer and the instances, as it does for v2.
        let parsed = serde_json::from_slice::<Value>(params).unwrap_or_default();
        let listed = parsed.get("InstanceIds").and_then(Value::as_array).into_iter().flatten();
        let instance_ids = (parsed.get("Targets").and_then(Value::as_array).into_iter().flatten())
            .filter_map(|t| t.get("InstanceId"))
            .chain(listed)
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect();
        let error = result.as_ref().err().map(|e| e.code.to_owned());
        let task_id = match action {
            "DescribeTaskStatus" => parsed.get("TaskId").and_then(Value::as_str).map(str::to_owned),
            _ if error.is_none() && crate::clb::v3::is_write(action) => Some(request_id.clone()),
            _ => None,
        };
        let call = CallRecord {
            action: action.to_owned(),
            http_method: method.to_owned(),
            load_balancer_id: parsed.get("LoadBalancerId").and_then(Value::as_str).map(str::to_owned),
            instance_ids,
            request_id: None,
            task_id,
            code: i64::from(error.is_some()),
            error,
            at_ms,
        };
        debug!(action, code = ?call.error, "CLB emulator answered (v3)");
        if call.task_id.is_some() && action != "DescribeTaskStatus" {
            self.changed.notify_one();
        }
        lock(&self.store).record(call);
        v3::envelope(&request_id, result)
    }

    /// Answers one API request and logs it in the call log.
    fn serve(
        &self,
        request: Result<ApiRequest<'_>, (String, Reject)>,
        http_method: &str,
        at_ms: u64,
    ) -> Value {
        let mut call = CallRecord {
            action: String::new(),
            http_method: http_method.to_owned(),
            load_balancer_id: None,
            instance_ids: Vec::new(),
            request_id: None,
            task_id: None,
            code: 0,
            error: None,
            at_ms,
        };
        let outcome = match request {
            Ok(req) => {
                call.action = req.get("Action").unwrap_or_default().to_owned();
                call.load_balancer_id = req.get("loadBalancerId").map(str::to_owned);
                call.instance_ids = req.indexed("backends", Some("instanceId"));
                call.request_id = req.get("requestId").and_then(|r| r.trim().parse().ok());
                self.authenticate(&req, at_ms).and_then(|action| self.execute(action, &req))
            }
            Err((action, rejected)) => {
                call.action = action;
                Err(rejected)
            }
        };
        let (code, message, mut body) = match outcome {
            Ok(reply) => (0, String::new(), reply),
            Err(Reject { code, message }) => (code, message, Map::new()),
        };
        call.request_id = body.get("requestId").and_then(Value::as_u64).or(call.request_id);
        call.code = code;
        body.insert("code".into(), code.into());
        body.insert("message".into(), message.into());
        body.insert("codeDesc".into(), code_desc(code).into());
        debug!(action = %call.action, code, "CLB emulator answered");
        lock(&self.store).record(call);
        Value::Object(body)
    }

    /// Checks SecretId (4104), signature (4100), timestamp window (4500) and nonce reuse (4500), in that order,
    /// then names the action (6100 if unknown).
    fn authenticate(&self, req: &ApiRequest<'_>, at_ms: u64) -> Result<Action, Reject> {
        if req.get("SecretId") != Some(self.credentials.secret_id()) {
            return Err(reject(4104, "SecretId does not exist or is disabled"));
        }
        let signature = req.get(sign::SIGNATURE).unwrap_or_default();
        // The very function the client signs with, fed what arrived: method, Host header, path, parameters.
        if !sign::verify(
            req.method,
            req.host,
            req.path,
            &req.params,
            self.credentials.secret_key(),
            signature,
        ) {
            return Err(reject(4100, "authentication failed: signature mismatch"));
        }
        let timestamp: i64 =
            req.require("Timestamp")?.parse().map_err(|_| reject(4000, "Timestamp must be an integer"))?;
        let now = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX);
        if timestamp.abs_diff(now) > self.timestamp_window_secs.unsigned_abs() {
            return Err(reject(4500, "Timestamp is too far from server time"));
        }
        let nonce: u64 = req
            .require("Nonce")?
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| reject(4000, "Nonce must be a positive integer"))?;
        if !lock(&self.nonces).insert(nonce, timestamp, now, self.timestamp_window_secs) {
            return Err(reject(4500, "Nonce was already used (replay attack)"));
        }
        let action = req.require("Action")?;
        action.parse().map_err(|_| reject(6100, format!("action {action} is not supported")))
    }

    /// Admission (`--qps`, `--error-rate`), then the action itself.
    fn execute(&self, action: Action, req: &ApiRequest<'_>) -> Result<Map<String, Value>, Reject> {
        if let Some(limiters) = &self.limiters
            && limiters[action.index()].check().is_err()
        {
            return Err(reject(4400, format!("request limit of {action} exceeded")));
        }
        let faults = self.faults();
        if faults.error_rate > 0.0 && rand::random::<f64>() < faults.error_rate {
            return Err(reject(6000, "internal error (injected)"));
        }
        let reply = match action {
            Action::DescribeLoadBalancers => self.describe_load_balancers(req)?,
            Action::DescribeLoadBalancerBackends => self.describe_backends(req)?,
            Action::RegisterInstancesWithLoadBalancer | Action::DeregisterInstancesFromLoadBalancer => {
                self.submit(action, req, faults.task_duration)?
            }
            Action::DescribeLoadBalancersTaskResult => self.task_result(req)?,
        };
        Ok(match reply {
            Value::Object(map) => map,
            _ => Map::new(),
        })
    }

    fn describe_load_balancers(&self, req: &ApiRequest<'_>) -> Result<Value, Reject> {
        let wanted = req.indexed("loadBalancerIds", None);
        let offset = number(req, "offset", 0)?;
        let limit = number(req, "limit", DEFAULT_LIMIT)?.clamp(1, MAX_LIMIT);
        let store = lock(&self.store);
        let matching: Vec<&String> =
            store.lb_ids().filter(|id| wanted.is_empty() || wanted.contains(id)).collect();
        let page: Vec<Value> = matching
            .iter()
            .skip(offset)
            .take(limit)
            .map(|id| {
                json!({
                    "loadBalancerId": id, "unLoadBalancerId": id, "loadBalancerName": id,
                    "loadBalancerType": 2, "forward": 0, "domain": "", "loadBalancerVips": [], "status": 1,
                })
            })
            .collect();
        Ok(json!({ "totalCount": matching.len(), "loadBalancerSet": page }))
    }

    fn describe_backends(&self, req: &ApiRequest<'_>) -> Result<Value, Reject> {
        let lb = req.require("loadBalancerId")?;
        let store = lock(&self.store);
        let backends = store.backends(lb).ok_or_else(|| unknown_lb(lb))?;
        let set: Vec<Value> = backends
            .iter()
            .map(|(id, weight)| {
                json!({
                    "instanceId": id, "unInstanceId": id, "weight": weight, "instanceName": id,
                    "lanIp": "", "wanIpSet": [], "instanceStatus": 2,
                })
            })
            .collect();
        Ok(json!({ "totalCount": set.len(), "backendSet": set }))
    }

    /// Register or Deregister: validate, then start a task that ends after `duration`.
    fn submit(&self, action: Action, req: &ApiRequest<'_>, duration: Duration) -> Result<Value, Reject> {
        let lb = req.require("loadBalancerId")?;
        let backends = backends(req, action == Action::RegisterInstancesWithLoadBalancer)?;
        if backends.is_empty() {
            return Err(reject(4000, "no backends.N.instanceId given"));
        }
        if backends.len() > self.max_batch {
            return Err(reject(
                4000,
                format!("at most {} backends per call, got {}", self.max_batch, backends.len()),
            ));
        }
        let now = now_ms();
        let due = now.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        let request_id = {
            let mut store = lock(&self.store);
            // Deregistering an instance that is not on the LB is accepted (like the real API); an unknown LB
            // is not.
            if store.backends(lb).is_none() {
                return Err(unknown_lb(lb));
            }
            store.submit(action, lb, backends, now, due)
        };
        self.task_added.notify_one();
        self.changed.notify_one();
        Ok(json!({ "requestId": request_id }))
    }

    fn task_result(&self, req: &ApiRequest<'_>) -> Result<Value, Reject> {
        let request_id: u64 = req
            .require("requestId")?
            .trim()
            .parse()
            .map_err(|_| reject(4000, "requestId must be an integer"))?;
        let store = lock(&self.store);
        let task = store
            .task(request_id)
            .ok_or_else(|| reject(5000, format!("task {request_id} does not exist")))?;
        let status = match task.status {
            TaskState::Succeeded => 0,
            TaskState::Failed => 1,
            TaskState::Running => 2,
        };
        Ok(json!({ "data": { "status": status } }))
    }
}

fn unknown_lb(lb: &str) -> Reject {
    reject(5000, format!("load balancer {lb} does not exist"))
}

/// An optional non-negative integer parameter.
fn number(req: &ApiRequest<'_>, name: &str, default: usize) -> Result<usize, Reject> {
    match req.get(name) {
        None | Some("") => Ok(default),
        Some(v) => {
            v.trim().parse().map_err(|_| reject(4000, format!("{name} must be a non-negative integer")))
        }
    }
}

/// `backends.N.instanceId` (and, for Register, `backends.N.weight`), strictly: numbered 0, 1, … without gaps,
/// weights 0..=100.
fn backends(req: &ApiRequest<'_>, with_weight: bool) -> Result<Vec<(String, Option<u32>)>, Reject> {
    let mut ids = BTreeMap::<usize, String>::new();
    let mut weights = BTreeMap::<usize, u32>::new();
    for (name, value) in &req.params {
        let Some(rest) = name.strip_prefix("backends.") else {
            continue;
        };
        let bad = || reject(4000, format!("unknown parameter {name}"));
        let (index, field) = rest.split_once('.').ok_or_else(bad)?;
        let index: usize = index.parse().ok().filter(|i: &usize| i.to_string() == index).ok_or_else(bad)?;
        match field {
            "instanceId" if !value.is_empty() => {
                ids.insert(index, value.clone());
            }
            "weight" if with_weight => {
                let weight = value.parse().ok().filter(|w| *w <= 100);
                weights.insert(index, weight.ok_or_else(|| reject(4000, format!("{name} must be 0..100")))?);
            }
            _ => return Err(bad()),
        }
    }
    if !ids.keys().copied().eq(0..ids.len()) || weights.keys().any(|i| !ids.contains_key(i)) {
        return Err(reject(4000, "backends must be numbered 0..N-1 without gaps"));
    }
    Ok(ids.into_iter().map(|(i, id)| (id, weights.get(&i).copied())).collect())
}

/// The HTTP routes: the control endpoints, and the API on every other path.
pub(crate) fn router(emulator: Arc<Emulator>) -> Router {
    Router::new()
        .route("/emulator/state", get(get_state))
        .route("/emulator/config", get(get_config).post(post_config))
        .fallback(api)
        .with_state(emulator)
}

/// The CLB v2 endpoint. Every answer is HTTP 200 with a `code`, as the real API does.
async fn api(
    State(emulator): State<Arc<Emulator>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Json<Value> {
    let at_ms = now_ms();
    let latency = emulator.faults().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // The signed host is what the client put in the Host header (HTTP/2 carries it as the URI authority).
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    // API 3.0 names its action in a header; API 2.0 in a parameter.
    if let Some(action) = headers.get("x-tc-action").and_then(|v| v.to_str().ok()) {
        let query = uri.query().unwrap_or_default();
        let request = V3Request { method: method.as_str(), query, headers: &headers, host, body: &body };
        return Json(emulator.serve_v3(action, request, at_ms));
    }
    let request = decode_request(&method, host, uri.path(), uri.query(), &body);
    Json(emulator.serve(request, method.as_str(), at_ms))
}

/// Decodes the parameters: from the query for GET, from the form body for POST (the query is then ignored,
/// as documented). A parameter given twice is refused, since the signature could not tell which one counts.
fn decode_request<'a>(
    method: &'a Method,
    host: &'a str,
    path: &'a str,
    query: Option<&str>,
    body: &[u8],
) -> Result<ApiRequest<'a>, (String, Reject)> {
    let raw = match *method {
        Method::GET => query.unwrap_or_default().as_bytes(),
        Method::POST => body,
        _ => return Err((String::new(), reject(4000, "only GET and POST are supported"))),
    };
    let params: Vec<(String, String)> =
        form_urlencoded::parse(raw).map(|(n, v)| (n.into_owned(), v.into_owned())).collect();
    let mut names = std::collections::HashSet::with_capacity(params.len());
    if let Some((name, _)) = params.iter().find(|(name, _)| !names.insert(name.as_str())) {
        let action = params.iter().find(|(n, _)| n == "Action").map(|(_, v)| v.clone()).unwrap_or_default();
        return Err((action, reject(4000, format!("parameter {name} is given twice"))));
    }
    Ok(ApiRequest { method: method.as_str(), host, path, params })
}

async fn get_state(State(emulator): State<Arc<Emulator>>) -> Json<crate::emulator::StateView> {
    Json(emulator.view(true))
}

async fn get_config(State(emulator): State<Arc<Emulator>>) -> Json<Faults> {
    Json(emulator.faults())
}

/// Changes the faults at run time; every field of the JSON body is optional.
async fn post_config(State(emulator): State<Arc<Emulator>>, Json(patch): Json<FaultsPatch>) -> Response {
    match patch.apply(emulator.faults()) {
        Ok(faults) => {
            emulator.set_faults(faults);
            Json(faults).into_response()
        }
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A nonce is refused the second time, and forgotten once its timestamp has left the window.
    #[test]
    fn nonces_are_single_use_within_the_window() {
        let mut cache = NonceCache::default();
        assert!(cache.insert(7, 1000, 1000, 300));
        assert!(!cache.insert(7, 1001, 1001, 300));
        for n in 0..NONCE_PRUNE_AT as u64 - 2 {
            cache.insert(100 + n, 1000, 1000, 300);
        }
        assert!(cache.insert(1, 2000, 2000, 300));
        // The cache is full now: this insert first prunes every nonce whose timestamp left the window.
        assert!(cache.insert(7, 2000, 2000, 300));
        assert!(!cache.insert(1, 2000, 2000, 300));
        assert_eq!(cache.seen.len(), 2);
    }
}
