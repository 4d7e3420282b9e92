//! The reconcile driver: **observe -> decide -> act -> record**, top to bottom, for live and deleting bindings.
//!
//! Reads are in [`observe`], decisions in [`decide`] and [`plan`], writes in [`act`], and the status bookkeeping
//! (the record step) in [`status`]. This file only puts them in order, and the order is what crash safety needs:
//! a task's requestId reaches the status before anything else depends on it.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
    },
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    Context, act,
    decide::{self, Gate, Step, Timers},
    error::{Error, Result},
    events, listeners,
    memory::Key,
    observe::{self, Observed},
    plan::{self, Join, Leave},
    status::{self, Outcome, Problem, Recorded, reasons},
};
use crate::{
    api::{
        BackendState, ClbBackendBinding, ClbBackendBindingStatus, DeletionPolicy, FINALIZER,
        FORCE_FINALIZE_ANNOTATION, TaskAction,
    },
    clb::cloud::{Cloud, LoadBalancerView, Target},
    metrics::BindingCounts,
};

/// Wait before looking again at a deleting binding whose credentials are missing: they are usually fixed by
/// hand.
const CREDENTIALS_RETRY: Duration = Duration::from_secs(30);

/// Longest wait before a status holding requestIds is written again after its write failed.
const UNWRITTEN_RETRY: Duration = Duration::from_secs(5);

/// How often the load balancer is looked at while an intent left by a crash waits to show.
const INTENT_RECHECK: Duration = Duration::from_secs(1);

/// Reconciles one binding: the finalizer helper routes live bindings to [`apply`] and deleting ones to
/// [`cleanup`].
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
            Finalizer::Apply(b) => apply(b, &ctx).await,
            Finalizer::Cleanup(b) => cleanup(b, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.memory.succeeded(&key);
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
    let key = ObjectRef::from_obj(&*binding);
    let mut delay = ctx.memory.errored(&key, &ctx.config.problem_backoff);
    if ctx.memory.has_unwritten(&key) {
        // The CLB accepted tasks the status does not show yet: keep trying to write them.
        delay = delay.min(UNWRITTEN_RETRY);
    }
    warn!(binding = %binding.name_any(), namespace = ?binding.namespace(), kind = error.kind(), %error,
        retry_in_ms = delay.as_millis() as u64, "Reconcile failed");
    Action::requeue(delay)
}

/// Brings a live binding's backends in line with its membership.
async fn apply(binding: Arc<ClbBackendBinding>, ctx: &Context) -> Result<Action> {
    // Observe: the binding's status, membership and credentials, the NodePorts its listeners name. Nothing is
    // written.
    let seen = observe::binding(ctx, binding).await?;
    ctx.index.update(seen.key.clone(), seen.interest());
    let mut draft = Draft::new(ctx, &seen);
    let membership = match &seen.membership {
        Ok(m) => m,
        Err(e) => {
            let problem = Problem { reason: reasons::INVALID_SPEC, message: e.to_string() };
            return finish(ctx, &seen, draft, Done::blocked(&seen, BTreeSet::new(), problem)).await;
        }
    };
    for node in &membership.missing_instance_id {
        ctx.publish_once(&seen.binding, &events::instance_id_missing(node)).await;
    }
    let spec = &seen.binding.spec;
    let node_ports = match spec.listeners.iter().any(|l| l.service.is_some()) {
        true => observe::node_ports(ctx, &seen.binding).await?,
        false => Default::default(),
    };
    let generation = seen.binding.meta().generation;
    let mut view = ctx.memory.load_balancer(&seen.key, generation);
    // Until the listeners are known to fit, the count of what should serve is told as the spec asks for it.
    let guess = listeners::placements(&spec.listeners, view.as_ref(), &node_ports).unwrap_or_default();
    let desired_guess: BTreeSet<Target> = plan::desired_targets(membership, &guess).into_keys().collect();
    let clb = match &seen.clb {
        Ok(clb) => clb.as_ref(),
        Err(problem) => {
            ctx.publish_once(&seen.binding, &events::credentials_problem(problem)).await;
            return finish(ctx, &seen, draft, Done::blocked(&seen, desired_guess, problem.clone())).await;
        }
    };
    if clb.api() == "v2" && !spec.listeners.is_empty() {
        let message = "spec.listeners needs CLB API 3.0; the operator runs with --clb-api v2".to_owned();
        let problem = Problem { reason: reasons::INVALID_SPEC, message };
        return finish(ctx, &seen, draft, Done::blocked(&seen, desired_guess, problem)).await;
    }
    if view.is_none() && listeners::need_rules(&spec.listeners) {
        match observe::load_balancer_view(clb, &seen.binding).await {
            Ok(v) => view = v,
            Err(problem) => {
                return finish(ctx, &seen, draft, Done::blocked(&seen, desired_guess, problem)).await;
            }
        }
    }
    let placements = match listeners::placements(&spec.listeners, view.as_ref(), &node_ports) {
        Ok(p) => p,
        Err(problem) => {
            ctx.publish_once(&seen.binding, &events::spec_problem(&problem)).await;
            return finish(ctx, &seen, draft, Done::blocked(&seen, desired_guess, problem)).await;
        }
    };
    let wanted = plan::desired_targets(membership, &placements);
    let desired: BTreeSet<Target> = wanted.keys().cloned().collect();

    // Act and record: the running tasks that are due are polled, and what finished is applied; intents left by
    // a crash are confirmed on the load balancer, never blindly repeated.
    let mut met = poll(ctx, &seen, clb, &mut draft.status).await;
    let intents =
        confirm_intents(&seen, clb, |id| membership.desired.get(id).cloned(), &mut draft.status).await;
    met.extend(intents.1);

    // Decide: what changes, and whether it goes out now (settling, the problem backoff, failed-task backoff,
    // and a spec that does not fit the load balancer).
    let drain =
        plan::Drain { weight_zero_for: spec.drain.weight_zero_for.map(Duration::from), now: Some(seen.now) };
    let planned = plan::plan(
        &draft.status.backends,
        membership,
        &wanted,
        |n| seen.existing.contains(n),
        seen.pod_targeted(),
        drain,
    );
    let plan = decide::without_intents(planned, &draft.status.intents);
    let cause = decide::cause(generation, seen.secret_version.as_deref(), seen.retry_requested(), &plan);
    let gate = decide::gate(ctx.memory.trouble(&seen.key).as_ref(), cause, Instant::now());
    let settle = if plan.is_empty() { None } else { observe::settle(ctx, &seen.key, &seen.looked_at) };
    let mut wait = settle.is_some() || gate != Gate::Open;
    if !plan.is_empty() && !wait && (clb.api() == "v3" || !spec.listeners.is_empty()) {
        // Nothing is written before the spec is known to fit the load balancer (its type, listeners, rules).
        if let Err(problem) = fits(ctx, &seen, clb, view).await {
            ctx.publish_once(&seen.binding, &events::spec_problem(&problem)).await;
            met.problems.push(problem);
            wait = true;
        }
    }

    // Act and record, removals first: a backend going away must stop receiving traffic before anything else.
    let wake = plan.wake;
    let leaving = decide::step(plan.deregister, TaskAction::Deregister, &draft.status.tasks, seen.now, wait);
    if let Step::Submit(leaving) = &leaving {
        met.extend(deregister(ctx, &seen, clb, leaving, &mut draft).await?);
    }
    let quiescing = decide::step(plan.quiesce, TaskAction::Quiesce, &draft.status.tasks, seen.now, wait);
    if let Step::Submit(quiescing) = &quiescing {
        met.extend(quiesce(ctx, &seen, clb, quiescing, drain, &mut draft).await?);
    }
    let blocked = wait || !met.problems.is_empty();
    let restoring = decide::step(plan.restore, TaskAction::Restore, &draft.status.tasks, seen.now, blocked);
    if let Step::Submit(restoring) = &restoring {
        met.extend(restore(ctx, &seen, clb, restoring, &mut draft).await?);
    }
    let joining = decide::step(plan.join, TaskAction::Register, &draft.status.tasks, seen.now, blocked);
    if let Step::Submit(joining) = &joining {
        met.extend(join(ctx, &seen, clb, joining, &mut draft).await?);
    }
    let pending = [&leaving, &quiescing].iter().any(|s| **s == Step::Pending)
        || [&restoring, &joining].iter().any(|s| **s == Step::Pending);
    // A quiesced target is deregistered when its wait ends: no event marks that moment.
    let woken = wake.and_then(|w| Duration::try_from(w.duration_since(seen.now)).ok());
    let recheck = [membership.recheck_after, intents.0, woken].into_iter().flatten().min();
    let done = Done { desired, pending, gate, cause, settle, recheck, met };
    finish(ctx, &seen, draft, done).await
}

/// Checks the spec against what the load balancer is (read once per spec generation, remembered while it fits).
async fn fits(
    ctx: &Context,
    seen: &Observed,
    clb: &dyn Cloud,
    view: Option<LoadBalancerView>,
) -> std::result::Result<(), Problem> {
    let view = match view {
        Some(v) => Some(v),
        None => observe::load_balancer_view(clb, &seen.binding).await?,
    };
    let spec = &seen.binding.spec;
    listeners::check(&spec.load_balancer_id, view.as_ref(), &spec.listeners)?;
    if let Some(view) = view {
        ctx.memory.looked_at_load_balancer(&seen.key, seen.binding.meta().generation, view);
    }
    Ok(())
}

/// Releases a deleting binding: deregisters what it owns (policy Deregister), leaves it (Retain), or lets go at
/// once when forced. Returns an error while it must wait, which keeps the finalizer.
async fn cleanup(binding: Arc<ClbBackendBinding>, ctx: &Context) -> Result<Action> {
    let key = ObjectRef::from_obj(&*binding);
    let owned: Vec<String> = status::instances_of(
        &ctx.memory.current_status(&binding).backends.iter().map(plan::target_of).collect::<Vec<_>>(),
    );
    let lb = binding.spec.load_balancer_id.clone();
    if binding.annotations().get(FORCE_FINALIZE_ANNOTATION).is_some_and(|v| v == "true") {
        ctx.publish(&binding, &events::force_finalized(&lb, &owned)).await;
        return Ok(released(ctx, &key));
    }
    if binding.spec.deletion_policy == DeletionPolicy::Retain || owned.is_empty() {
        if !owned.is_empty() {
            ctx.publish(&binding, &events::retained(&lb, &owned)).await;
        }
        return Ok(released(ctx, &key));
    }
    let seen = observe::deleting(ctx, binding).await?;
    let mut draft = Draft::new(ctx, &seen);
    let clb = match &seen.clb {
        Ok(clb) => clb.as_ref(),
        Err(problem) => {
            let reason = format!(
                "{}; set annotation {FORCE_FINALIZE_ANNOTATION}=true to release the binding anyway",
                problem.message
            );
            conclude(ctx, &seen, &mut draft, Done::deleting(vec![problem.clone()])).await?;
            return Err(Error::DeletionPending { reason, retry_after: CREDENTIALS_RETRY });
        }
    };
    let mut met = poll(ctx, &seen, clb, &mut draft.status).await;
    met.extend(confirm_intents(&seen, clb, |_| None, &mut draft.status).await.1);
    let held: BTreeSet<Target> = (draft.status.intents.iter())
        .flat_map(|i| plan::recorded_targets(&i.instance_ids, &i.targets))
        .collect();
    let leaving: Vec<Leave> = (draft.status.backends.iter())
        .filter(|b| matches!(b.state, BackendState::Registered | BackendState::Quiesced))
        .map(plan::target_of)
        .filter(|t| !held.contains(t))
        .map(|target| Leave { target, reason: "BindingDeleted".to_owned() })
        .collect();
    if let Step::Submit(leaving) =
        decide::step(leaving, TaskAction::Deregister, &draft.status.tasks, seen.now, false)
    {
        met.extend(deregister(ctx, &seen, clb, &leaving, &mut draft).await?);
    }
    if draft.status.backends.is_empty() {
        return Ok(released(ctx, &seen.key));
    }
    let still = draft.status.backends.len();
    let retry_after = conclude(ctx, &seen, &mut draft, Done::deleting(met.problems)).await?;
    let reason = format!("{still} backend(s) still owned on {lb}");
    Err(Error::DeletionPending { reason, retry_after: retry_after.unwrap_or(CREDENTIALS_RETRY) })
}

/// Forgets a binding whose finalizer is about to go.
fn released(ctx: &Context, key: &Key) -> Action {
    ctx.forget(key);
    Action::await_change()
}

/// The status being built, and the one last written (to skip writes that change nothing).
struct Draft {
    status: ClbBackendBindingStatus,
    written: ClbBackendBindingStatus,
    /// While accepted submissions wait for their record (see [`super::Config::record_within`]): the status they left,
    /// and until when it may wait. A status that holds more than that (a finished task, a weight call) is
    /// written at once.
    held: Option<(ClbBackendBindingStatus, Instant)>,
}

impl Draft {
    fn new(ctx: &Context, seen: &Observed) -> Self {
        let by = ctx.memory.record_by(&seen.key).filter(|by| *by > Instant::now());
        Self {
            status: seen.status.clone(),
            written: seen.stored.clone(),
            held: by.map(|by| (seen.status.clone(), by)),
        }
    }

    /// Writes the status as it stands. If the write fails, the status is kept in the binding's memory: it holds
    /// requestIds, and the next reconcile starts from it (polls them, plans nothing twice) and writes it again.
    async fn persist(&mut self, ctx: &Context, binding: &ClbBackendBinding) -> Result<()> {
        // Written before the reconcile's summary: make sure it never claims Ready with a task in flight.
        status::note_in_flight(&mut self.status, binding.meta().generation, jiff::Timestamp::now());
        if let Err(e) = act::write_status(ctx, binding, &self.status).await {
            ctx.memory.unwritten(&ObjectRef::from_obj(binding), &self.status);
            return Err(e);
        }
        self.wrote();
        Ok(())
    }

    /// Writes an intent (`attempt`) before its submission, and with it what earlier steps of this reconcile
    /// submitted. If that fails the intent's call is not made, so the intent is dropped; earlier submissions
    /// stay in the binding's memory to be written by the next reconcile, as [`Self::persist`] keeps them.
    async fn persist_intent(
        &mut self,
        ctx: &Context,
        binding: &ClbBackendBinding,
        attempt: &str,
    ) -> Result<()> {
        status::note_in_flight(&mut self.status, binding.meta().generation, jiff::Timestamp::now());
        if let Err(e) = act::write_status(ctx, binding, &self.status).await {
            status::intent_done(&mut self.status, attempt);
            if decide::holds_unwritten_changes(&self.status, &self.written) {
                ctx.memory.unwritten(&ObjectRef::from_obj(binding), &self.status);
            }
            return Err(e);
        }
        self.wrote();
        Ok(())
    }

    fn wrote(&mut self) {
        self.written = self.status.clone();
        self.held = None;
    }

    /// Lets the record of submissions that all went out as tasks wait for their end: their intent is written.
    /// Anything else (a failed call, targets already gone) is written with the reconcile's closing write.
    fn submitted<T>(&mut self, ctx: &Context, outcomes: &[Outcome<T>]) {
        let tasks = outcomes.iter().all(|o| matches!(o, Outcome::Task { .. }));
        self.held = tasks.then(|| (self.status.clone(), Instant::now() + ctx.config.record_within));
    }

    /// Keeps the status in the binding's memory instead of writing it, if all it adds to the last write are
    /// submissions whose record may still wait; returns until when, if it did.
    fn hold(&self, ctx: &Context, key: &Key) -> Option<Instant> {
        let (base, by) = self.held.as_ref()?;
        if *by <= Instant::now() || decide::holds_unwritten_changes(&self.status, base) {
            return None;
        }
        ctx.memory.hold(key, &self.status, *by);
        Some(*by)
    }
}

/// Polls the due tasks and records the finished ones, with an event and the latency metric for each. Tasks the
/// API does not know are judged by the targets the load balancer holds.
async fn poll(
    ctx: &Context,
    seen: &Observed,
    clb: &dyn Cloud,
    status: &mut ClbBackendBindingStatus,
) -> Recorded {
    let act::Polled { mut finished, unknown, problem } =
        act::poll(ctx, clb, &seen.key, &status::running_tasks(status)).await;
    let mut problems: Vec<Problem> = problem.into_iter().collect();
    if !unknown.is_empty() {
        match observe::load_balancer(clb, &seen.binding, status).await {
            Ok(on_lb) => {
                for id in unknown {
                    if let Some(task) = status.tasks.iter().find(|t| t.request_id == id) {
                        let done = decide::confirmed(task, &on_lb);
                        info!(binding = %seen.key, request_id = %id, done, "Confirmed a task the API does not know from the targets");
                        finished.push((id, done));
                    }
                }
            }
            Err(e) => problems.push(act::problem_from(&e)),
        }
    }
    let mut recorded = status::polled(status, &finished, seen.now);
    recorded.problems.extend(problems);
    let lb = &seen.binding.spec.load_balancer_id;
    for (request_id, action, succeeded, ids) in &recorded.finished {
        let signals = ctx.memory.deregister_finished(&seen.key, request_id);
        if *succeeded {
            signals.iter().for_each(|seen_at| ctx.metrics.deregistered(seen_at.elapsed()));
        }
        info!(binding = %seen.key, request_id, ?action, succeeded, instances = ids.len(), "CLB task finished");
        ctx.publish(&seen.binding, &events::task_finished(*action, *succeeded, ids, lb, request_id)).await;
    }
    recorded
}

/// Submits Deregister tasks and records them in the draft, remembering when each instance's signal was seen: the
/// intent is written before the call; the requestIds go out with the first status write that needs them (the
/// tasks' end, the next intent, or [`super::Config::record_within`] after the call), so that a quick task
/// costs two writes, its intent and its end.
async fn deregister(
    ctx: &Context,
    seen: &Observed,
    clb: &dyn Cloud,
    leaving: &[Leave],
    draft: &mut Draft,
) -> Result<Recorded> {
    let targets: Vec<Target> = leaving.iter().map(|l| l.target.clone()).collect();
    let attempt = status::intend(&mut draft.status, TaskAction::Deregister, &targets, seen.now);
    draft.persist_intent(ctx, &seen.binding, &attempt).await?; // the intent reaches the status before the call
    let outcomes = act::deregister(ctx, clb, &seen.key, &seen.binding.spec.load_balancer_id, leaving).await;
    for outcome in &outcomes {
        if let Outcome::Task { request_id, batch } = outcome {
            let signals = batch.iter().map(|l| signal_seen(ctx, &draft.status, &l.target)).collect();
            ctx.memory.deregister_submitted(&seen.key, request_id, signals);
        }
    }
    let recorded = status::deregistered(&mut draft.status, &outcomes, seen.now);
    status::intent_done(&mut draft.status, &attempt);
    draft.submitted(ctx, &outcomes);
    Ok(recorded)
}

/// Sets going-away targets to weight 0 before they are deregistered (spec.drain.weightZeroFor) and records the
/// tasks. No intent is written first: setting a weight is safe to repeat, so a crash before the record costs one
/// more weight call, never a wrong state. Targets whose weight call failed are deregistered at once: a node going
/// away must not keep its traffic because the gentler path failed.
async fn quiesce(
    ctx: &Context,
    seen: &Observed,
    clb: &dyn Cloud,
    leaving: &[Leave],
    drain: plan::Drain,
    draft: &mut Draft,
) -> Result<Recorded> {
    let lb = &seen.binding.spec.load_balancer_id;
    let outcomes = act::set_weight(ctx, clb, &seen.key, lb, leaving, |l| &l.target, 0, "Quiesce").await;
    let wait = drain.weight_zero_for.unwrap_or_default();
    let mut failed: Vec<Leave> = Vec::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Task { request_id, batch } => {
                let targets: Vec<_> =
                    batch.iter().map(|l| (l.target.clone(), Some(l.reason.clone()))).collect();
                status::weight_submitted(
                    &mut draft.status,
                    &request_id,
                    TaskAction::Quiesce,
                    &targets,
                    wait,
                    seen.now,
                );
            }
            Outcome::Gone(_) => {}
            Outcome::Failed(problem) => {
                warn!(binding = %seen.key, reason = problem.reason, "Setting weight 0 failed; deregistering at once");
            }
        }
    }
    let quiesced: BTreeSet<Target> = (draft.status.backends.iter())
        .filter(|b| b.state == BackendState::Quiescing)
        .map(plan::target_of)
        .collect();
    failed.extend(leaving.iter().filter(|l| !quiesced.contains(&l.target)).cloned());
    if failed.is_empty() {
        return Ok(Recorded::default());
    }
    deregister(ctx, seen, clb, &failed, draft).await
}

/// Gives quiesced targets whose node came back their weight again, and records the tasks (no intent: see
/// [`quiesce`]).
async fn restore(
    ctx: &Context,
    seen: &Observed,
    clb: &dyn Cloud,
    joining: &[Join],
    draft: &mut Draft,
) -> Result<Recorded> {
    let spec = &seen.binding.spec;
    let weight = u32::try_from(spec.weight.clamp(0, 100)).unwrap_or(10);
    let outcomes = act::set_weight(
        ctx,
        clb,
        &seen.key,
        &spec.load_balancer_id,
        joining,
        |j| &j.target,
        weight,
        "Restore",
    )
    .await;
    let mut recorded = Recorded::default();
    for outcome in outcomes {
        match outcome {
            Outcome::Task { request_id, batch } => {
                let targets: Vec<_> = batch.iter().map(|j| (j.target.clone(), None)).collect();
                let (status, now) = (&mut draft.status, seen.now);
                status::weight_submitted(
                    status,
                    &request_id,
                    TaskAction::Restore,
                    &targets,
                    Duration::ZERO,
                    now,
                );
                recorded.claimed.extend(batch.iter().map(|j| j.node.clone()));
            }
            Outcome::Gone(_) => {}
            Outcome::Failed(problem) => recorded.problems.push(problem),
        }
    }
    Ok(recorded)
}

/// When the operator saw the change that makes `target` leave: the last event about its node, or now.
fn signal_seen(ctx: &Context, status: &ClbBackendBindingStatus, target: &Target) -> Instant {
    let node = status.backends.iter().find(|b| plan::target_of(b) == *target).and_then(|b| b.node.as_deref());
    node.and_then(|n| ctx.caches.signals.last(n)).unwrap_or_else(Instant::now)
}

/// Adopts joining instances already on the load balancer, submits Register tasks for the rest, and records both:
/// the intent is written before the call, and the requestIds as for [`deregister`].
async fn join(
    ctx: &Context,
    seen: &Observed,
    clb: &dyn Cloud,
    joining: &[Join],
    draft: &mut Draft,
) -> Result<Recorded> {
    let lb = &seen.binding.spec.load_balancer_id;
    let on_lb = match observe::load_balancer(clb, &seen.binding, &draft.status).await {
        Ok(ids) => ids,
        Err(e) => {
            warn!(binding = %seen.key, kind = e.kind(), error = %e, "Listing the load balancer's backends failed");
            return Ok(Recorded { problems: vec![act::problem_from(&e)], ..Recorded::default() });
        }
    };
    let (adopt, register) = plan::split_join(joining.to_vec(), &on_lb);
    if !adopt.is_empty() {
        info!(binding = %seen.key, instances = adopt.len(), "Adopted instances already on the load balancer");
    }
    if register.is_empty() {
        return Ok(status::joined(&mut draft.status, &adopt, &[], seen.now));
    }
    let targets: Vec<Target> = register.iter().map(|j| j.target.clone()).collect();
    let attempt = status::intend(&mut draft.status, TaskAction::Register, &targets, seen.now);
    draft.persist_intent(ctx, &seen.binding, &attempt).await?; // the intent reaches the status before the call
    let weight = u32::try_from(seen.binding.spec.weight.clamp(0, 100)).unwrap_or(10);
    let outcomes = act::register(ctx, clb, &seen.key, lb, &register, weight).await;
    let recorded = status::joined(&mut draft.status, &adopt, &outcomes, seen.now);
    status::intent_done(&mut draft.status, &attempt);
    draft.submitted(ctx, &outcomes);
    Ok(recorded)
}

/// Confirms intents left by a crash on the load balancer: what shows is recorded, what has waited out its bound
/// is planned afresh. Returns when to look again, if an intent still waits, and what was recorded.
async fn confirm_intents(
    seen: &Observed,
    clb: &dyn Cloud,
    node_of: impl Fn(&str) -> Option<String>,
    status: &mut ClbBackendBindingStatus,
) -> (Option<Duration>, Recorded) {
    if status.intents.is_empty() {
        return (None, Recorded::default());
    }
    let on_lb = match observe::load_balancer(clb, &seen.binding, status).await {
        Ok(ids) => ids,
        Err(e) => {
            let problems = vec![act::problem_from(&e)];
            return (Some(INTENT_RECHECK), Recorded { problems, ..Recorded::default() });
        }
    };
    let verdict = decide::intents(&status.intents, &on_lb, seen.now, decide::intent_bound(&status.tasks));
    info!(binding = %seen.key, shown = verdict.shown.len(), expired = verdict.expired.len(),
        waiting = verdict.wait.is_some(), "Confirmed intents left by an earlier process");
    let recorded = status::intents_resolved(status, &verdict.shown, &verdict.expired, node_of);
    (verdict.wait.map(|w| w.min(INTENT_RECHECK)), recorded)
}

/// How a reconcile ended, for [`finish`].
struct Done {
    /// The targets that should serve.
    desired: BTreeSet<Target>,
    /// Planned changes wait for a failed action's backoff.
    pending: bool,
    /// Whether the CLB could be asked.
    gate: Gate,
    /// What the attempt was made from.
    cause: u64,
    /// How long submissions still settle.
    settle: Option<Duration>,
    /// When membership changes without an event.
    recheck: Option<Duration>,
    /// What the steps found.
    met: Recorded,
}

impl Done {
    /// Nothing could be attempted because of `problem`.
    fn blocked(seen: &Observed, desired: BTreeSet<Target>, problem: Problem) -> Self {
        let generation = seen.binding.meta().generation;
        let cause = decide::cause(
            generation,
            seen.secret_version.as_deref(),
            seen.retry_requested(),
            &Default::default(),
        );
        let met = Recorded { problems: vec![problem], ..Recorded::default() };
        Self { desired, pending: false, gate: Gate::Open, cause, settle: None, recheck: None, met }
    }

    /// A deleting binding that still owns backends: nothing is desired, and the rest is pending.
    fn deleting(problems: Vec<Problem>) -> Self {
        let met = Recorded { problems, ..Recorded::default() };
        Self {
            desired: BTreeSet::new(),
            pending: true,
            gate: Gate::Open,
            cause: 0,
            settle: None,
            recheck: None,
            met,
        }
    }
}

/// Settles the problem and its backoff, refreshes counters and conditions, updates the drained marks, writes the
/// status if it changed, and says when to look again (`None`: the periodic resync).
async fn finish(ctx: &Context, seen: &Observed, mut draft: Draft, done: Done) -> Result<Action> {
    let delay = conclude(ctx, seen, &mut draft, done).await?;
    Ok(Action::requeue(delay.unwrap_or(ctx.config.resync)))
}

/// [`finish`] without the requeue: the delay until the next look, if anything waits.
async fn conclude(ctx: &Context, seen: &Observed, draft: &mut Draft, done: Done) -> Result<Option<Duration>> {
    let Done { desired, pending, gate, cause, settle, recheck, met } = done;
    let key = &seen.key;
    let held = match &gate {
        Gate::Held { problem, .. } => Some(problem.clone()),
        Gate::Open => None,
    };
    let failed_task = decide::failed_task_problem(&draft.status, seen.now);
    let problem = decide::worst(held.into_iter().chain(met.problems).chain(failed_task));
    let now = Instant::now();
    let problem_wait = match (&gate, &problem) {
        (Gate::Held { until, .. }, _) => Some(until.saturating_duration_since(now)),
        (Gate::Open, Some(p)) if decide::backs_off(p) => {
            Some(ctx.memory.troubled(key, p.clone(), cause, &ctx.config.problem_backoff, now))
        }
        _ => {
            ctx.memory.untroubled(key);
            None
        }
    };
    let generation = seen.binding.meta().generation;
    status::summarize(&mut draft.status, generation, &desired, pending, problem.as_ref(), seen.now);
    let spec = &seen.binding.spec;
    let weight_zero = spec.drain.weight_zero_for.is_some();
    status::pre_drain(&mut draft.status, weight_zero, !spec.listeners.is_empty(), generation, seen.now);

    // The drained mark first: whoever sees the status say an instance is gone finds its node marked.
    let owned_here: BTreeSet<String> = draft.status.backends.iter().filter_map(|b| b.node.clone()).collect();
    let candidates = met.claimed.iter().chain(&met.released).cloned();
    let state = observe::marks(ctx, key, candidates);
    act::mark_nodes(ctx, &decide::marks(&met.claimed, &met.released, &state, &owned_here, seen.now)).await;
    let mut held = None;
    if decide::should_write(&draft.status, &draft.written, settle.is_some()) {
        held = draft.hold(ctx, key);
        if held.is_none() {
            draft.persist(ctx, &seen.binding).await?;
        }
    }
    if problem.is_none() {
        ctx.memory.reports_cleared(key);
    }
    ctx.metrics.set_binding(key.to_string(), Some(counts(&draft.status)));

    let failing = pending || problem.as_ref().is_some_and(|p| p.reason == reasons::TASK_FAILED);
    let retries = [TaskAction::Deregister, TaskAction::Register, TaskAction::Quiesce, TaskAction::Restore]
        .into_iter()
        .filter(|_| failing)
        .filter_map(|action| plan::retry_at(&draft.status.tasks, action))
        .filter_map(|at| Duration::try_from(at.duration_since(seen.now)).ok())
        .filter(|d| !d.is_zero())
        .collect();
    let polls = status::running_tasks(&draft.status).iter().map(|id| ctx.polls.until_due(id)).collect();
    let record = held.map(|by| by.saturating_duration_since(Instant::now()));
    Ok(decide::next_delay(&Timers { polls, recheck, settle, retries, problem: problem_wait, record }))
}

/// The binding's counts for the metrics.
fn counts(status: &ClbBackendBindingStatus) -> BindingCounts {
    let count = |state| status.backends.iter().filter(|b| b.state == state).count() as i64;
    BindingCounts {
        registering: count(BackendState::Registering),
        registered: count(BackendState::Registered),
        deregistering: count(BackendState::Deregistering),
        tasks: i64::from(status.in_flight),
    }
}
