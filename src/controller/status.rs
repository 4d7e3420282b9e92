//! Pure status bookkeeping: recording submitted and finished tasks, the counters, and the conditions.

use std::{collections::BTreeSet, time::Duration};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::plan::{Join, Leave, backend, recorded_targets, target_of, target_ref};
use crate::{
    api::{
        BackendState, BackendStatus, ClbBackendBindingStatus, IntentRecord, TaskAction, TaskRecord, TaskState,
    },
    clb::cloud::Target,
};

/// How many finished tasks the status keeps, newest first, after the running ones.
pub const TASK_HISTORY: usize = 10;

/// Records a submitted Deregister task: its targets turn `Deregistering` with the task's requestId.
pub fn deregister_submitted(
    status: &mut ClbBackendBindingStatus,
    request_id: &str,
    leaving: &[Leave],
    now: Timestamp,
) {
    for leave in leaving {
        if let Some(b) = status.backends.iter_mut().find(|b| target_of(b) == leave.target) {
            b.state = BackendState::Deregistering;
            b.request_id = Some(request_id.to_owned());
            b.reason = Some(leave.reason.clone());
        }
    }
    let targets: Vec<Target> = leaving.iter().map(|l| l.target.clone()).collect();
    push_running(status, request_id, TaskAction::Deregister, &targets, now);
}

/// Records a submitted weight change: a Quiesce's targets turn `Quiescing` with their wait (`wait` from now, moved
/// to start at the task's end when it succeeds), a Restore's `Restoring`.
pub fn weight_submitted(
    status: &mut ClbBackendBindingStatus,
    request_id: &str,
    action: TaskAction,
    targets: &[(Target, Option<String>)],
    wait: Duration,
    now: Timestamp,
) {
    for (target, reason) in targets {
        if let Some(b) = status.backends.iter_mut().find(|b| target_of(b) == *target) {
            b.request_id = Some(request_id.to_owned());
            if action == TaskAction::Quiesce {
                b.state = BackendState::Quiescing;
                b.reason = reason.clone();
                b.quiesced_until = now.checked_add(wait).ok().map(Time);
            } else {
                b.state = BackendState::Restoring;
            }
        }
    }
    let targets: Vec<Target> = targets.iter().map(|(t, _)| t.clone()).collect();
    push_running(status, request_id, action, &targets, now);
}

/// Records a submitted Register task: its targets join `backends` as `Registering`.
pub fn register_submitted(
    status: &mut ClbBackendBindingStatus,
    request_id: &str,
    joining: &[Join],
    now: Timestamp,
) {
    for join in joining {
        let id = Some(request_id.to_owned());
        status.backends.push(backend(&join.target, Some(join.node.clone()), BackendState::Registering, id));
    }
    let targets: Vec<Target> = joining.iter().map(|j| j.target.clone()).collect();
    push_running(status, request_id, TaskAction::Register, &targets, now);
}

/// Records targets that are owned from now on without a Register call, because they already serve.
pub fn adopted(status: &mut ClbBackendBindingStatus, joining: &[Join]) {
    for join in joining {
        status.backends.push(backend(&join.target, Some(join.node.clone()), BackendState::Registered, None));
    }
}

/// Drops targets the CLB says are already gone: there is nothing left to own.
pub fn already_gone(status: &mut ClbBackendBindingStatus, targets: &[Target]) {
    status.backends.retain(|b| !targets.contains(&target_of(b)));
}

/// The distinct instances of `targets`, in order.
pub fn instances_of(targets: &[Target]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    targets.iter().filter(|t| seen.insert(&t.instance)).map(|t| t.instance.clone()).collect()
}

fn push_running(
    status: &mut ClbBackendBindingStatus,
    request_id: &str,
    action: TaskAction,
    targets: &[Target],
    now: Timestamp,
) {
    status.tasks.insert(
        0,
        TaskRecord {
            request_id: request_id.to_owned(),
            action,
            instance_ids: instances_of(targets),
            targets: targets.iter().filter_map(target_ref).collect(),
            state: TaskState::Running,
            submitted_at: Time(now),
            completed_at: None,
        },
    );
}

/// A node's targets on several listeners are quiesced by one weight call per listener, which finish apart; so
/// that they leave in one Deregister call, the quiesced targets of the nodes the finished task `request_id`
/// touched (`nodes`) all wait until the latest of their ends. Waits are only ever lengthened: none is cut short.
fn align_quiesced(status: &mut ClbBackendBindingStatus, nodes: &BTreeSet<String>) {
    for node in nodes {
        let same =
            |b: &BackendStatus| b.node.as_deref() == Some(node.as_str()) && b.state == BackendState::Quiesced;
        let latest =
            status.backends.iter().filter(|b| same(b)).filter_map(|b| b.quiesced_until.clone()).max();
        for b in status.backends.iter_mut().filter(|b| same(b)) {
            b.quiesced_until.clone_from(&latest);
        }
    }
}

/// Applies a finished task's outcome. Success moves its instances on (Registered, or out of `backends`); failure
/// puts them back where they were (Registered, or not owned) so that the next reconcile retries them. Returns the
/// task's action and instances, or `None` if no such running task is recorded.
pub fn task_finished(
    status: &mut ClbBackendBindingStatus,
    request_id: &str,
    succeeded: bool,
    now: Timestamp,
) -> Option<(TaskAction, Vec<String>)> {
    let pos =
        status.tasks.iter().position(|t| t.request_id == request_id && t.state == TaskState::Running)?;
    let mut task = status.tasks.remove(pos);
    task.state = if succeeded { TaskState::Succeeded } else { TaskState::Failed };
    task.completed_at = Some(Time(now));
    let mine = |b: &BackendStatus| b.request_id.as_deref() == Some(request_id);
    let touched: BTreeSet<String> =
        status.backends.iter().filter(|b| mine(b)).filter_map(|b| b.node.clone()).collect();
    let submitted = task.submitted_at.0;
    match (task.action, succeeded) {
        (TaskAction::Deregister, true) | (TaskAction::Register, false) => {
            status.backends.retain(|b| !mine(b))
        }
        (action, succeeded) => {
            for b in status.backends.iter_mut().filter(|b| mine(b)) {
                b.request_id = None;
                // Where a target goes when its task ends: a failed removal of a quiesced target leaves it
                // quiesced; a quiesce's wait starts when its weight is 0, i.e. now.
                let quiesced = match (action, succeeded) {
                    (TaskAction::Quiesce, true) => {
                        let wait = b.quiesced_until.as_ref().map(|u| u.0.duration_since(submitted));
                        b.quiesced_until = wait.and_then(|w| now.checked_add(w).ok()).map(Time);
                        true
                    }
                    (TaskAction::Restore, false) | (TaskAction::Deregister, false) => {
                        b.quiesced_until.is_some()
                    }
                    _ => false,
                };
                if quiesced {
                    b.state = BackendState::Quiesced;
                } else {
                    b.state = BackendState::Registered;
                    b.quiesced_until = None;
                    b.reason = None;
                }
            }
        }
    }
    if (task.action, succeeded) == (TaskAction::Quiesce, true) {
        align_quiesced(status, &touched);
    }
    let outcome = (task.action, task.instance_ids.clone());
    let first_finished = status.tasks.iter().take_while(|t| t.state == TaskState::Running).count();
    status.tasks.insert(first_finished, task);
    status.tasks.truncate(first_finished + TASK_HISTORY);
    Some(outcome)
}

/// The running tasks' requestIds.
pub fn running_tasks(status: &ClbBackendBindingStatus) -> Vec<String> {
    status.tasks.iter().filter(|t| t.state == TaskState::Running).map(|t| t.request_id.clone()).collect()
}

/// What one batch of a submission came to (reported by the act step, recorded here).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<T> {
    /// The CLB accepted the batch as a task.
    Task {
        /// The task's requestId.
        request_id: String,
        /// What the task acts on.
        batch: Vec<T>,
    },
    /// The targets (or, for a Register, the load balancer) do not exist on the CLB.
    Gone(Vec<T>),
    /// The call failed after its retries.
    Failed(Problem),
}

/// What recording a step found that the rest of the reconcile needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    /// Problems met.
    pub problems: Vec<Problem>,
    /// Nodes whose instances this binding stopped owning.
    pub released: BTreeSet<String>,
    /// Nodes whose instances this binding (re)claimed.
    pub claimed: BTreeSet<String>,
    /// Finished tasks: (requestId, action, succeeded, instances), for events and metrics.
    pub finished: Vec<(String, TaskAction, bool, Vec<String>)>,
}

impl Recorded {
    /// Adds what another step found.
    pub fn extend(&mut self, other: Recorded) {
        self.problems.extend(other.problems);
        self.released.extend(other.released);
        self.claimed.extend(other.claimed);
        self.finished.extend(other.finished);
    }
}

fn nodes_of(status: &ClbBackendBindingStatus, which: impl Fn(&BackendStatus) -> bool) -> BTreeSet<String> {
    status.backends.iter().filter(|b| which(b)).filter_map(|b| b.node.clone()).collect()
}

/// Records polled tasks that finished (requestId, succeeded).
pub fn polled(status: &mut ClbBackendBindingStatus, finished: &[(String, bool)], now: Timestamp) -> Recorded {
    let mut r = Recorded::default();
    for (request_id, succeeded) in finished {
        let (request_id, succeeded) = (request_id.as_str(), *succeeded);
        let nodes = nodes_of(status, |b| b.request_id.as_deref() == Some(request_id));
        let Some((action, ids)) = task_finished(status, request_id, succeeded, now) else { continue };
        match (action, succeeded) {
            (TaskAction::Deregister, true) => {
                // A node is released once none of its targets (on any listener) is owned any more.
                let still = nodes_of(status, |_| true);
                r.released.extend(nodes.difference(&still).cloned());
            }
            (TaskAction::Register, true) => r.claimed.extend(nodes),
            _ => {}
        }
        r.finished.push((request_id.to_owned(), action, succeeded, ids));
    }
    r
}

/// Records the outcomes of Deregister submissions.
pub fn deregistered(
    status: &mut ClbBackendBindingStatus,
    outcomes: &[Outcome<Leave>],
    now: Timestamp,
) -> Recorded {
    let mut r = Recorded::default();
    for outcome in outcomes {
        match outcome {
            Outcome::Task { request_id, batch } => deregister_submitted(status, request_id, batch, now),
            Outcome::Gone(batch) => {
                let gone: Vec<Target> = batch.iter().map(|l| l.target.clone()).collect();
                r.released.extend(released_nodes(status, &gone));
                already_gone(status, &gone);
            }
            Outcome::Failed(problem) => r.problems.push(problem.clone()),
        }
    }
    r
}

/// Records instances adopted without a call and the outcomes of Register submissions.
pub fn joined(
    status: &mut ClbBackendBindingStatus,
    adopt: &[Join],
    outcomes: &[Outcome<Join>],
    now: Timestamp,
) -> Recorded {
    let mut r = Recorded::default();
    adopted(status, adopt);
    r.claimed.extend(adopt.iter().map(|j| j.node.clone()));
    for outcome in outcomes {
        match outcome {
            Outcome::Task { request_id, batch } => {
                register_submitted(status, request_id, batch, now);
                r.claimed.extend(batch.iter().map(|j| j.node.clone()));
            }
            Outcome::Gone(_) => {}
            Outcome::Failed(problem) => r.problems.push(problem.clone()),
        }
    }
    r
}

/// Records that a submission of `action` for `targets` is about to be made; returns its attempt id.
pub fn intend(
    status: &mut ClbBackendBindingStatus,
    action: TaskAction,
    targets: &[Target],
    now: Timestamp,
) -> String {
    let attempt = format!("{:016x}", rand::random::<u64>());
    status.intents.push(IntentRecord {
        attempt: attempt.clone(),
        action,
        instance_ids: instances_of(targets),
        targets: targets.iter().filter_map(target_ref).collect(),
        at: Time(now),
    });
    attempt
}

/// Drops an intent: its submission was made and recorded, or is given up.
pub fn intent_done(status: &mut ClbBackendBindingStatus, attempt: &str) {
    status.intents.retain(|i| i.attempt != attempt);
}

/// Applies what the load balancer shows of intents left by a crash: `shown` targets of each attempt made the
/// change (a Deregister's are gone: no longer owned; a Register's are there: owned, on the node `node_of` says);
/// attempts in `drop` are given up, so that their remaining targets are planned afresh.
pub fn intents_resolved(
    status: &mut ClbBackendBindingStatus,
    shown: &[(String, Vec<Target>)],
    drop: &[String],
    node_of: impl Fn(&str) -> Option<String>,
) -> Recorded {
    let mut r = Recorded::default();
    for (attempt, targets) in shown {
        let Some(intent) = status.intents.iter_mut().find(|i| &i.attempt == attempt) else { continue };
        let left: Vec<Target> = recorded_targets(&intent.instance_ids, &intent.targets)
            .into_iter()
            .filter(|t| !targets.contains(t))
            .collect();
        intent.instance_ids = instances_of(&left);
        intent.targets = left.iter().filter_map(target_ref).collect();
        match intent.action {
            TaskAction::Deregister => {
                r.released.extend(released_nodes(status, targets));
                already_gone(status, targets);
            }
            TaskAction::Quiesce | TaskAction::Restore => {}
            TaskAction::Register => {
                let owned: BTreeSet<Target> = status.backends.iter().map(target_of).collect();
                for t in targets.iter().filter(|t| !owned.contains(*t)) {
                    let node = node_of(&t.instance);
                    r.claimed.extend(node.clone());
                    status.backends.push(backend(t, node, BackendState::Registered, None));
                }
            }
        }
    }
    status.intents.retain(|i| !i.instance_ids.is_empty() && !drop.contains(&i.attempt));
    r
}

/// The nodes that stop being owned when `gone` leaves: those with no other owned target left.
fn released_nodes(status: &ClbBackendBindingStatus, gone: &[Target]) -> BTreeSet<String> {
    let leaving = nodes_of(status, |b| gone.contains(&target_of(b)));
    let staying = nodes_of(status, |b| !gone.contains(&target_of(b)));
    leaving.difference(&staying).cloned().collect()
}

/// Sets the `PreDrain` condition when spec.drain.weightZeroFor is set: True when going-away targets are set to
/// weight 0 first, False on a classic CLB (no listeners), which has no weight call under API 3.0. Removed when
/// weightZeroFor is unset.
pub fn pre_drain(
    status: &mut ClbBackendBindingStatus,
    weight_zero: bool,
    listeners: bool,
    generation: Option<i64>,
    now: Timestamp,
) {
    if !weight_zero {
        status.conditions.retain(|c| c.type_ != "PreDrain");
        return;
    }
    let (value, reason, message) = match listeners {
        true => (true, "WeightZero", "going-away targets are set to weight 0 before they are deregistered"),
        false => (
            false,
            "ClassicLoadBalancer",
            "a classic CLB has no weight call under CLB API 3.0: instances are deregistered at once",
        ),
    };
    set_condition(&mut status.conditions, "PreDrain", value, reason, message.to_owned(), generation, now);
}

/// Something that keeps a binding from being in sync, shown as `Degraded=True`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// PascalCase reason, from a fixed vocabulary (see [`reasons`]).
    pub reason: &'static str,
    /// A human-readable explanation without secrets.
    pub message: String,
}

/// Condition reasons the operator uses.
pub mod reasons {
    /// Every desired instance is registered and nothing else is owned.
    pub const IN_SYNC: &str = "BackendsInSync";
    /// Tasks are running or changes are pending.
    pub const SYNCING: &str = "Syncing";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Nothing is in flight.
    pub const IDLE: &str = "Idle";
    /// The credentials Secret or one of its keys is missing.
    pub const CREDENTIALS_NOT_FOUND: &str = "CredentialsNotFound";
    /// The CLB does not know the load balancer.
    pub const LOAD_BALANCER_NOT_FOUND: &str = "LoadBalancerNotFound";
    /// The CLB rejected the credentials.
    pub const AUTH_FAILED: &str = "AuthFailed";
    /// A CLB task ended with status 1.
    pub const TASK_FAILED: &str = "TaskFailed";
    /// A CLB call failed for another reason.
    pub const CLB_API_ERROR: &str = "ClbApiError";
    /// The spec cannot be acted on (e.g. an invalid selector).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Listeners on a classic CLB, or none on an application CLB.
    pub const LOAD_BALANCER_TYPE_MISMATCH: &str = "LoadBalancerTypeMismatch";
    /// A listener (or its rule) is not on the load balancer.
    pub const LISTENER_NOT_FOUND: &str = "ListenerNotFound";
    /// A listener's Service, or its NodePort for the port named, does not exist.
    pub const SERVICE_PORT_NOT_FOUND: &str = "ServicePortNotFound";
    /// The binding is being deleted.
    pub const DELETING: &str = "Deleting";
}

/// Refreshes the counters and the three conditions. `desired` is the set of instances that should serve;
/// `pending` says whether planned changes are waiting (e.g. a retry back-off). Transition times stay unchanged
/// for conditions whose status did not change.
pub fn summarize(
    status: &mut ClbBackendBindingStatus,
    generation: Option<i64>,
    desired: &BTreeSet<Target>,
    pending: bool,
    problem: Option<&Problem>,
    now: Timestamp,
) {
    let registered: BTreeSet<Target> =
        status.backends.iter().filter(|b| b.state == BackendState::Registered).map(target_of).collect();
    let in_flight = status.tasks.iter().filter(|t| t.state == TaskState::Running).count();
    status.desired = desired.len() as i32;
    status.registered = registered.len() as i32;
    status.in_flight = in_flight as i32;
    status.observed_generation = generation;

    let in_sync = in_flight == 0
        && !pending
        && status.backends.len() == desired.len()
        && desired.iter().all(|d| registered.contains(d));
    let what = if registered.iter().any(|t| t.at.is_some()) { "target" } else { "instance" };
    let (ready, ready_reason, ready_msg) = match (problem, in_sync) {
        (Some(p), _) => (false, p.reason, p.message.clone()),
        (None, true) => (true, reasons::IN_SYNC, format!("{} {what}(s) registered", registered.len())),
        (None, false) => (false, reasons::SYNCING, format!("{in_flight} task(s) in flight")),
    };
    let progressing = if in_flight > 0 || pending {
        (true, reasons::SYNCING, format!("{in_flight} task(s) in flight"))
    } else {
        (false, reasons::IDLE, "no task in flight".to_owned())
    };
    let degraded = match problem {
        Some(p) => (true, p.reason, p.message.clone()),
        None => (false, reasons::AS_EXPECTED, "no problem".to_owned()),
    };
    for (type_, (value, reason, message)) in
        [("Ready", (ready, ready_reason, ready_msg)), ("Progressing", progressing), ("Degraded", degraded)]
    {
        set_condition(&mut status.conditions, type_, value, reason, message, generation, now);
    }
}

/// Brings the counters and conditions in line with the tasks in flight, for a status written in the middle of a
/// reconcile (right after a submission, before the summary): a status that records a running task never says
/// Ready, even if the process dies before its summary is written. The full summary ([`summarize`]) comes later.
pub fn note_in_flight(status: &mut ClbBackendBindingStatus, generation: Option<i64>, now: Timestamp) {
    let in_flight = status.tasks.iter().filter(|t| t.state == TaskState::Running).count();
    status.in_flight = in_flight as i32;
    status.registered = status.backends.iter().filter(|b| b.state == BackendState::Registered).count() as i32;
    if in_flight == 0 && status.intents.is_empty() {
        return;
    }
    let message = match status.intents.len() {
        0 => format!("{in_flight} task(s) in flight"),
        n => format!("{in_flight} task(s) in flight, {n} submission(s) being made"),
    };
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    // A problem shown as Ready's reason stays; only a Ready that claims to be in sync is corrected.
    if ready.is_none_or(|c| c.status == "True") {
        set_condition(
            &mut status.conditions,
            "Ready",
            false,
            reasons::SYNCING,
            message.clone(),
            generation,
            now,
        );
    }
    set_condition(&mut status.conditions, "Progressing", true, reasons::SYNCING, message, generation, now);
}

fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if value { "True" } else { "False" }.to_owned();
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let condition = Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn registered(id: &str) -> BackendStatus {
        crate::controller::fixtures::backend(id, &format!("node-{id}"), BackendState::Registered)
    }

    fn leave(id: &str, reason: &str) -> Leave {
        Leave { target: Target::classic(id), reason: reason.into() }
    }

    fn join(id: &str, node: &str) -> Join {
        Join { target: Target::classic(id), node: node.into() }
    }

    fn condition<'a>(s: &'a ClbBackendBindingStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    /// A Deregister task's instances are Deregistering while it runs and leave `backends` only on success.
    #[test]
    fn deregister_lifecycle_removes_backend_only_after_success() {
        let mut s = ClbBackendBindingStatus {
            backends: vec![registered("ins-a"), registered("ins-b")],
            ..Default::default()
        };
        deregister_submitted(&mut s, "7", &[leave("ins-a", "NodeDeleted")], t(10));
        assert_eq!(s.backends[0].state, BackendState::Deregistering);
        assert_eq!(s.backends[0].request_id, Some("7".to_owned()));
        assert_eq!(s.backends[0].reason.as_deref(), Some("NodeDeleted"));
        assert_eq!(running_tasks(&s), ["7"]);

        let done = task_finished(&mut s, "7", true, t(11));
        assert_eq!(done, Some((TaskAction::Deregister, vec!["ins-a".to_string()])));
        assert_eq!(s.backends, [registered("ins-b")]);
        assert_eq!(s.tasks[0].state, TaskState::Succeeded);
        assert_eq!(s.tasks[0].completed_at, Some(Time(t(11))));
        assert_eq!(task_finished(&mut s, "7", true, t(12)), None, "a finished task is not finished twice");
    }

    /// A failed task leaves its instances in their previous state.
    #[test]
    fn failed_tasks_restore_previous_state() {
        let mut s = ClbBackendBindingStatus { backends: vec![registered("ins-a")], ..Default::default() };
        deregister_submitted(&mut s, "1", &[leave("ins-a", "NotSelected")], t(1));
        register_submitted(&mut s, "2", &[join("ins-b", "node-b")], t(1));
        assert_eq!(running_tasks(&s), ["2", "1"]);
        task_finished(&mut s, "1", false, t(2));
        task_finished(&mut s, "2", false, t(2));
        assert_eq!(s.backends, [registered("ins-a")]);
        assert!(s.tasks.iter().all(|t| t.state == TaskState::Failed));
    }

    /// Running tasks stay first; finished history is newest first and bounded.
    #[test]
    fn task_history_is_ordered_and_bounded() {
        let mut s = ClbBackendBindingStatus::default();
        for id in 0..15 {
            register_submitted(&mut s, &id.to_string(), &[join(&format!("ins-{id}"), "n")], t(id as i64));
        }
        for id in 0..14 {
            task_finished(&mut s, &id.to_string(), true, t(100 + id as i64));
        }
        assert_eq!(s.tasks.len(), 1 + TASK_HISTORY);
        assert_eq!(s.tasks[0].request_id, "14");
        assert_eq!(s.tasks[0].state, TaskState::Running);
        assert_eq!(s.tasks[1].request_id, "13");
        assert_eq!(s.backends.iter().filter(|b| b.state == BackendState::Registered).count(), 14);
    }

    /// A quiesce task moves its targets to Quiesced with the wait counted from the task's end; a failed removal
    /// leaves them quiesced; a restore brings them back to Registered.
    #[test]
    fn weight_tasks_move_targets_through_quiesced() {
        use crate::clb::cloud::Placement;
        let on = Target {
            instance: "ins-a".into(),
            at: Some(Placement { listener_id: "lbl-1".into(), location_id: None, port: 80 }),
        };
        let mut b = registered("ins-a");
        (b.listener_id, b.port) = (Some("lbl-1".into()), Some(80));
        let mut s = ClbBackendBindingStatus { backends: vec![b], ..Default::default() };
        let wait = Duration::from_secs(30);
        weight_submitted(
            &mut s,
            "q1",
            TaskAction::Quiesce,
            &[(on.clone(), Some("Taint/x".into()))],
            wait,
            t(10),
        );
        assert_eq!(s.backends[0].state, BackendState::Quiescing);
        task_finished(&mut s, "q1", true, t(12));
        assert_eq!(s.backends[0].state, BackendState::Quiesced);
        assert_eq!(s.backends[0].quiesced_until, Some(Time(t(42))), "30 s from when weight 0 took effect");
        deregister_submitted(&mut s, "d1", &[Leave { target: on.clone(), reason: "Taint/x".into() }], t(42));
        task_finished(&mut s, "d1", false, t(43));
        assert_eq!(s.backends[0].state, BackendState::Quiesced, "a failed removal stays at weight 0");
        weight_submitted(&mut s, "r1", TaskAction::Restore, &[(on.clone(), None)], Duration::ZERO, t(44));
        assert_eq!(s.backends[0].state, BackendState::Restoring);
        task_finished(&mut s, "r1", true, t(45));
        assert_eq!(
            (s.backends[0].state, s.backends[0].quiesced_until.clone()),
            (BackendState::Registered, None)
        );
    }

    /// A node's targets on two listeners, quiesced by two weight calls that finish a second apart, all wait
    /// until the later end: they leave together, and neither waits less than asked.
    #[test]
    fn a_nodes_quiesced_targets_wait_for_the_last_of_them() {
        use crate::clb::cloud::Placement;
        let on = |listener: &str| Target {
            instance: "ins-a".into(),
            at: Some(Placement { listener_id: listener.into(), location_id: None, port: 80 }),
        };
        let at = |listener: &str| {
            let mut b = registered("ins-a");
            (b.listener_id, b.port) = (Some(listener.into()), Some(80));
            b
        };
        let mut s =
            ClbBackendBindingStatus { backends: vec![at("lbl-1"), at("lbl-2")], ..Default::default() };
        let wait = Duration::from_secs(30);
        for (id, listener) in [("q1", "lbl-1"), ("q2", "lbl-2")] {
            let target = [(on(listener), Some("Taint/x".into()))];
            weight_submitted(&mut s, id, TaskAction::Quiesce, &target, wait, t(10));
        }
        task_finished(&mut s, "q1", true, t(12));
        assert_eq!(s.backends[0].quiesced_until, Some(Time(t(42))));
        task_finished(&mut s, "q2", true, t(13));
        let untils: Vec<_> = s.backends.iter().map(|b| (b.state, b.quiesced_until.clone())).collect();
        let both = (BackendState::Quiesced, Some(Time(t(43))));
        assert_eq!(untils, [both.clone(), both]);
    }

    /// A status written right after a submission does not keep an earlier Ready=True: the task is in flight.
    #[test]
    fn a_status_with_a_running_task_is_not_ready() {
        let desired: BTreeSet<Target> = [Target::classic("ins-a")].into();
        let mut s = ClbBackendBindingStatus { backends: vec![registered("ins-a")], ..Default::default() };
        summarize(&mut s, Some(1), &desired, false, None, t(10));
        assert_eq!(condition(&s, "Ready").status, "True");
        register_submitted(&mut s, "r1", &[join("ins-b", "node-b")], t(11));
        note_in_flight(&mut s, Some(1), t(11));
        assert_eq!((condition(&s, "Ready").status.as_str(), s.in_flight), ("False", 1));
        assert_eq!(condition(&s, "Progressing").status, "True");
    }

    /// A status written with integer task ids (before API 3.0) is read, and written back as strings.
    #[test]
    fn integer_task_ids_are_still_read() {
        let old = serde_json::json!({
            "backends": [{"instanceId": "ins-a", "state": "Deregistering", "requestId": 1001}],
            "tasks": [{"requestId": 1001, "action": "Deregister", "instanceIds": ["ins-a"], "state": "Running",
                "submittedAt": "2026-01-01T00:00:00Z"}],
        });
        let s: ClbBackendBindingStatus = serde_json::from_value(old).unwrap();
        assert_eq!(running_tasks(&s), ["1001"]);
        assert_eq!(s.backends[0].request_id.as_deref(), Some("1001"));
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["tasks"][0]["requestId"], "1001");
    }

    /// On an application CLB a node's instance is one target per listener: each leaves on its own, and the
    /// node is released only when the last one is gone.
    #[test]
    fn listener_targets_are_owned_one_by_one() {
        use crate::clb::cloud::Placement;
        let on = |listener: &str| Target {
            instance: "ins-a".into(),
            at: Some(Placement { listener_id: listener.into(), location_id: None, port: 30080 }),
        };
        let mut s = ClbBackendBindingStatus::default();
        let joins = [on("lbl-1"), on("lbl-2")].map(|target| Join { target, node: "node-a".into() });
        register_submitted(&mut s, "r1", &joins, t(1));
        assert_eq!(s.tasks[0].instance_ids, ["ins-a"], "the instance once");
        assert_eq!(s.tasks[0].targets.len(), 2);
        assert_eq!(s.backends[1].listener_id.as_deref(), Some("lbl-2"));
        let r = polled(&mut s, &[("r1".into(), true)], t(2));
        assert_eq!(r.claimed, BTreeSet::from(["node-a".to_owned()]));
        deregister_submitted(
            &mut s,
            "d1",
            &[Leave { target: on("lbl-1"), reason: "SpecChanged".into() }],
            t(3),
        );
        let r = polled(&mut s, &[("d1".into(), true)], t(4));
        assert!(r.released.is_empty(), "node-a still has its lbl-2 target");
        assert_eq!(s.backends.len(), 1);
        deregister_submitted(
            &mut s,
            "d2",
            &[Leave { target: on("lbl-2"), reason: "NodeDeleted".into() }],
            t(5),
        );
        let r = polled(&mut s, &[("d2".into(), true)], t(6));
        assert_eq!(r.released, BTreeSet::from(["node-a".to_owned()]));
    }

    /// Ready needs every desired instance registered, nothing extra owned, nothing in flight and no problem.
    #[test]
    fn conditions_follow_the_sync_state_and_keep_transition_times() {
        let desired: BTreeSet<Target> = [Target::classic("ins-a")].into();
        let mut s = ClbBackendBindingStatus { backends: vec![registered("ins-a")], ..Default::default() };
        summarize(&mut s, Some(3), &desired, false, None, t(10));
        assert_eq!(condition(&s, "Ready").status, "True");
        assert_eq!(condition(&s, "Progressing").status, "False");
        assert_eq!(condition(&s, "Degraded").status, "False");
        assert_eq!((s.desired, s.registered, s.in_flight, s.observed_generation), (1, 1, 0, Some(3)));

        summarize(&mut s, Some(3), &desired, false, None, t(20));
        assert_eq!(
            condition(&s, "Ready").last_transition_time,
            Time(t(10)),
            "unchanged status keeps its time"
        );

        deregister_submitted(&mut s, "5", &[leave("ins-a", "x")], t(30));
        summarize(&mut s, Some(3), &BTreeSet::new(), false, None, t(30));
        assert_eq!(condition(&s, "Ready").status, "False");
        assert_eq!(condition(&s, "Progressing").status, "True");
        assert_eq!(condition(&s, "Ready").last_transition_time, Time(t(30)));

        let p =
            Problem { reason: reasons::CREDENTIALS_NOT_FOUND, message: "Secret shop/creds not found".into() };
        summarize(&mut s, Some(3), &BTreeSet::new(), false, Some(&p), t(40));
        assert_eq!(condition(&s, "Degraded").status, "True");
        assert_eq!(condition(&s, "Degraded").reason, "CredentialsNotFound");
        assert_eq!(condition(&s, "Ready").reason, "CredentialsNotFound");
    }
}
