//! [`Cloud`] over CLB API 3.0: application CLBs through the listener actions (batched across listeners up to 500
//! targets a call, per listener in twenties where the batch call is refused), classic CLBs through the
//! `*ClassicalLB*` actions. Removals the API answers ambiguously are settled by reading the targets again.

use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt, future::BoxFuture};
use serde_json::json;
use tracing::{debug, warn};

use super::{
    cloud::{
        Batch, Cloud, CloudError, Kind, Listener, LoadBalancerView, Placement, Rule, Submitted, Target,
        TaskState,
    },
    v3::{
        self, Action, BatchResponse, BatchTarget, ClassicalTargetsResponse, DescribeLoadBalancersResponse,
        DescribeTargetsResponse, Empty, ErrorClass, TargetsRequest, TaskStatus, TaskStatusResponse,
    },
    v3_client::{V3CallError, V3Client},
};

/// API 3.0 for one region and one set of credentials.
pub struct V3Cloud {
    client: V3Client,
}

impl V3Cloud {
    /// Wraps a client (its region and credentials set).
    pub fn new(client: V3Client) -> Self {
        Self { client }
    }

    /// Registers or deregisters targets on listeners: batch calls of up to 500, split per call where the API
    /// names failed listeners, and per-listener calls of up to 20 where the batch call is not supported.
    async fn listeners(&self, lb: &str, targets: &[Target], weight: Option<u32>) -> Vec<Batch> {
        let register = weight.is_some();
        let action = if register { Action::BatchRegisterTargets } else { Action::BatchDeregisterTargets };
        let mut out = Vec::new();
        for chunk in targets.chunks(v3::MAX_BATCH_TARGETS) {
            let items: Vec<BatchTarget> = chunk
                .iter()
                .filter_map(|t| {
                    let at = t.at.as_ref()?;
                    Some(BatchTarget {
                        listener_id: at.listener_id.clone(),
                        port: at.port,
                        instance_id: Some(t.instance.clone()),
                        eni_ip: None,
                        weight,
                        location_id: at.location_id.clone(),
                    })
                })
                .collect();
            let request = json!({"LoadBalancerId": lb, "Targets": items});
            match self.client.call::<BatchResponse>(action, &request).await {
                Ok((request_id, answer)) => {
                    let failed: BTreeSet<String> =
                        answer.fail_listener_id_set.unwrap_or_default().into_iter().collect();
                    let (bad, good): (Vec<Target>, Vec<Target>) = chunk
                        .iter()
                        .cloned()
                        .partition(|t| t.at.as_ref().is_some_and(|a| failed.contains(&a.listener_id)));
                    if !good.is_empty() {
                        out.push(Batch { targets: good, result: Ok(Submitted::Task(request_id.clone())) });
                    }
                    if !bad.is_empty() {
                        let message = answer.message.unwrap_or_default();
                        warn!(lb, ?failed, %message, ?action, "Some listeners of a batch call failed");
                        out.extend(self.failed_listeners(lb, bad, register, action, &failed, &message).await);
                    }
                }
                Err(e) if is_unsupported(&e) => {
                    debug!(lb, ?action, error = %e, "Batch call refused; calling per listener");
                    out.extend(self.per_listener(lb, chunk, weight).await);
                }
                Err(e) => out.extend(self.failed(lb, chunk.to_vec(), register, e).await),
            }
        }
        out
    }

    /// Targets of listeners a batch call named as failed: a deregistration is settled by reading them again
    /// (a listener or target no longer there is already gone); the rest failed.
    async fn failed_listeners(
        &self,
        lb: &str,
        targets: Vec<Target>,
        register: bool,
        action: Action,
        failed: &BTreeSet<String>,
        message: &str,
    ) -> Vec<Batch> {
        let listeners: Vec<String> = failed.iter().cloned().collect();
        let error = || {
            CloudError::Listener(format!(
                "{action:?} failed for listener(s) {}: {message}",
                listeners.join(", ")
            ))
        };
        if register {
            return vec![Batch { targets, result: Err(error()) }];
        }
        let mut out = Vec::new();
        match self.targets(lb, &listeners).await {
            Ok(bound) => {
                let (still, gone): (Vec<Target>, Vec<Target>) =
                    targets.into_iter().partition(|t| bound.contains(t));
                if !gone.is_empty() {
                    out.push(Batch { targets: gone, result: Ok(Submitted::AlreadyGone) });
                }
                if !still.is_empty() {
                    out.push(Batch { targets: still, result: Err(error()) });
                }
            }
            Err(_) => out.push(Batch { targets, result: Err(error()) }),
        }
        out
    }

    /// Per-listener (and per-rule) RegisterTargets / DeregisterTargets in twenties.
    async fn per_listener(&self, lb: &str, targets: &[Target], weight: Option<u32>) -> Vec<Batch> {
        let action = if weight.is_some() { Action::RegisterTargets } else { Action::DeregisterTargets };
        let mut out = Vec::new();
        for (rule, group) in by_rule(targets) {
            for chunk in group.chunks(v3::MAX_TARGETS) {
                let request = targets_request(lb, &rule, chunk, weight, None);
                out.extend(self.write(lb, action, &request, chunk, weight.is_some()).await);
            }
        }
        out
    }

    /// A classic CLB's RegisterTargetsWithClassicalLB / DeregisterTargetsFromClassicalLB in twenties.
    async fn classic(&self, lb: &str, targets: &[Target], weight: Option<u32>) -> Vec<Batch> {
        let mut out = Vec::new();
        for chunk in targets.chunks(v3::MAX_TARGETS) {
            let ids = chunk.iter().map(|t| t.instance.as_str());
            let (action, request) = match weight {
                Some(w) => {
                    let items: Vec<_> = ids.map(|i| json!({"InstanceId": i, "Weight": w})).collect();
                    (Action::RegisterTargetsWithClassicalLB, json!({"LoadBalancerId": lb, "Targets": items}))
                }
                None => {
                    let items: Vec<&str> = ids.collect();
                    (
                        Action::DeregisterTargetsFromClassicalLB,
                        json!({"LoadBalancerId": lb, "InstanceIds": items}),
                    )
                }
            };
            out.extend(self.write(lb, action, &request, chunk, weight.is_some()).await);
        }
        out
    }

    /// One asynchronous write whose RequestId is the task.
    async fn write(
        &self,
        lb: &str,
        action: Action,
        request: &impl serde::Serialize,
        targets: &[Target],
        register: bool,
    ) -> Vec<Batch> {
        match self.client.call::<Empty>(action, request).await {
            Ok((request_id, _)) => {
                vec![Batch { targets: targets.to_vec(), result: Ok(Submitted::Task(request_id)) }]
            }
            Err(e) => self.failed(lb, targets.to_vec(), register, e).await,
        }
    }

    /// A write that failed: for a deregistration, a missing load balancer, listener or rule means nothing is left
    /// to remove, and a plain `InvalidParameter` (what removing an unbound target answers) is settled by reading
    /// the targets again: those no longer bound are gone, the others are tried once more.
    async fn failed(&self, lb: &str, targets: Vec<Target>, register: bool, e: V3CallError) -> Vec<Batch> {
        match e.class() {
            ErrorClass::Gone if !register => vec![Batch { targets, result: Ok(Submitted::AlreadyGone) }],
            ErrorClass::Ambiguous if !register => {
                let listeners: Vec<String> = listeners_of(&targets);
                let bound = match self.targets(lb, &listeners).await {
                    Ok(bound) => bound,
                    Err(_) => return vec![Batch { targets, result: Err(e.into()) }],
                };
                let (still, gone): (Vec<Target>, Vec<Target>) =
                    targets.into_iter().partition(|t| bound.contains(t));
                let mut out = Vec::new();
                if !gone.is_empty() {
                    out.push(Batch { targets: gone, result: Ok(Submitted::AlreadyGone) });
                }
                if !still.is_empty() {
                    // The rest is really bound: one more call with only those (no further settling).
                    let again = match still[0].at.is_some() {
                        true => self.per_listener_once(lb, &still).await,
                        false => self.classic_once(lb, &still).await,
                    };
                    out.extend(again);
                }
                out
            }
            _ => vec![Batch { targets, result: Err(e.into()) }],
        }
    }

    /// Deregisters per listener, once, reporting errors as they are.
    async fn per_listener_once(&self, lb: &str, targets: &[Target]) -> Vec<Batch> {
        let mut out = Vec::new();
        for t in targets {
            let Some(at) = &t.at else { continue };
            let rule = (at.listener_id.clone(), at.location_id.clone());
            let request = targets_request(lb, &rule, std::slice::from_ref(t), None, None);
            let result = self.client.call::<Empty>(Action::DeregisterTargets, &request).await;
            out.push(Batch {
                targets: vec![t.clone()],
                result: result.map(|(id, _)| Submitted::Task(id)).map_err(Into::into),
            });
        }
        out
    }

    /// Deregisters from a classic CLB, once, reporting errors as they are.
    async fn classic_once(&self, lb: &str, targets: &[Target]) -> Vec<Batch> {
        let ids: Vec<&str> = targets.iter().map(|t| t.instance.as_str()).collect();
        let request = json!({"LoadBalancerId": lb, "InstanceIds": ids});
        let result = self.client.call::<Empty>(Action::DeregisterTargetsFromClassicalLB, &request).await;
        vec![Batch {
            targets: targets.to_vec(),
            result: result.map(|(id, _)| Submitted::Task(id)).map_err(Into::into),
        }]
    }

    async fn submit(&self, lb: &str, targets: &[Target], weight: Option<u32>) -> Vec<Batch> {
        let (application, classic): (Vec<Target>, Vec<Target>) =
            targets.iter().cloned().partition(|t| t.at.is_some());
        let mut out = Vec::new();
        if !application.is_empty() {
            out.extend(self.listeners(lb, &application, weight).await);
        }
        if !classic.is_empty() {
            out.extend(self.classic(lb, &classic, weight).await);
        }
        out
    }
}

/// Whether the API refused a batch call as such (not its content): then the per-listener calls are used.
fn is_unsupported(e: &V3CallError) -> bool {
    matches!(e, V3CallError::Api { error, .. } if error.code.starts_with("UnsupportedOperation") || error.code == "InvalidAction")
}

/// A RegisterTargets / DeregisterTargets / ModifyTargetWeight request for `targets` of one listener (and rule):
/// `each` is every target's own weight, `all` the request's.
fn targets_request(
    lb: &str,
    (listener_id, location_id): &(String, Option<String>),
    targets: &[Target],
    each: Option<u32>,
    all: Option<u32>,
) -> TargetsRequest {
    let target = |t: &Target| {
        let port = t.at.as_ref()?.port;
        Some(v3::Target { port, instance_id: Some(t.instance.clone()), eni_ip: None, weight: each })
    };
    TargetsRequest {
        load_balancer_id: lb.to_owned(),
        listener_id: listener_id.clone(),
        targets: targets.iter().filter_map(target).collect(),
        location_id: location_id.clone(),
        domain: None,
        url: None,
        weight: all,
    }
}

/// Listener targets grouped by (listener, rule), for the calls that take one listener or rule at a time.
fn by_rule(targets: &[Target]) -> BTreeMap<(String, Option<String>), Vec<Target>> {
    let mut groups: BTreeMap<(String, Option<String>), Vec<Target>> = BTreeMap::new();
    for t in targets {
        if let Some(at) = &t.at {
            groups.entry((at.listener_id.clone(), at.location_id.clone())).or_default().push(t.clone());
        }
    }
    groups
}

fn listeners_of(targets: &[Target]) -> Vec<String> {
    let set: BTreeSet<String> =
        targets.iter().filter_map(|t| Some(t.at.as_ref()?.listener_id.clone())).collect();
    set.into_iter().collect()
}

/// The CVM targets of DescribeTargets' answer, keyed as the operator owns them.
fn targets_of(answer: DescribeTargetsResponse) -> BTreeSet<Target> {
    let mut out = BTreeSet::new();
    let mut add = |listener: &str, location: Option<&str>, backends: Option<Vec<v3::Backend>>| {
        for b in backends.into_iter().flatten() {
            if let (Some(instance), Some(port)) = (b.instance_id, b.port) {
                let at = Placement {
                    listener_id: listener.to_owned(),
                    location_id: location.map(str::to_owned),
                    port,
                };
                out.insert(Target { instance, at: Some(at) });
            }
        }
    };
    for l in answer.listeners.into_iter().flatten() {
        add(&l.listener_id, None, l.targets);
        for r in l.rules.into_iter().flatten() {
            add(&l.listener_id, Some(&r.location_id), r.targets);
        }
    }
    out
}

impl Cloud for V3Cloud {
    fn api(&self) -> &'static str {
        "v3"
    }

    fn describe(&self, lb: &str) -> BoxFuture<'_, Result<Option<LoadBalancerView>, CloudError>> {
        let lb = lb.to_owned();
        async move {
            let request = json!({"LoadBalancerIds": [lb]});
            let (_, answer) = self
                .client
                .call::<DescribeLoadBalancersResponse>(Action::DescribeLoadBalancers, &request)
                .await?;
            let Some(found) =
                answer.load_balancer_set.into_iter().flatten().find(|l| l.load_balancer_id == lb)
            else {
                return Ok(None);
            };
            if found.forward != Some(1) {
                return Ok(Some(LoadBalancerView { kind: Kind::Classic, listeners: Vec::new() }));
            }
            let request = json!({"LoadBalancerId": lb});
            let (_, answer) =
                self.client.call::<DescribeTargetsResponse>(Action::DescribeTargets, &request).await?;
            let listeners = answer
                .listeners
                .into_iter()
                .flatten()
                .map(|l| Listener {
                    listener_id: l.listener_id,
                    protocol: l.protocol,
                    rules: (l.rules.into_iter().flatten())
                        .map(|r| Rule { location_id: r.location_id, domain: r.domain, url: r.url })
                        .collect(),
                })
                .collect();
            Ok(Some(LoadBalancerView { kind: Kind::Application, listeners }))
        }
        .boxed()
    }

    fn targets<'a>(
        &'a self,
        lb: &'a str,
        listeners: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeSet<Target>, CloudError>> {
        async move {
            if listeners.is_empty() {
                let request = json!({"LoadBalancerId": lb});
                let (_, answer) = self
                    .client
                    .call::<ClassicalTargetsResponse>(Action::DescribeClassicalLBTargets, &request)
                    .await?;
                let ids = answer.targets.into_iter().flatten().filter_map(|b| b.instance_id);
                return Ok(ids.map(Target::classic).collect());
            }
            let request = json!({"LoadBalancerId": lb, "ListenerIds": listeners});
            let (_, answer) =
                self.client.call::<DescribeTargetsResponse>(Action::DescribeTargets, &request).await?;
            Ok(targets_of(answer))
        }
        .boxed()
    }

    fn register<'a>(&'a self, lb: &'a str, targets: &'a [Target], weight: u32) -> BoxFuture<'a, Vec<Batch>> {
        self.submit(lb, targets, Some(weight.min(100))).boxed()
    }

    fn deregister<'a>(&'a self, lb: &'a str, targets: &'a [Target]) -> BoxFuture<'a, Vec<Batch>> {
        self.submit(lb, targets, None).boxed()
    }

    fn set_weight<'a>(
        &'a self,
        lb: &'a str,
        targets: &'a [Target],
        weight: u32,
    ) -> BoxFuture<'a, Vec<Batch>> {
        async move {
            let (listed, classic): (Vec<Target>, Vec<Target>) =
                targets.iter().cloned().partition(|t| t.at.is_some());
            let mut out = Vec::new();
            if !classic.is_empty() {
                let message = "classic CLBs have no weight call under CLB API 3.0".to_owned();
                out.push(Batch { targets: classic, result: Err(CloudError::Unsupported(message)) });
            }
            for (rule, group) in by_rule(&listed) {
                for chunk in group.chunks(v3::MAX_TARGETS) {
                    let request = targets_request(lb, &rule, chunk, None, Some(weight.min(100)));
                    let result = self.client.call::<Empty>(Action::ModifyTargetWeight, &request).await;
                    let result = result.map(|(id, _)| Submitted::Task(id)).map_err(Into::into);
                    out.push(Batch { targets: chunk.to_vec(), result });
                }
            }
            out
        }
        .boxed()
    }

    fn task<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<TaskState, CloudError>> {
        async move {
            let request = json!({"TaskId": id});
            match self.client.call::<TaskStatusResponse>(Action::DescribeTaskStatus, &request).await {
                Ok((_, answer)) => Ok(match answer.state() {
                    Some(TaskStatus::Succeeded) => TaskState::Succeeded,
                    Some(TaskStatus::Failed) => TaskState::Failed,
                    Some(TaskStatus::Running) => TaskState::Running,
                    // A status the documentation does not list: look again later rather than guess.
                    None => TaskState::Running,
                }),
                // UNVERIFIED what the API answers for an id that is no task (a synchronous batch call):
                // a parameter error is read as "unknown", and the caller confirms by reading the targets.
                Err(e @ V3CallError::Api { .. })
                    if matches!(
                        e.class(),
                        ErrorClass::Ambiguous | ErrorClass::Invalid | ErrorClass::Gone
                    ) =>
                {
                    debug!(task = id, error = %e, "DescribeTaskStatus does not know the task");
                    Ok(TaskState::Unknown)
                }
                Err(e) => Err(e.into()),
            }
        }
        .boxed()
    }
}
