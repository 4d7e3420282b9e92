//! The emulator's API 3.0 face: POST JSON at `/` (the `X-TC-Action` header tells it from v2), checked with the
//! very TC3 signer the client uses, over application load balancers with listeners, layer-7 rules and targets,
//! and asynchronous writes polled by their RequestId. A task's change shows when it is due; due tasks are
//! applied before every v3 request and every state view, which is all anyone can see of them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::state::TargetView;
use crate::clb::{
    Credentials,
    tc3::{self, Tc3Input},
    v3::{self, TargetsRequest},
};

/// A layer-7 rule of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedRule {
    /// Its id, `loc-...`.
    pub location_id: String,
    /// Its domain.
    pub domain: String,
    /// Its URL path.
    pub url: String,
}

/// A listener of an application load balancer, to start with: `lb-x/lbl-y=TCP:80` on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedListener {
    /// The application load balancer, created if new.
    pub load_balancer_id: String,
    /// The listener's id, `lbl-...`.
    pub listener_id: String,
    /// `TCP`, `UDP`, `HTTP`, `HTTPS`.
    pub protocol: String,
    /// The listener's port.
    pub port: u16,
    /// Layer-7 rules (HTTP/HTTPS only).
    #[serde(default)]
    pub rules: Vec<SeedRule>,
}

/// `lb-x/lbl-y=TCP:80`, or for layer 7 `lb-x/lbl-y=HTTP:80,loc-1=a.example.com/path,...`.
impl std::str::FromStr for SeedListener {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not lb-x/lbl-y=PROTOCOL:PORT[,loc-z=DOMAIN/URL...]");
        let (path, rest) = s.split_once('=').ok_or_else(bad)?;
        let (lb, listener) = path.split_once('/').ok_or_else(bad)?;
        let mut parts = rest.split(',');
        let (protocol, port) = parts.next().and_then(|p| p.split_once(':')).ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        let rules = parts
            .map(|rule| {
                let (loc, at) = rule.split_once('=').ok_or_else(bad)?;
                let slash = at.find('/').ok_or_else(bad)?;
                Ok(SeedRule { location_id: loc.into(), domain: at[..slash].into(), url: at[slash..].into() })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if lb.is_empty() || listener.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            load_balancer_id: lb.into(),
            listener_id: listener.into(),
            protocol: protocol.to_uppercase(),
            port,
            rules,
        })
    }
}

/// A target where it is bound: listener, rule (layer 7), instance and port.
type TargetKey = (String, Option<String>, String, u16);

fn target_view((listener_id, location_id, instance_id, port): &TargetKey, weight: u32) -> TargetView {
    TargetView {
        listener_id: listener_id.clone(),
        location_id: location_id.clone(),
        instance_id: instance_id.clone(),
        port: *port,
        weight,
    }
}

/// The v3 state: application load balancers, their listeners and targets, and the tasks.
#[derive(Debug, Default)]
pub(crate) struct V3Store {
    listeners: BTreeMap<String, Vec<SeedListener>>,
    /// Bound targets (and their weights) per load balancer.
    targets: BTreeMap<String, BTreeMap<TargetKey, u32>>,
    tasks: BTreeMap<String, V3Task>,
    /// Listeners whose targets every batch call reports in `FailListenerIdSet` (a fault to inject).
    pub(crate) fail_listeners: BTreeSet<String>,
}

/// How the v3 face limits and answers writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most targets per RegisterTargets / DeregisterTargets (and classic) call.
    pub(crate) max_targets: usize,
    /// Most targets per BatchRegisterTargets / BatchDeregisterTargets call.
    pub(crate) max_batch_targets: usize,
    /// Whether the batch calls apply at once and hand out no task (as one Tencent controller reads them);
    /// otherwise they are tasks like the other writes.
    pub(crate) batch_sync: bool,
}

#[derive(Debug, Clone)]
struct V3Task {
    /// 0 succeeded, 1 failed, 2 running.
    status: i64,
    due_ms: u64,
    load_balancer: String,
    register: bool,
    targets: Vec<(TargetKey, u32)>,
    /// For a classic load balancer (kept in the API 2.0 state): the instances and weights.
    classic: Option<Vec<(String, u32)>>,
}

/// A change to a classic load balancer that a finished task makes: (load balancer, register, instances and
/// weights). Classic load balancers live in the API 2.0 state, so the caller applies it there.
pub(crate) type ClassicChange = (String, bool, Vec<(String, u32)>);

/// The classic load balancers (the API 2.0 state): backends and weights by load balancer.
pub(crate) type Classic = BTreeMap<String, BTreeMap<String, u32>>;

/// The JSON object a GET's query string stands for: `ListenerIds.0=lbl-1&Targets.0.Port=80` is
/// `{"ListenerIds": ["lbl-1"], "Targets": [{"Port": 80}]}`. Values of the numeric fields the emulator reads
/// become numbers; the rest stay strings.
pub(crate) fn query_to_json(query: &str) -> Value {
    const NUMERIC: [&str; 6] = ["Port", "Weight", "Forward", "Offset", "Limit", "Status"];
    let mut root = Value::Object(Default::default());
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let parts: Vec<&str> = key.split('.').collect();
        let leaf = parts.last().copied().unwrap_or_default();
        let value = match value.parse::<i64>() {
            Ok(n) if NUMERIC.contains(&leaf) => Value::from(n),
            _ => Value::from(value.into_owned()),
        };
        insert(&mut root, &parts, value);
    }
    root
}

fn insert(node: &mut Value, path: &[&str], value: Value) {
    let Some((head, rest)) = path.split_first() else {
        *node = value;
        return;
    };
    let child = match head.parse::<usize>() {
        Ok(i) => {
            if !node.is_array() {
                *node = Value::Array(Vec::new());
            }
            let Some(items) = node.as_array_mut() else { return };
            while items.len() <= i {
                items.push(Value::Null);
            }
            &mut items[i]
        }
        Err(_) => {
            if !node.is_object() {
                *node = Value::Object(Default::default());
            }
            let Some(map) = node.as_object_mut() else { return };
            map.entry(head.to_string()).or_insert(Value::Null)
        }
    };
    insert(child, rest, value);
}

/// Why a v3 request was refused: its `Error.Code` and `Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct V3Error {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn error(code: &'static str, message: impl Into<String>) -> V3Error {
    V3Error { code, message: message.into() }
}

fn not_found(lb: &str) -> V3Error {
    error("InvalidParameter.LBIdNotFound", format!("{lb} does not exist"))
}

/// A RequestId in the form the real API returns (a UUID).
pub(crate) fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("{}-{}-{}-{}-{}", h(0..4), h(4..6), h(6..8), h(8..10), h(10..16))
}

/// The answer envelope.
pub(crate) fn envelope(request_id: &str, result: Result<Value, V3Error>) -> Value {
    let mut response = match result {
        Ok(Value::Object(map)) => map,
        Ok(_) => serde_json::Map::new(),
        Err(e) => {
            let mut map = serde_json::Map::new();
            map.insert("Error".into(), json!({"Code": e.code, "Message": e.message}));
            map
        }
    };
    response.insert("RequestId".into(), request_id.into());
    json!({ "Response": response })
}

/// What the TC3 check needs of a request.
pub(crate) struct Signed<'a> {
    /// `POST` or `GET`.
    pub(crate) method: &'a str,
    /// The raw query string (GET).
    pub(crate) query: &'a str,
    pub(crate) authorization: Option<&'a str>,
    pub(crate) timestamp: Option<&'a str>,
    pub(crate) token: Option<&'a str>,
    pub(crate) host: &'a str,
    pub(crate) content_type: &'a str,
    pub(crate) body: &'a [u8],
}

/// Checks the signature as the real service does: a malformed header, an unknown SecretId, a timestamp more than
/// `window_secs` away, a missing or wrong token, or a signature that does not match the bytes received.
pub(crate) fn authenticate(
    credentials: &Credentials,
    request: &Signed<'_>,
    now_secs: i64,
    window_secs: i64,
) -> Result<(), V3Error> {
    let authorization = request
        .authorization
        .ok_or_else(|| error("AuthFailure.InvalidAuthorization", "no Authorization header"))?;
    let timestamp: i64 = request
        .timestamp
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| error("MissingParameter", "X-TC-Timestamp is missing or not an integer"))?;
    let input = Tc3Input {
        method: request.method,
        host: request.host,
        path: "/",
        query: request.query,
        content_type: request.content_type,
        payload: request.body,
        service: v3::SERVICE,
        timestamp,
    };
    let id = credentials.secret_id();
    match tc3::verify(authorization, id, credentials.secret_key(), &input) {
        Err("unknown SecretId") => {
            return Err(error("AuthFailure.SecretIdNotFound", "the SecretId does not exist"));
        }
        Err("signature mismatch")
        | Err("credential scope does not match the timestamp's date and the service") => {
            // A stale timestamp is reported as such before a mismatch, as the service does.
            if timestamp.abs_diff(now_secs) > window_secs.unsigned_abs() {
                return Err(error("AuthFailure.SignatureExpire", "the signature expired (X-TC-Timestamp)"));
            }
            return Err(error("AuthFailure.SignatureFailure", "the signature does not match"));
        }
        Err(reason) => return Err(error("AuthFailure.InvalidAuthorization", reason)),
        Ok(()) => {}
    }
    if timestamp.abs_diff(now_secs) > window_secs.unsigned_abs() {
        return Err(error("AuthFailure.SignatureExpire", "the signature expired (X-TC-Timestamp)"));
    }
    if credentials.token() != request.token.filter(|t| !t.is_empty()) {
        return Err(error("AuthFailure.TokenFailure", "the token is missing or wrong"));
    }
    Ok(())
}

impl V3Store {
    /// A store with `listeners` (their load balancers created).
    pub(crate) fn new(listeners: &[SeedListener]) -> Self {
        let mut store = Self::default();
        for l in listeners {
            store.listeners.entry(l.load_balancer_id.clone()).or_default().push(l.clone());
            store.targets.entry(l.load_balancer_id.clone()).or_default();
        }
        store
    }

    /// Applies the tasks that are due at `now_ms`: a failed one (decided by `fail`) changes nothing. Returns the
    /// changes of classic load balancers, for the API 2.0 state.
    pub(crate) fn finish_due(&mut self, now_ms: u64, mut fail: impl FnMut() -> bool) -> Vec<ClassicChange> {
        let mut classic = Vec::new();
        for task in self.tasks.values_mut().filter(|t| t.status == 2 && t.due_ms <= now_ms) {
            if fail() {
                task.status = 1;
                continue;
            }
            task.status = 0;
            if let Some(items) = &task.classic {
                classic.push((task.load_balancer.clone(), task.register, items.clone()));
                continue;
            }
            let bound = self.targets.entry(task.load_balancer.clone()).or_default();
            for (key, weight) in &task.targets {
                if task.register {
                    bound.insert(key.clone(), *weight);
                } else {
                    bound.remove(key);
                }
            }
        }
        classic
    }

    /// The targets bound on `listener`, as (instance, port) and weight.
    pub(crate) fn bound_on(&self, listener: &str) -> Vec<((String, u16), u32)> {
        (self.targets.values().flatten())
            .filter(|((l, _, _, _), _)| l == listener)
            .map(|((_, _, instance, port), weight)| ((instance.clone(), *port), *weight))
            .collect()
    }

    /// Every task, for the state view (and the state file).
    pub(crate) fn task_views(&self) -> Vec<super::state::V3TaskView> {
        let view = |(id, t): (&String, &V3Task)| super::state::V3TaskView {
            request_id: id.clone(),
            load_balancer_id: t.load_balancer.clone(),
            status: t.status,
            due_at_ms: t.due_ms,
            register: t.register,
            targets: t.targets.iter().map(|(k, w)| target_view(k, *w)).collect(),
            classic: t.classic.clone(),
        };
        self.tasks.iter().map(view).collect()
    }

    /// Takes back the targets and tasks of a state file (listeners come from the seeds of this start).
    pub(crate) fn restore(
        &mut self,
        targets: &BTreeMap<String, Vec<TargetView>>,
        tasks: &[super::state::V3TaskView],
    ) {
        let key =
            |t: &TargetView| (t.listener_id.clone(), t.location_id.clone(), t.instance_id.clone(), t.port);
        for (lb, views) in targets {
            let bound = self.targets.entry(lb.clone()).or_default();
            bound.extend(views.iter().map(|t| (key(t), t.weight)));
        }
        for t in tasks {
            let task = V3Task {
                status: t.status,
                due_ms: t.due_at_ms,
                load_balancer: t.load_balancer_id.clone(),
                register: t.register,
                targets: t.targets.iter().map(|v| (key(v), v.weight)).collect(),
                classic: t.classic.clone(),
            };
            self.tasks.insert(t.request_id.clone(), task);
        }
    }

    /// The bound targets of every application load balancer.
    pub(crate) fn view(&self) -> BTreeMap<String, Vec<TargetView>> {
        let view = |(key, weight): (&TargetKey, &u32)| target_view(key, *weight);
        self.targets.iter().map(|(lb, targets)| (lb.clone(), targets.iter().map(view).collect())).collect()
    }

    fn listener(&self, lb: &str, listener: &str) -> Result<&SeedListener, V3Error> {
        let listeners = self.listeners.get(lb).ok_or_else(|| not_found(lb))?;
        listeners.iter().find(|l| l.listener_id == listener).ok_or_else(|| {
            error("InvalidParameter.ListenerIdNotFound", format!("listener {listener} is not on {lb}"))
        })
    }

    /// The listener a per-listener write names, once it is known to exist and the call holds 1..=`max_targets`
    /// targets.
    fn checked(&self, req: &TargetsRequest, max_targets: usize) -> Result<SeedListener, V3Error> {
        let listener = self.listener(&req.load_balancer_id, &req.listener_id)?.clone();
        if req.targets.is_empty() || req.targets.len() > max_targets {
            return Err(error(
                "InvalidParameterValue.Length",
                format!("1 to {max_targets} targets per call"),
            ));
        }
        Ok(listener)
    }

    /// Executes `action` with its JSON `body`; a write becomes a task of `request_id` due at `due_ms`.
    pub(crate) fn execute(
        &mut self,
        action: &str,
        body: &[u8],
        request_id: &str,
        due_ms: u64,
        limits: Limits,
        classic: &Classic,
    ) -> Result<Value, V3Error> {
        let max_targets = limits.max_targets;
        let parse = |e: serde_json::Error| error("InvalidParameter.FormatError", e.to_string());
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct ForLb {
            load_balancer_id: String,
        }
        match action {
            "DescribeLoadBalancers" => Ok(self.describe_load_balancers(classic)),
            "DescribeListeners" => {
                let req: ForLb = serde_json::from_slice(body).map_err(parse)?;
                let listeners = self
                    .listeners
                    .get(&req.load_balancer_id)
                    .ok_or_else(|| not_found(&req.load_balancer_id))?;
                let out: Vec<Value> = listeners
                    .iter()
                    .map(|l| {
                        let rules: Vec<Value> = l
                            .rules
                            .iter()
                            .map(|r| json!({"LocationId": r.location_id, "Domain": r.domain, "Url": r.url}))
                            .collect();
                        json!({"ListenerId": l.listener_id, "Protocol": l.protocol, "Port": l.port, "Rules": rules})
                    })
                    .collect();
                Ok(json!({"Listeners": out, "TotalCount": out.len()}))
            }
            "DescribeClassicalLBTargets" => {
                let req: ForLb = serde_json::from_slice(body).map_err(parse)?;
                let backends =
                    classic.get(&req.load_balancer_id).ok_or_else(|| not_found(&req.load_balancer_id))?;
                let targets: Vec<Value> = backends
                    .iter()
                    .map(|(i, w)| json!({"Type": "CVM", "InstanceId": i, "Weight": w}))
                    .collect();
                Ok(json!({ "Targets": targets }))
            }
            "RegisterTargetsWithClassicalLB" | "DeregisterTargetsFromClassicalLB" => {
                let register = action == "RegisterTargetsWithClassicalLB";
                self.submit_classic(register, body, classic, request_id, due_ms, max_targets)
            }
            "DescribeTargets" => {
                #[derive(Deserialize)]
                #[serde(rename_all = "PascalCase")]
                struct Req {
                    load_balancer_id: String,
                    #[serde(default)]
                    listener_ids: Vec<String>,
                }
                let req: Req = serde_json::from_slice(body).map_err(parse)?;
                self.describe_targets(&req.load_balancer_id, &req.listener_ids)
            }
            "RegisterTargets" | "DeregisterTargets" => {
                let req: TargetsRequest = serde_json::from_slice(body).map_err(parse)?;
                self.submit(action == "RegisterTargets", &req, request_id, due_ms, max_targets)
            }
            "BatchRegisterTargets" | "BatchDeregisterTargets" => {
                #[derive(Deserialize)]
                #[serde(rename_all = "PascalCase")]
                struct Req {
                    load_balancer_id: String,
                    targets: Vec<v3::BatchTarget>,
                }
                let req: Req = serde_json::from_slice(body).map_err(parse)?;
                let register = action == "BatchRegisterTargets";
                self.submit_batch(register, &req.load_balancer_id, &req.targets, request_id, due_ms, limits)
            }
            "ModifyTargetWeight" => {
                let req: TargetsRequest = serde_json::from_slice(body).map_err(parse)?;
                self.modify_weight(&req, request_id, due_ms, max_targets)
            }
            "DescribeTaskStatus" => {
                #[derive(Deserialize)]
                #[serde(rename_all = "PascalCase")]
                struct Req {
                    task_id: String,
                }
                let req: Req = serde_json::from_slice(body).map_err(parse)?;
                let task = self
                    .tasks
                    .get(&req.task_id)
                    .ok_or_else(|| error("InvalidParameter", format!("task {} not found", req.task_id)))?;
                Ok(json!({"Status": task.status, "Message": null, "LoadBalancerIds": [task.load_balancer]}))
            }
            other => Err(error("InvalidAction", format!("action {other} is not supported"))),
        }
    }

    /// A batch call across listeners: targets of listeners that do not exist, of a rule that does not, or of a
    /// listener in `fail_listeners` are refused together, named in `FailListenerIdSet`; the rest is applied (at
    /// once, or as a task).
    fn submit_batch(
        &mut self,
        register: bool,
        lb: &str,
        items: &[v3::BatchTarget],
        request_id: &str,
        due_ms: u64,
        limits: Limits,
    ) -> Result<Value, V3Error> {
        let listeners = self.listeners.get(lb).ok_or_else(|| not_found(lb))?.clone();
        if items.is_empty() || items.len() > limits.max_batch_targets {
            let message = format!("1 to {} targets per call", limits.max_batch_targets);
            return Err(error("InvalidParameterValue.Length", message));
        }
        let mut failed = BTreeSet::new();
        let mut targets = Vec::new();
        for t in items {
            let instance =
                t.instance_id.clone().ok_or_else(|| error("MissingParameter", "Targets.InstanceId"))?;
            let Some(listener) = listeners.iter().find(|l| l.listener_id == t.listener_id) else {
                failed.insert(t.listener_id.clone());
                continue;
            };
            let layer7 = listener.protocol == "HTTP" || listener.protocol == "HTTPS";
            let rule_ok = match &t.location_id {
                Some(loc) => layer7 && listener.rules.iter().any(|r| &r.location_id == loc),
                None => !layer7,
            };
            if !rule_ok || self.fail_listeners.contains(&t.listener_id) {
                failed.insert(t.listener_id.clone());
                continue;
            }
            let key = (t.listener_id.clone(), t.location_id.clone(), instance, t.port);
            targets.push((key, t.weight.unwrap_or(10).min(100)));
        }
        // Targets of a failed listener are not applied, even those listed before the failure was found.
        targets.retain(|(key, _)| !failed.contains(&key.0));
        let message = match failed.is_empty() {
            true => Value::Null,
            false => Value::from(format!(
                "Listener {} not exists.",
                failed.iter().cloned().collect::<Vec<_>>().join(",")
            )),
        };
        let answer = json!({"FailListenerIdSet": failed.iter().collect::<Vec<_>>(), "Message": message});
        if limits.batch_sync {
            let bound = self.targets.entry(lb.to_owned()).or_default();
            for (key, weight) in targets {
                if register {
                    bound.insert(key, weight);
                } else {
                    bound.remove(&key);
                }
            }
            return Ok(answer);
        }
        let task =
            V3Task { status: 2, due_ms, load_balancer: lb.to_owned(), register, targets, classic: None };
        self.tasks.insert(request_id.to_owned(), task);
        Ok(answer)
    }

    /// ModifyTargetWeight: a task that sets the weight of bound targets of one listener or rule (the request's
    /// `Weight` for targets without their own).
    fn modify_weight(
        &mut self,
        req: &TargetsRequest,
        request_id: &str,
        due_ms: u64,
        max_targets: usize,
    ) -> Result<Value, V3Error> {
        let listener = self.checked(req, max_targets)?;
        let location = match &req.location_id {
            Some(loc) if listener.rules.iter().any(|r| &r.location_id == loc) => Some(loc.clone()),
            Some(_) => {
                return Err(error("InvalidParameter.LocationNotFound", "no such rule on the listener"));
            }
            None => None,
        };
        let bound = self.targets.get(&req.load_balancer_id);
        let mut targets = Vec::new();
        for t in &req.targets {
            let instance =
                t.instance_id.clone().ok_or_else(|| error("MissingParameter", "Targets.InstanceId"))?;
            let key = (req.listener_id.clone(), location.clone(), instance, t.port);
            if !bound.is_some_and(|b| b.contains_key(&key)) {
                return Err(error("InvalidParameter", format!("{} port {} is not bound", key.2, key.3)));
            }
            let weight = t.weight.or(req.weight).unwrap_or(10).min(100);
            targets.push((key, weight));
        }
        // A weight change is a Register over bound targets: it replaces their weights when the task ends.
        let load_balancer = req.load_balancer_id.clone();
        let task = V3Task { status: 2, due_ms, load_balancer, register: true, targets, classic: None };
        self.tasks.insert(request_id.to_owned(), task);
        Ok(json!({}))
    }

    /// Whether a write task on `lb` is still running at `now_ms` (the CLB is "in operation").
    pub(crate) fn busy(&self, lb: &str, now_ms: u64) -> bool {
        self.tasks.values().any(|t| t.status == 2 && t.due_ms > now_ms && t.load_balancer == lb)
    }

    fn describe_load_balancers(&self, classic: &Classic) -> Value {
        let application = self.listeners.keys().map(|id| json!({"LoadBalancerId": id, "Forward": 1}));
        let classic = classic.keys().map(|id| json!({"LoadBalancerId": id, "Forward": 0}));
        let set: Vec<Value> = application.chain(classic).collect();
        json!({"TotalCount": set.len(), "LoadBalancerSet": set})
    }

    /// RegisterTargetsWithClassicalLB (`Targets[]` of `{InstanceId, Weight}`) or DeregisterTargetsFromClassicalLB
    /// (`InstanceIds[]`) on a classic load balancer.
    fn submit_classic(
        &mut self,
        register: bool,
        body: &[u8],
        classic: &Classic,
        request_id: &str,
        due_ms: u64,
        max_targets: usize,
    ) -> Result<Value, V3Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Item {
            instance_id: String,
            #[serde(default)]
            weight: Option<u32>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Req {
            load_balancer_id: String,
            #[serde(default)]
            targets: Vec<Item>,
            #[serde(default)]
            instance_ids: Vec<String>,
        }
        let req: Req =
            serde_json::from_slice(body).map_err(|e| error("InvalidParameter.FormatError", e.to_string()))?;
        let backends = classic.get(&req.load_balancer_id).ok_or_else(|| not_found(&req.load_balancer_id))?;
        let items: Vec<(String, u32)> = match register {
            true => {
                req.targets.into_iter().map(|t| (t.instance_id, t.weight.unwrap_or(10).min(100))).collect()
            }
            false => req.instance_ids.into_iter().map(|i| (i, 0)).collect(),
        };
        if items.is_empty() || items.len() > max_targets {
            return Err(error(
                "InvalidParameterValue.Length",
                format!("1 to {max_targets} instances per call"),
            ));
        }
        if let Some((missing, _)) = items.iter().find(|(i, _)| !register && !backends.contains_key(i)) {
            return Err(error("InvalidParameter", format!("{missing} is not a backend")));
        }
        let load_balancer = req.load_balancer_id;
        let task =
            V3Task { status: 2, due_ms, load_balancer, register, targets: Vec::new(), classic: Some(items) };
        self.tasks.insert(request_id.to_owned(), task);
        Ok(json!({}))
    }

    fn describe_targets(&self, lb: &str, only: &[String]) -> Result<Value, V3Error> {
        let listeners = self.listeners.get(lb).ok_or_else(|| not_found(lb))?;
        let bound = self.targets.get(lb);
        let targets_of = |listener: &str, rule: Option<&str>| -> Vec<Value> {
            bound
                .into_iter()
                .flatten()
                .filter(|((l, r, _, _), _)| l == listener && r.as_deref() == rule)
                .map(|((_, _, i, p), w)| json!({"Type": "CVM", "InstanceId": i, "Port": p, "Weight": w}))
                .collect()
        };
        let out: Vec<Value> = listeners
            .iter()
            .filter(|l| only.is_empty() || only.contains(&l.listener_id))
            .map(|l| {
                let layer7 = l.protocol == "HTTP" || l.protocol == "HTTPS";
                let rules: Vec<Value> = l
                    .rules
                    .iter()
                    .map(|r| {
                        json!({"LocationId": r.location_id, "Domain": r.domain, "Url": r.url,
                        "Targets": targets_of(&l.listener_id, Some(&r.location_id))})
                    })
                    .collect();
                json!({"ListenerId": l.listener_id, "Protocol": l.protocol, "Port": l.port,
                    "Targets": if layer7 { Value::Null } else { targets_of(&l.listener_id, None).into() },
                    "Rules": if layer7 { rules.into() } else { Value::Null }})
            })
            .collect();
        Ok(json!({ "Listeners": out }))
    }

    fn submit(
        &mut self,
        register: bool,
        req: &TargetsRequest,
        request_id: &str,
        due_ms: u64,
        max_targets: usize,
    ) -> Result<Value, V3Error> {
        let listener = self.checked(req, max_targets)?;
        let rule = match (&req.location_id, &req.domain, &req.url) {
            (Some(loc), _, _) => Some(listener.rules.iter().find(|r| &r.location_id == loc)),
            (None, Some(d), Some(u)) => Some(listener.rules.iter().find(|r| &r.domain == d && &r.url == u)),
            _ => None,
        };
        let location = match rule {
            Some(Some(r)) => Some(r.location_id.clone()),
            Some(None) => {
                return Err(error("InvalidParameter.LocationNotFound", "no such rule on the listener"));
            }
            None if listener.protocol == "HTTP" || listener.protocol == "HTTPS" => {
                return Err(error(
                    "MissingParameter",
                    "a layer-7 listener needs LocationId or Domain and Url",
                ));
            }
            None => None,
        };
        let bound = self.targets.entry(req.load_balancer_id.clone()).or_default();
        let mut targets = Vec::new();
        for t in &req.targets {
            let instance =
                t.instance_id.clone().ok_or_else(|| error("MissingParameter", "Targets.InstanceId"))?;
            let key = (req.listener_id.clone(), location.clone(), instance, t.port);
            // Removing a target that is not bound is refused with a plain InvalidParameter, as on the real API.
            if !register && !bound.contains_key(&key) {
                return Err(error("InvalidParameter", format!("{} port {} is not bound", key.2, key.3)));
            }
            targets.push((key, t.weight.unwrap_or(10).min(100)));
        }
        let load_balancer = req.load_balancer_id.clone();
        let task = V3Task { status: 2, due_ms, load_balancer, register, targets, classic: None };
        self.tasks.insert(request_id.to_owned(), task);
        Ok(json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_targets: 20, max_batch_targets: 500, batch_sync: false };

    fn store() -> V3Store {
        V3Store::new(&[
            SeedListener {
                load_balancer_id: "lb-1".into(),
                listener_id: "lbl-tcp".into(),
                protocol: "TCP".into(),
                port: 80,
                rules: vec![],
            },
            SeedListener {
                load_balancer_id: "lb-1".into(),
                listener_id: "lbl-http".into(),
                protocol: "HTTP".into(),
                port: 8080,
                rules: vec![SeedRule {
                    location_id: "loc-1".into(),
                    domain: "a.com".into(),
                    url: "/".into(),
                }],
            },
        ])
    }

    fn targets(store: &mut V3Store) -> Value {
        store
            .execute("DescribeTargets", br#"{"LoadBalancerId":"lb-1"}"#, "r", 0, LIMITS, &Classic::new())
            .unwrap()
    }

    /// A GET's query string is read as the JSON object it flattens.
    #[test]
    fn queries_unflatten_to_json() {
        let v = query_to_json(
            "LoadBalancerId=lb-1&ListenerIds.0=lbl-1&ListenerIds.1=lbl-2&Targets.0.Port=80&Targets.0.InstanceId=ins-a&Name=a+b%26c",
        );
        assert_eq!(
            v,
            json!({"LoadBalancerId": "lb-1", "ListenerIds": ["lbl-1", "lbl-2"],
                "Targets": [{"Port": 80, "InstanceId": "ins-a"}], "Name": "a b&c"})
        );
    }

    /// ModifyTargetWeight changes the weight of bound targets when its task ends, and refuses unbound ones.
    #[test]
    fn weights_change_when_the_task_ends() {
        let mut s = store();
        let reg = br#"{"LoadBalancerId":"lb-1","ListenerId":"lbl-tcp","Targets":[{"Port":80,"InstanceId":"ins-a"}]}"#;
        s.execute("RegisterTargets", reg, "t1", 0, LIMITS, &Classic::new()).unwrap();
        s.finish_due(1, || false);
        let zero = br#"{"LoadBalancerId":"lb-1","ListenerId":"lbl-tcp","Weight":0,"Targets":[{"Port":80,"InstanceId":"ins-a"}]}"#;
        s.execute("ModifyTargetWeight", zero, "w1", 10, LIMITS, &Classic::new()).unwrap();
        assert!(s.busy("lb-1", 5), "a write runs");
        assert_eq!(s.view()["lb-1"][0].weight, 10, "not before the task ends");
        s.finish_due(10, || false);
        assert_eq!(s.view()["lb-1"][0].weight, 0);
        let other = br#"{"LoadBalancerId":"lb-1","ListenerId":"lbl-tcp","Weight":0,"Targets":[{"Port":81,"InstanceId":"ins-a"}]}"#;
        let refused = s.execute("ModifyTargetWeight", other, "w2", 0, LIMITS, &Classic::new());
        assert_eq!(refused.unwrap_err().code, "InvalidParameter");
    }

    /// Listeners are seeded from the command line in one compact form.
    #[test]
    fn listeners_parse_from_the_command_line() {
        let l: SeedListener = "lb-1/lbl-web=http:80,loc-1=a.example/,loc-2=b.example/api".parse().unwrap();
        assert_eq!((l.protocol.as_str(), l.port, l.rules.len()), ("HTTP", 80, 2));
        assert_eq!((l.rules[1].domain.as_str(), l.rules[1].url.as_str()), ("b.example", "/api"));
        assert!("lb-1=TCP:80".parse::<SeedListener>().is_err());
        assert!("lb-1/lbl-1=TCP".parse::<SeedListener>().is_err());
    }

    /// A batch call applies the targets of good listeners and names the others in FailListenerIdSet; in the
    /// synchronous mode it applies at once and hands out no task.
    #[test]
    fn batch_calls_fail_per_listener_and_may_be_synchronous() {
        let mut s = store();
        s.fail_listeners.insert("lbl-tcp".into());
        let body = br#"{"LoadBalancerId":"lb-1","Targets":[
            {"ListenerId":"lbl-tcp","Port":80,"InstanceId":"ins-a"},
            {"ListenerId":"lbl-http","LocationId":"loc-1","Port":80,"InstanceId":"ins-a"},
            {"ListenerId":"lbl-gone","Port":80,"InstanceId":"ins-a"}]}"#;
        let answer = s.execute("BatchRegisterTargets", body, "b1", 0, LIMITS, &Classic::new()).unwrap();
        assert_eq!(answer["FailListenerIdSet"], json!(["lbl-gone", "lbl-tcp"]));
        s.finish_due(1, || false);
        let bound: Vec<_> = s.view()["lb-1"].iter().map(|t| t.listener_id.clone()).collect();
        assert_eq!(bound, ["lbl-http"], "only the good listener's target");
        let sync = Limits { batch_sync: true, ..LIMITS };
        let dereg = br#"{"LoadBalancerId":"lb-1","Targets":[{"ListenerId":"lbl-http","LocationId":"loc-1","Port":80,"InstanceId":"ins-a"}]}"#;
        s.execute("BatchDeregisterTargets", dereg, "b2", 0, sync, &Classic::new()).unwrap();
        assert!(s.view()["lb-1"].is_empty(), "applied at once");
        let unknown = s.execute("DescribeTaskStatus", br#"{"TaskId":"b2"}"#, "q", 0, LIMITS, &Classic::new());
        assert_eq!(unknown.unwrap_err().code, "InvalidParameter", "no task for a synchronous call");
    }

    /// A Register task binds its targets only once it succeeds; Deregister of an unbound target is refused with a
    /// plain InvalidParameter; an unknown listener or rule has its own code.
    #[test]
    fn writes_are_tasks_and_errors_have_their_codes() {
        let mut s = store();
        let body = br#"{"LoadBalancerId":"lb-1","ListenerId":"lbl-http","LocationId":"loc-1","Targets":[{"Port":30080,"InstanceId":"ins-a"}]}"#;
        s.execute("RegisterTargets", body, "t1", 100, LIMITS, &Classic::new()).unwrap();
        let task = |s: &mut V3Store, id: &str| {
            s.execute(
                "DescribeTaskStatus",
                format!(r#"{{"TaskId":"{id}"}}"#).as_bytes(),
                "q",
                0,
                LIMITS,
                &Classic::new(),
            )
            .unwrap()
        };
        assert_eq!(task(&mut s, "t1")["Status"], 2);
        assert!(targets(&mut s)["Listeners"][1]["Rules"][0]["Targets"].as_array().unwrap().is_empty());
        assert!(s.finish_due(100, || false).is_empty(), "no classic change");
        assert_eq!(task(&mut s, "t1")["Status"], 0);
        assert_eq!(targets(&mut s)["Listeners"][1]["Rules"][0]["Targets"][0]["InstanceId"], "ins-a");

        let unbound = br#"{"LoadBalancerId":"lb-1","ListenerId":"lbl-tcp","Targets":[{"Port":1,"InstanceId":"ins-a"}]}"#;
        assert_eq!(
            s.execute("DeregisterTargets", unbound, "t2", 0, LIMITS, &Classic::new()).unwrap_err().code,
            "InvalidParameter"
        );
        let lost =
            br#"{"LoadBalancerId":"lb-1","ListenerId":"lbl-x","Targets":[{"Port":1,"InstanceId":"ins-a"}]}"#;
        assert_eq!(
            s.execute("RegisterTargets", lost, "t3", 0, LIMITS, &Classic::new()).unwrap_err().code,
            "InvalidParameter.ListenerIdNotFound"
        );
        let no_rule = br#"{"LoadBalancerId":"lb-1","ListenerId":"lbl-http","LocationId":"loc-9","Targets":[{"Port":1,"InstanceId":"ins-a"}]}"#;
        assert_eq!(
            s.execute("RegisterTargets", no_rule, "t4", 0, LIMITS, &Classic::new()).unwrap_err().code,
            "InvalidParameter.LocationNotFound"
        );
        let no_lb = br#"{"LoadBalancerId":"lb-9","ListenerId":"lbl-tcp","Targets":[{"Port":1,"InstanceId":"ins-a"}]}"#;
        assert_eq!(
            s.execute("RegisterTargets", no_lb, "t5", 0, LIMITS, &Classic::new()).unwrap_err().code,
            "InvalidParameter.LBIdNotFound"
        );
    }

    /// Classic load balancers are served from the API 2.0 state: listed with Forward 0, their targets read,
    /// and a finished task's change handed back for that state.
    #[test]
    fn classic_load_balancers_go_through_the_classical_actions() {
        let mut s = store();
        let classic: Classic = [("lb-c".to_owned(), [("ins-a".to_owned(), 10)].into())].into();
        let lbs = s.execute("DescribeLoadBalancers", b"{}", "r", 0, LIMITS, &classic).unwrap();
        assert_eq!(lbs["LoadBalancerSet"][1], json!({"LoadBalancerId": "lb-c", "Forward": 0}));
        let read = s.execute(
            "DescribeClassicalLBTargets",
            br#"{"LoadBalancerId":"lb-c"}"#,
            "r",
            0,
            LIMITS,
            &classic,
        );
        assert_eq!(read.unwrap()["Targets"][0]["InstanceId"], "ins-a");
        let body = br#"{"LoadBalancerId":"lb-c","Targets":[{"InstanceId":"ins-b","Weight":5}]}"#;
        s.execute("RegisterTargetsWithClassicalLB", body, "t1", 10, LIMITS, &classic).unwrap();
        let gone = br#"{"LoadBalancerId":"lb-c","InstanceIds":["ins-z"]}"#;
        let refused = s.execute("DeregisterTargetsFromClassicalLB", gone, "t2", 10, LIMITS, &classic);
        assert_eq!(refused.unwrap_err().code, "InvalidParameter");
        assert_eq!(s.finish_due(10, || false), [("lb-c".to_owned(), true, vec![("ins-b".to_owned(), 5)])]);
        let listeners = s
            .execute("DescribeListeners", br#"{"LoadBalancerId":"lb-1"}"#, "r", 0, LIMITS, &classic)
            .unwrap();
        assert_eq!(listeners["Listeners"][1]["Rules"][0]["LocationId"], "loc-1");
    }

    /// The signature check answers with the documented codes.

    #[test]
    fn authentication_codes() {
        let creds = Credentials::new("AKID1", "key", None);
        let body = br#"{"LoadBalancerId":"lb-1"}"#;
        let sign = |key: &str, ts: i64| {
            tc3::sign(key, &Tc3Input::json_post("127.0.0.1:9", "clb", body, ts)).authorization("AKID1")
        };
        let ok = sign("key", 1_700_000_000);
        let request = |auth: &str, ts: &'static str, body: &'static [u8]| Signed {
            authorization: Some(Box::leak(auth.to_owned().into_boxed_str())),
            timestamp: Some(ts),
            token: None,
            method: "POST",
            query: "",
            host: "127.0.0.1:9",
            content_type: "application/json",
            body,
        };
        let now = 1_700_000_010;
        assert_eq!(authenticate(&creds, &request(&ok, "1700000000", body), now, 300), Ok(()));
        let code = |r: Result<(), V3Error>| r.unwrap_err().code;
        assert_eq!(
            code(authenticate(&creds, &request(&sign("bad", 1_700_000_000), "1700000000", body), now, 300)),
            "AuthFailure.SignatureFailure"
        );
        assert_eq!(
            code(authenticate(
                &creds,
                &request(&ok, "1700000000", br#"{"LoadBalancerId":"lb-2"}"#),
                now,
                300
            )),
            "AuthFailure.SignatureFailure"
        );
        assert_eq!(
            code(authenticate(&creds, &request(&ok, "1700000000", body), now + 400, 300)),
            "AuthFailure.SignatureExpire"
        );
        let other = Credentials::new("AKID2", "key", None);
        assert_eq!(
            code(authenticate(&other, &request(&ok, "1700000000", body), now, 300)),
            "AuthFailure.SecretIdNotFound"
        );
        let with_token = Credentials::new("AKID1", "key", Some("tok".into()));
        assert_eq!(
            code(authenticate(&with_token, &request(&ok, "1700000000", body), now, 300)),
            "AuthFailure.TokenFailure"
        );
    }
}
