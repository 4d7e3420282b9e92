//! The one place that sequences I/O for a binding: read the cluster, poll and submit CLB tasks, write the status.
//!
//! Every decision is made by the pure modules ([`membership`], [`plan`], [`status`]); this file only feeds them
//! and carries out what they say, in the order crash safety needs: a task's requestId reaches the status before
//! anything else happens.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
    },
};
use tracing::{debug, info, warn};

use super::{
    Context,
    error::{Error, Result},
    index::Interest,
    membership, plan,
    slim::SlimPod,
    status::{self, Problem, reasons},
};
use crate::{
    api::{
        BackendState, BackendStatus, ClbBackendBinding, ClbBackendBindingStatus, DEREGISTERED_AT_ANNOTATION,
        DeletionPolicy, FINALIZER, FORCE_FINALIZE_ANNOTATION, MANAGER, TaskAction, TaskRecord,
    },
    clb::{self, ClbClient, ClbError, Credentials, Submitted},
    metrics::BindingCounts,
};

/// How long a reconcile waits for the pod cache to list a namespace new to it before it gives up and retries.
const POD_LIST_WAIT: Duration = Duration::from_secs(30);

/// Wait before looking again at a binding whose credentials are missing: they are usually fixed by hand.
const CREDENTIALS_RETRY: Duration = Duration::from_secs(30);

/// Reconciles one binding: the finalizer helper routes live bindings to [`Sync::apply`] and deleting ones to
/// [`Sync::cleanup`].
pub async fn reconcile(binding: Arc<ClbBackendBinding>, ctx: Arc<Context>) -> Result<Action> {
    let ns = binding.namespace().ok_or(Error::Malformed("binding without a namespace"))?;
    let api: Api<ClbBackendBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let key = ObjectRef::from_obj(&*binding);
    let started = std::time::Instant::now();
    // The controller starts with its bindings listed, but the node and pod caches fill on their own streams;
    // acting on a partial list would deregister healthy instances.
    ctx.caches_synced.subscribe().wait_for(|synced| *synced).await.map_err(|_| Error::CacheClosed)?;
    let result = finalizer(&api, FINALIZER, binding, |event| async {
        match event {
            Finalizer::Apply(b) => Sync::new(b, api.clone(), &ctx).apply().await,
            Finalizer::Cleanup(b) => Sync::new(b, api.clone(), &ctx).cleanup().await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.failures_reset(&key);
    }
    // A deletion waiting for its tasks is not a failure.
    let failure = result.as_ref().err().filter(|e| e.retry_after().is_none()).map(Error::kind);
    ctx.metrics.reconciled(started.elapsed(), failure);
    debug!(binding = %key, elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "Reconciled");
    result
}

/// Decides when to retry a failed reconcile: the error's own delay if it has one (a pending deletion), else an
/// exponential per-binding backoff, so that a broken binding does not hammer the API servers.
pub fn error_policy(binding: Arc<ClbBackendBinding>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Some(delay) = error.retry_after() {
        debug!(binding = %binding.name_any(), %error, "Waiting");
        return Action::requeue(delay);
    }
    let delay = ctx.failure_backoff(&ObjectRef::from_obj(&*binding));
    warn!(binding = %binding.name_any(), namespace = ?binding.namespace(), kind = error.kind(), %error,
        retry_in_ms = delay.as_millis() as u64, "Reconcile failed");
    Action::requeue(delay)
}

/// One reconcile of one binding: the status being built and what is known so far.
struct Sync<'a> {
    ctx: &'a Context,
    binding: Arc<ClbBackendBinding>,
    api: Api<ClbBackendBinding>,
    key: ObjectRef<ClbBackendBinding>,
    status: ClbBackendBindingStatus,
    /// The status as last written (or read), to skip writes that change nothing.
    written: ClbBackendBindingStatus,
    problem: Option<Problem>,
    now: Timestamp,
    /// When membership changes without an event (a NotReady node reaching its limit).
    recheck_after: Option<Duration>,
    /// Nodes this reconcile stopped owning (their Deregister finished): candidates for the drained mark.
    released_nodes: BTreeSet<String>,
    /// Nodes this reconcile (re)claimed: their drained mark goes.
    claimed_nodes: BTreeSet<String>,
    /// How long submissions wait for a burst of changes to settle.
    settle_wait: Option<Duration>,
}

impl<'a> Sync<'a> {
    fn new(binding: Arc<ClbBackendBinding>, api: Api<ClbBackendBinding>, ctx: &'a Context) -> Self {
        let key = ObjectRef::from_obj(&*binding);
        let status = ctx.current_status(&binding);
        Self {
            ctx,
            written: status.clone(),
            status,
            binding,
            api,
            key,
            problem: None,
            now: Timestamp::now(),
            recheck_after: None,
            released_nodes: BTreeSet::new(),
            claimed_nodes: BTreeSet::new(),
            settle_wait: None,
        }
    }

    fn namespace(&self) -> String {
        self.binding.namespace().unwrap_or_default()
    }

    /// Brings a live binding's backends in line with its membership.
    async fn apply(mut self) -> Result<Action> {
        let spec = &self.binding.spec;
        let nodes = self.ctx.nodes.state();
        let pod_targeted = spec.targets.pod_selector.is_some();
        let pods = if pod_targeted { self.pods().await? } else { self.no_pods() };
        let membership = match membership::compute(
            spec,
            &self.namespace(),
            nodes.iter().map(|n| &n.0),
            pods.iter().map(|p| p.as_ref()),
            self.now,
        ) {
            Ok(m) => m,
            Err(e) => {
                self.problem = Some(Problem { reason: reasons::INVALID_SPEC, message: e.to_string() });
                return self.finish(&BTreeSet::new(), false).await;
            }
        };
        self.recheck_after = membership.recheck_after;
        let mut looked_at = membership.nodes.clone();
        looked_at.extend(self.status.backends.iter().filter_map(|b| b.node.clone()));
        self.ctx.index.update(self.key.clone(), Interest::of(spec, &self.namespace(), looked_at.clone()));
        for node in &membership.missing_instance_id {
            let note = format!(
                "node {node} has no CVM instance ID (annotation clb.tke.dev/instance-id, label \
                 cloud.tencent.com/node-instance-id or providerID qcloud:///<zone>/<ins-id>); it is skipped"
            );
            self.ctx
                .publish_once(&self.binding, EventType::Warning, "InstanceIdMissing", "Skip", &note)
                .await;
        }

        let clb = match self.clb().await? {
            Ok(clb) => clb,
            Err(problem) => {
                self.ctx
                    .publish_once(
                        &self.binding,
                        EventType::Warning,
                        problem.reason,
                        "Authenticate",
                        &problem.message,
                    )
                    .await;
                self.problem = Some(problem);
                return self.finish(&desired_ids(&membership), false).await;
            }
        };
        self.poll_tasks(&clb).await;

        let plan = plan::plan(
            &self.status.backends,
            &membership,
            |n| self.ctx.nodes.get(&ObjectRef::new(n)).is_some(),
            pod_targeted,
        );
        let mut pending = false;
        // A burst of changes (a mass drain) is submitted once it settles, as a few full batches.
        // (A wait of a few tens of milliseconds is not reported as pending, to spare a status write.)
        if !plan.deregister.is_empty() || !plan.join.is_empty() {
            self.settle_wait = self.ctx.settle_wait(&self.key, &looked_at);
        }
        // Removals first: a backend going away must stop receiving traffic before anything else is done.
        if !plan.deregister.is_empty() && self.settle_wait.is_none() {
            if self.may_submit(TaskAction::Deregister) {
                self.deregister(&clb, plan.deregister).await?;
            } else {
                pending = true;
            }
        }
        if !plan.join.is_empty() && self.problem.is_none() && self.settle_wait.is_none() {
            if self.may_submit(TaskAction::Register) {
                self.join(&clb, plan.join).await?;
            } else {
                pending = true;
            }
        }
        if self.problem.is_none() {
            self.problem = self.failed_task_problem();
        }
        self.finish(&desired_ids(&membership), pending).await
    }

    /// Releases a deleting binding: deregisters what it owns (policy Deregister), leaves it (Retain), or lets go
    /// at once when forced. Returns an error while it must wait, which keeps the finalizer.
    async fn cleanup(mut self) -> Result<Action> {
        let owned: Vec<String> = self.status.backends.iter().map(|b| b.instance_id.clone()).collect();
        let lb = self.binding.spec.load_balancer_id.clone();
        let forced = self.binding.annotations().get(FORCE_FINALIZE_ANNOTATION).is_some_and(|v| v == "true");
        if forced {
            let note = if owned.is_empty() {
                format!(
                    "released by {FORCE_FINALIZE_ANNOTATION} without touching {lb}; nothing was left behind"
                )
            } else {
                format!(
                    "released by {FORCE_FINALIZE_ANNOTATION} without touching {lb}; left behind {} backend(s): {}",
                    owned.len(),
                    owned.join(", ")
                )
            };
            self.ctx.publish(&self.binding, EventType::Warning, "ForceFinalized", "Finalize", &note).await;
            return Ok(self.released());
        }
        if self.binding.spec.deletion_policy == DeletionPolicy::Retain || owned.is_empty() {
            if !owned.is_empty() {
                let note = format!(
                    "deletionPolicy Retain: left {} backend(s) on {lb}: {}",
                    owned.len(),
                    owned.join(", ")
                );
                self.ctx.publish(&self.binding, EventType::Normal, "Retained", "Finalize", &note).await;
            }
            return Ok(self.released());
        }
        let clb = match self.clb().await? {
            Ok(clb) => clb,
            Err(problem) => {
                let reason = format!(
                    "{}; set annotation {FORCE_FINALIZE_ANNOTATION}=true to release the binding anyway",
                    problem.message
                );
                self.problem = Some(problem);
                self.finish(&BTreeSet::new(), true).await?;
                return Err(Error::DeletionPending { reason, retry_after: CREDENTIALS_RETRY });
            }
        };
        self.poll_tasks(&clb).await;
        let leaving: Vec<(String, String)> = self
            .status
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Registered)
            .map(|b| (b.instance_id.clone(), "BindingDeleted".to_owned()))
            .collect();
        if !leaving.is_empty() && self.may_submit(TaskAction::Deregister) {
            self.deregister(&clb, leaving).await?;
        }
        if self.status.backends.is_empty() {
            return Ok(self.released());
        }
        if self.problem.is_none() {
            self.problem = self.failed_task_problem();
        }
        self.finish(&BTreeSet::new(), true).await?;
        Err(Error::DeletionPending {
            reason: format!("{} backend(s) still owned on {lb}", self.status.backends.len()),
            retry_after: self.next_delay(true).unwrap_or(CREDENTIALS_RETRY),
        })
    }

    /// The cached pods, once the cache holds a complete list of this binding's namespace: a binding in a
    /// namespace new to the pod cache widens its scope and waits for the new list (acting on a partial one
    /// would deregister healthy pods).
    async fn pods(&self) -> Result<Vec<Arc<SlimPod>>> {
        let ns = self.namespace();
        let scope = &self.ctx.pod_scope;
        let this = BTreeSet::from([ns.clone()]);
        let give_up = tokio::time::Instant::now() + POD_LIST_WAIT;
        loop {
            // Checked on every round: a binding in another namespace going away may compute the scope from
            // the bindings a moment before this one was there.
            if !scope.wants(&ns) {
                scope.want(|| {
                    let mut wanted = self.ctx.pod_namespaces(None);
                    wanted.insert(ns.clone());
                    wanted
                });
            }
            if scope.covered(&this, Duration::from_secs(1)).await {
                return Ok(self.ctx.pods.state());
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(Error::PodCacheListing { namespace: ns });
            }
        }
    }

    /// For a binding that targets nodes: no pods, and if it was the last to target pods in its namespace
    /// (it was changed to nodes), the pod cache lets that namespace go.
    fn no_pods(&self) -> Vec<Arc<SlimPod>> {
        if self.ctx.pod_scope.wants(&self.namespace()) {
            self.ctx.pod_scope.want(|| self.ctx.pod_namespaces(None));
        }
        Vec::new()
    }

    /// Forgets a binding whose finalizer is about to go.
    fn released(&self) -> Action {
        self.ctx.forget(&self.key);
        Action::await_change()
    }

    /// The CLB client for this binding (its region and credentials), or the problem that prevents one.
    async fn clb(&self) -> Result<Result<ClbClient, Problem>> {
        let spec = &self.binding.spec;
        let credentials = match &spec.credentials_secret_ref {
            None => self.ctx.default_credentials.clone().ok_or_else(|| Problem {
                reason: reasons::CREDENTIALS_NOT_FOUND,
                message: "no credentialsSecretRef, and the operator has no credentials of its own \
                          (TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY)"
                    .to_owned(),
            }),
            Some(r) => {
                let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace());
                match secrets.get_opt(&r.name).await {
                    Ok(secret) => credentials_from_secret(secret.as_ref(), &self.namespace(), &r.name),
                    Err(kube::Error::Api(s)) if s.code == 403 => Err(Problem {
                        reason: reasons::CREDENTIALS_NOT_FOUND,
                        message: format!("the operator may not read Secret {}/{}", self.namespace(), r.name),
                    }),
                    Err(e) => return Err(Error::kube("reading the credentials Secret")(e)),
                }
            }
        };
        Ok(credentials.map(|c| self.ctx.clb.with_credentials(c).with_region(&spec.region)))
    }

    /// Polls the running tasks that are due, applying each finished one to the status.
    async fn poll_tasks(&mut self, clb: &ClbClient) {
        for request_id in status::running_tasks(&self.status) {
            if !self.ctx.polls.is_due(request_id) {
                continue;
            }
            let state = match clb.task_result(request_id).await {
                Ok(state) => state,
                Err(e) => {
                    warn!(binding = %self.key, request_id, kind = e.kind(), error = %e, "Polling a CLB task failed");
                    self.problem = Some(problem_from(&e));
                    return;
                }
            };
            let succeeded = match state {
                clb::TaskState::Running => {
                    self.ctx.polls.polled(request_id);
                    continue;
                }
                clb::TaskState::Succeeded => true,
                clb::TaskState::Failed => false,
            };
            self.ctx.polls.finished(request_id);
            self.ctx.deregister_finished(request_id, succeeded);
            let task_nodes = self.nodes_of(|b| b.request_id == Some(request_id));
            let Some((action, ids)) =
                status::task_finished(&mut self.status, request_id, succeeded, self.now)
            else {
                continue;
            };
            let lb = &self.binding.spec.load_balancer_id;
            let (type_, reason, note) = match (action, succeeded) {
                (TaskAction::Deregister, true) => (
                    EventType::Normal,
                    "Deregistered",
                    format!("deregistered {} from {lb} (task {request_id})", ids.join(", ")),
                ),
                (TaskAction::Register, true) => (
                    EventType::Normal,
                    "Registered",
                    format!("registered {} with {lb} (task {request_id})", ids.join(", ")),
                ),
                (action, false) => (
                    EventType::Warning,
                    "TaskFailed",
                    format!(
                        "{action:?} of {} on {lb} failed (task {request_id}); retrying with backoff",
                        ids.join(", ")
                    ),
                ),
            };
            match (action, succeeded) {
                (TaskAction::Deregister, true) => self.released_nodes.extend(task_nodes),
                (TaskAction::Register, true) => self.claimed_nodes.extend(task_nodes),
                _ => {}
            }
            info!(binding = %self.key, request_id, ?action, succeeded, instances = ids.len(), "CLB task finished");
            self.ctx.publish(&self.binding, type_, reason, &format!("{action:?}"), &note).await;
        }
    }

    /// Submits Deregister tasks for `leaving` (instance, reason) and records every requestId at once.
    async fn deregister(&mut self, clb: &ClbClient, leaving: Vec<(String, String)>) -> Result<()> {
        let lb = self.binding.spec.load_balancer_id.clone();
        let ids: Vec<String> = leaving.iter().map(|(i, _)| i.clone()).collect();
        for outcome in clb.deregister(&lb, &ids).await {
            match outcome.result {
                Ok(Submitted::Task { request_id }) => {
                    let batch: Vec<(String, String)> =
                        leaving.iter().filter(|(i, _)| outcome.instance_ids.contains(i)).cloned().collect();
                    info!(binding = %self.key, request_id, instances = batch.len(), "Deregister submitted");
                    let signals = batch.iter().map(|(id, _)| self.signal_seen(id)).collect();
                    self.ctx.deregister_submitted(request_id, signals);
                    status::deregister_submitted(&mut self.status, request_id, &batch, self.now);
                    self.ctx.polls.submitted(request_id);
                }
                Ok(Submitted::AlreadyGone) => {
                    info!(binding = %self.key, instances = ?outcome.instance_ids, "Already gone from the load balancer");
                    let gone = self.nodes_of(|b| outcome.instance_ids.contains(&b.instance_id));
                    self.released_nodes.extend(gone);
                    status::already_gone(&mut self.status, &outcome.instance_ids);
                }
                Err(e) => {
                    warn!(binding = %self.key, kind = e.kind(), error = %e, "Deregister failed");
                    self.problem = Some(problem_from(&e));
                }
            }
        }
        // Crash safety: the requestIds reach the API server before anything else is done.
        self.write_status().await
    }

    /// Adopts joining instances already on the load balancer and submits Register tasks for the rest.
    async fn join(&mut self, clb: &ClbClient, joining: Vec<(String, String)>) -> Result<()> {
        let lb = self.binding.spec.load_balancer_id.clone();
        let on_lb: BTreeSet<String> = match clb.describe_backends(&lb).await {
            Ok(backends) => backends.into_iter().map(|b| b.instance_id).collect(),
            Err(e) => {
                warn!(binding = %self.key, kind = e.kind(), error = %e, "Listing the load balancer's backends failed");
                self.problem = Some(problem_from(&e));
                return Ok(());
            }
        };
        let (adopt, register) = plan::split_join(joining, &on_lb);
        if !adopt.is_empty() {
            info!(binding = %self.key, instances = adopt.len(), "Adopted instances already on the load balancer");
            status::adopted(&mut self.status, &adopt);
            self.claimed_nodes.extend(adopt.iter().map(|(_, node)| node.clone()));
        }
        if !register.is_empty() {
            let weight = u32::try_from(self.binding.spec.weight.clamp(0, 100)).unwrap_or(10);
            let backends: Vec<(String, u32)> = register.iter().map(|(i, _)| (i.clone(), weight)).collect();
            for outcome in clb.register(&lb, &backends).await {
                match outcome.result {
                    Ok(Submitted::Task { request_id }) => {
                        let batch: Vec<(String, String)> = register
                            .iter()
                            .filter(|(i, _)| outcome.instance_ids.contains(i))
                            .cloned()
                            .collect();
                        info!(binding = %self.key, request_id, instances = batch.len(), "Register submitted");
                        status::register_submitted(&mut self.status, request_id, &batch, self.now);
                        self.claimed_nodes.extend(batch.iter().map(|(_, node)| node.clone()));
                        self.ctx.polls.submitted(request_id);
                    }
                    Ok(Submitted::AlreadyGone) => {
                        self.problem = Some(Problem {
                            reason: reasons::LOAD_BALANCER_NOT_FOUND,
                            message: format!("load balancer {lb} does not exist"),
                        });
                    }
                    Err(e) => {
                        warn!(binding = %self.key, kind = e.kind(), error = %e, "Register failed");
                        self.problem = Some(problem_from(&e));
                    }
                }
            }
        }
        if self.status != self.written {
            self.write_status().await?;
        }
        Ok(())
    }

    /// The nodes of the owned backends that match `which`.
    fn nodes_of(&self, which: impl Fn(&BackendStatus) -> bool) -> BTreeSet<String> {
        self.status.backends.iter().filter(|b| which(b)).filter_map(|b| b.node.clone()).collect()
    }

    /// Keeps the nodes' drained mark true: set on a node once no binding owns its CVM any more (after a
    /// deregistration), removed when a binding takes it back. Failures are logged: the mark is a courtesy to
    /// drain tooling, and the next change retries it.
    async fn mark_nodes(&mut self) {
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let claimed = std::mem::take(&mut self.claimed_nodes);
        let released = std::mem::take(&mut self.released_nodes);
        for node in claimed {
            if self.drained_mark(&node).is_some() {
                self.patch_mark(&nodes, &node, None).await;
            }
        }
        for node in released {
            let exists = self.ctx.nodes.get(&ObjectRef::new(&node)).is_some();
            if exists && self.drained_mark(&node).is_none() && !self.node_owned(&node) {
                self.patch_mark(&nodes, &node, Some(self.now.to_string())).await;
            }
        }
    }

    fn drained_mark(&self, node: &str) -> Option<String> {
        self.ctx.nodes.get(&ObjectRef::new(node))?.annotations().get(DEREGISTERED_AT_ANNOTATION).cloned()
    }

    /// Whether this or any other binding still owns an instance on `node`.
    fn node_owned(&self, node: &str) -> bool {
        let on_node =
            |s: &ClbBackendBindingStatus| s.backends.iter().any(|b| b.node.as_deref() == Some(node));
        on_node(&self.status)
            || self
                .ctx
                .bindings
                .state()
                .iter()
                .filter(|b| ObjectRef::from_obj(b.as_ref()) != self.key)
                .any(|b| on_node(&self.ctx.current_status(b)))
    }

    async fn patch_mark(&self, nodes: &Api<Node>, node: &str, value: Option<String>) {
        let patch = serde_json::json!({"metadata": {"annotations": {DEREGISTERED_AT_ANNOTATION: value}}});
        match nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => info!(node, drained = value.is_some(), "Updated the node's drained mark"),
            Err(e) => warn!(node, error = %e, "Updating the node's drained mark failed"),
        }
    }

    /// When the operator saw the change that makes `instance` leave: the last event about its node, or now.
    fn signal_seen(&self, instance: &str) -> std::time::Instant {
        self.status
            .backends
            .iter()
            .find(|b| b.instance_id == instance)
            .and_then(|b| b.node.as_deref())
            .and_then(|node| self.ctx.signals.last(node))
            .unwrap_or_else(std::time::Instant::now)
    }

    /// Whether the back-off after failed tasks of `action` allows a new submission now.
    fn may_submit(&self, action: TaskAction) -> bool {
        plan::retry_at(&self.status.tasks, action).is_none_or(|at| at <= self.now)
    }

    /// `Degraded` because of a failed task, while the failed action still has work to retry.
    fn failed_task_problem(&self) -> Option<Problem> {
        let failed: &TaskRecord =
            self.status.tasks.iter().find(|t| t.state != crate::api::TaskState::Running)?;
        if failed.state != crate::api::TaskState::Failed {
            return None;
        }
        let retry_at = plan::retry_at(&self.status.tasks, failed.action)?;
        let still_relevant = self.status.backends.iter().any(|b| b.state != BackendState::Registered)
            || self.status.desired != self.status.registered
            || retry_at > self.now;
        still_relevant.then(|| Problem {
            reason: reasons::TASK_FAILED,
            message: format!(
                "{:?} task {} for {} failed; retrying from {retry_at}",
                failed.action,
                failed.request_id,
                failed.instance_ids.join(", ")
            ),
        })
    }

    /// Refreshes counters and conditions, writes the status if it changed, and says when to look again.
    async fn finish(&mut self, desired: &BTreeSet<String>, pending: bool) -> Result<Action> {
        let generation = self.binding.meta().generation;
        status::summarize(&mut self.status, generation, desired, pending, self.problem.as_ref(), self.now);
        // The drained mark first: whoever sees the status say an instance is gone finds its node marked.
        self.mark_nodes().await;
        // Holding back while changes settle, a change of the summary alone (counts, conditions) is left to the
        // reconcile that submits a few tens of milliseconds later: written now, on a busy API server, it would
        // delay that reconcile, and the Deregister with it. Backends and tasks are written at once, always.
        let summary_only =
            self.status.backends == self.written.backends && self.status.tasks == self.written.tasks;
        if self.status != self.written && !(self.settle_wait.is_some() && summary_only) {
            self.write_status().await?;
        }
        if self.problem.is_none() {
            self.ctx.reported_reset(&self.key);
        }
        let count = |state| self.status.backends.iter().filter(|b| b.state == state).count() as i64;
        let counts = BindingCounts {
            registering: count(BackendState::Registering),
            registered: count(BackendState::Registered),
            deregistering: count(BackendState::Deregistering),
            tasks: i64::from(self.status.in_flight),
        };
        self.ctx.metrics.set_binding(self.key.to_string(), Some(counts));
        Ok(Action::requeue(self.next_delay(pending).unwrap_or(self.ctx.settings.resync)))
    }

    /// When to look again: the earliest due task poll, retry after back-off, or problem retry; `None` when
    /// nothing is waiting (then the periodic resync applies).
    fn next_delay(&self, pending: bool) -> Option<Duration> {
        let running = status::running_tasks(&self.status);
        let mut delays: Vec<Duration> = running.iter().map(|id| self.ctx.polls.until_due(*id)).collect();
        delays.extend(self.recheck_after);
        delays.extend(self.settle_wait);
        if pending {
            for action in [TaskAction::Deregister, TaskAction::Register] {
                if let Some(at) = plan::retry_at(&self.status.tasks, action) {
                    delays.push(Duration::try_from(at.duration_since(self.now)).unwrap_or_default());
                }
            }
        }
        if let Some(p) = &self.problem {
            delays.push(if p.reason == reasons::CREDENTIALS_NOT_FOUND {
                CREDENTIALS_RETRY
            } else {
                self.ctx.failure_backoff(&self.key)
            });
        }
        delays.into_iter().min().map(|d| d.max(Duration::from_millis(10)))
    }

    /// Writes the whole status with server-side apply and remembers it, so a reconcile that starts before the
    /// watch delivers this write still sees it.
    async fn write_status(&mut self) -> Result<()> {
        let patch = serde_json::json!({
            "apiVersion": ClbBackendBinding::api_version(&()),
            "kind": ClbBackendBinding::kind(&()),
            "status": self.status,
        });
        let params = PatchParams::apply(MANAGER).force();
        let updated = self
            .api
            .patch_status(&self.binding.name_any(), &params, &Patch::Apply(&patch))
            .await
            .map_err(Error::kube("writing the binding's status"))?;
        self.ctx.remember_written(&self.key, updated.resource_version(), &self.status);
        self.written = self.status.clone();
        Ok(())
    }
}

fn desired_ids(m: &membership::Membership) -> BTreeSet<String> {
    m.desired.keys().cloned().collect()
}

/// Reads `secretId`, `secretKey` and optional `token` from a credentials Secret; never echoes their values.
fn credentials_from_secret(secret: Option<&Secret>, ns: &str, name: &str) -> Result<Credentials, Problem> {
    let missing = |what: String| Problem { reason: reasons::CREDENTIALS_NOT_FOUND, message: what };
    let secret = secret.ok_or_else(|| missing(format!("Secret {ns}/{name} not found")))?;
    let value = |key: &str| -> Option<String> {
        let from_data =
            secret.data.as_ref().and_then(|d| d.get(key)).and_then(|v| String::from_utf8(v.0.clone()).ok());
        let from_string = || secret.string_data.as_ref().and_then(|d| d.get(key)).cloned();
        from_data.or_else(from_string).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    };
    let id = value("secretId").ok_or_else(|| missing(format!("Secret {ns}/{name} has no key secretId")))?;
    let key =
        value("secretKey").ok_or_else(|| missing(format!("Secret {ns}/{name} has no key secretKey")))?;
    Ok(Credentials::new(id, key, value("token")))
}

/// Turns a CLB error into the condition it shows as. Messages come from [`ClbError`]'s Display, which carries
/// no secrets.
fn problem_from(e: &ClbError) -> Problem {
    let reason = match (e.code(), e.kind()) {
        (Some(5000), _) => reasons::LOAD_BALANCER_NOT_FOUND,
        (_, "auth") => reasons::AUTH_FAILED,
        _ => reasons::CLB_API_ERROR,
    };
    Problem { reason, message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect(),
            ),
            ..Default::default()
        }
    }

    /// A Secret without a required key is a CredentialsNotFound problem that names the key, never a value.
    #[test]
    fn credentials_need_both_keys_and_never_echo_values() {
        assert!(
            credentials_from_secret(
                Some(&secret(&[("secretId", "AKID1"), ("secretKey", "s3cr3t")])),
                "ns",
                "c"
            )
            .is_ok()
        );
        let p = credentials_from_secret(Some(&secret(&[("secretId", "AKID1")])), "ns", "c").unwrap_err();
        assert_eq!(p.reason, reasons::CREDENTIALS_NOT_FOUND);
        assert!(p.message.contains("secretKey"));
        let p = credentials_from_secret(Some(&secret(&[("secretKey", "s3cr3t")])), "ns", "c").unwrap_err();
        assert!(!p.message.contains("s3cr3t"));
        let p = credentials_from_secret(None, "ns", "c").unwrap_err();
        assert_eq!(p.message, "Secret ns/c not found");
    }
}
