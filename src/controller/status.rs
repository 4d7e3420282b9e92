//! Pure status bookkeeping: recording submitted and finished tasks, the counters, and the conditions.

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::plan::{Join, Leave};
use crate::api::{
    BackendState, BackendStatus, ClbBackendBindingStatus, IntentRecord, TaskAction, TaskRecord, TaskState,
};

/// How many finished tasks the status keeps, newest first, after the running ones.
pub const TASK_HISTORY: usize = 10;

/// Records a submitted Deregister task: its instances turn `Deregistering` with the task's requestId.
pub fn deregister_submitted(
    status: &mut ClbBackendBindingStatus,
    request_id: u64,
    instances: &[Leave],
    now: Timestamp,
) {
    for leave in instances {
        if let Some(b) = status.backends.iter_mut().find(|b| b.instance_id == leave.instance) {
            b.state = BackendState::Deregistering;
            b.request_id = Some(request_id);
            b.reason = Some(leave.reason.clone());
        }
    }
    push_running(
        status,
        request_id,
        TaskAction::Deregister,
        instances.iter().map(|l| l.instance.clone()),
        now,
    );
}

/// Records a submitted Register task: its instances join `backends` as `Registering`.
pub fn register_submitted(
    status: &mut ClbBackendBindingStatus,
    request_id: u64,
    instances: &[Join],
    now: Timestamp,
) {
    for join in instances {
        status.backends.push(BackendStatus {
            instance_id: join.instance.clone(),
            node: Some(join.node.clone()),
            state: BackendState::Registering,
            request_id: Some(request_id),
            reason: None,
        });
    }
    push_running(status, request_id, TaskAction::Register, instances.iter().map(|j| j.instance.clone()), now);
}

/// Records instances that are owned from now on without a Register call, because they already serve.
pub fn adopted(status: &mut ClbBackendBindingStatus, instances: &[Join]) {
    for join in instances {
        status.backends.push(BackendStatus {
            instance_id: join.instance.clone(),
            node: Some(join.node.clone()),
            state: BackendState::Registered,
            request_id: None,
            reason: None,
        });
    }
}

/// Drops instances the CLB says are already gone (code 5000 on Deregister): there is nothing left to own.
pub fn already_gone(status: &mut ClbBackendBindingStatus, instances: &[String]) {
    status.backends.retain(|b| !instances.contains(&b.instance_id));
}

fn push_running(
    status: &mut ClbBackendBindingStatus,
    request_id: u64,
    action: TaskAction,
    instance_ids: impl Iterator<Item = String>,
    now: Timestamp,
) {
    status.tasks.insert(
        0,
        TaskRecord {
            request_id,
            action,
            instance_ids: instance_ids.collect(),
            state: TaskState::Running,
            submitted_at: Time(now),
            completed_at: None,
        },
    );
}

/// Applies a finished task's outcome. Success moves its instances on (Registered, or out of `backends`); failure
/// puts them back where they were (Registered, or not owned) so that the next reconcile retries them. Returns the
/// task's action and instances, or `None` if no such running task is recorded.
pub fn task_finished(
    status: &mut ClbBackendBindingStatus,
    request_id: u64,
    succeeded: bool,
    now: Timestamp,
) -> Option<(TaskAction, Vec<String>)> {
    let pos =
        status.tasks.iter().position(|t| t.request_id == request_id && t.state == TaskState::Running)?;
    let mut task = status.tasks.remove(pos);
    task.state = if succeeded { TaskState::Succeeded } else { TaskState::Failed };
    task.completed_at = Some(Time(now));
    let mine = |b: &BackendStatus| b.request_id == Some(request_id);
    match (task.action, succeeded) {
        (TaskAction::Deregister, true) | (TaskAction::Register, false) => {
            status.backends.retain(|b| !mine(b))
        }
        (TaskAction::Register, true) | (TaskAction::Deregister, false) => {
            for b in status.backends.iter_mut().filter(|b| mine(b)) {
                b.state = BackendState::Registered;
                b.request_id = None;
                b.reason = None;
            }
        }
    }
    let outcome = (task.action, task.instance_ids.clone());
    let first_finished = status.tasks.iter().take_while(|t| t.state == TaskState::Running).count();
    status.tasks.insert(first_finished, task);
    status.tasks.truncate(first_finished + TASK_HISTORY);
    Some(outcome)
}

/// The running tasks' requestIds.
pub fn running_tasks(status: &ClbBackendBindingStatus) -> Vec<u64> {
    status.tasks.iter().filter(|t| t.state == TaskState::Running).map(|t| t.request_id).collect()
}

/// What one batch of a submission came to (reported by the act step, recorded here).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<T> {
    /// The CLB accepted the batch as a task.
    Task {
        /// The task's requestId.
        request_id: u64,
        /// What the task acts on.
        batch: Vec<T>,
    },
    /// The instances (or, for a Register, the load balancer) do not exist on the CLB.
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
    pub finished: Vec<(u64, TaskAction, bool, Vec<String>)>,
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
pub fn polled(status: &mut ClbBackendBindingStatus, finished: &[(u64, bool)], now: Timestamp) -> Recorded {
    let mut r = Recorded::default();
    for &(request_id, succeeded) in finished {
        let nodes = nodes_of(status, |b| b.request_id == Some(request_id));
        let Some((action, ids)) = task_finished(status, request_id, succeeded, now) else { continue };
        match (action, succeeded) {
            (TaskAction::Deregister, true) => r.released.extend(nodes),
            (TaskAction::Register, true) => r.claimed.extend(nodes),
            _ => {}
        }
        r.finished.push((request_id, action, succeeded, ids));
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
            Outcome::Task { request_id, batch } => deregister_submitted(status, *request_id, batch, now),
            Outcome::Gone(batch) => {
                let ids: Vec<String> = batch.iter().map(|l| l.instance.clone()).collect();
                r.released.extend(nodes_of(status, |b| ids.contains(&b.instance_id)));
                already_gone(status, &ids);
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
                register_submitted(status, *request_id, batch, now);
                r.claimed.extend(batch.iter().map(|j| j.node.clone()));
            }
            Outcome::Gone(_) => {}
            Outcome::Failed(problem) => r.problems.push(problem.clone()),
        }
    }
    r
}

/// Records that a submission of `action` for `instances` is about to be made; returns its attempt id.
pub fn intend(
    status: &mut ClbBackendBindingStatus,
    action: TaskAction,
    instances: Vec<String>,
    now: Timestamp,
) -> String {
    let attempt = format!("{:016x}", rand::random::<u64>());
    status.intents.push(IntentRecord {
        attempt: attempt.clone(),
        action,
        instance_ids: instances,
        at: Time(now),
    });
    attempt
}

/// Drops an intent: its submission was made and recorded, or is given up.
pub fn intent_done(status: &mut ClbBackendBindingStatus, attempt: &str) {
    status.intents.retain(|i| i.attempt != attempt);
}

/// Applies what the load balancer shows of intents left by a crash: `shown` instances of each attempt made the
/// change (a Deregister's are gone: no longer owned; a Register's are there: owned, on the node `node_of` says);
/// attempts in `drop` are given up, so that their remaining instances are planned afresh.
pub fn intents_resolved(
    status: &mut ClbBackendBindingStatus,
    shown: &[(String, Vec<String>)],
    drop: &[String],
    node_of: impl Fn(&str) -> Option<String>,
) -> Recorded {
    let mut r = Recorded::default();
    for (attempt, ids) in shown {
        let Some(intent) = status.intents.iter_mut().find(|i| &i.attempt == attempt) else { continue };
        intent.instance_ids.retain(|i| !ids.contains(i));
        match intent.action {
            TaskAction::Deregister => {
                r.released.extend(nodes_of(status, |b| ids.contains(&b.instance_id)));
                already_gone(status, ids);
            }
            TaskAction::Register => {
                let owned: BTreeSet<String> = status.backends.iter().map(|b| b.instance_id.clone()).collect();
                for id in ids.iter().filter(|id| !owned.contains(*id)) {
                    let node = node_of(id);
                    r.claimed.extend(node.clone());
                    status.backends.push(BackendStatus {
                        instance_id: id.clone(),
                        node,
                        state: BackendState::Registered,
                        request_id: None,
                        reason: None,
                    });
                }
            }
        }
    }
    status.intents.retain(|i| !i.instance_ids.is_empty() && !drop.contains(&i.attempt));
    r
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
    /// The binding is being deleted.
    pub const DELETING: &str = "Deleting";
}

/// Refreshes the counters and the three conditions. `desired` is the set of instances that should serve;
/// `pending` says whether planned changes are waiting (e.g. a retry back-off). Transition times stay unchanged
/// for conditions whose status did not change.
pub fn summarize(
    status: &mut ClbBackendBindingStatus,
    generation: Option<i64>,
    desired: &BTreeSet<String>,
    pending: bool,
    problem: Option<&Problem>,
    now: Timestamp,
) {
    let registered: BTreeSet<&str> = status
        .backends
        .iter()
        .filter(|b| b.state == BackendState::Registered)
        .map(|b| b.instance_id.as_str())
        .collect();
    let in_flight = status.tasks.iter().filter(|t| t.state == TaskState::Running).count();
    status.desired = desired.len() as i32;
    status.registered = registered.len() as i32;
    status.in_flight = in_flight as i32;
    status.observed_generation = generation;

    let in_sync = in_flight == 0
        && !pending
        && status.backends.len() == desired.len()
        && desired.iter().all(|d| registered.contains(d.as_str()));
    let (ready, ready_reason, ready_msg) = match (problem, in_sync) {
        (Some(p), _) => (false, p.reason, p.message.clone()),
        (None, true) => (true, reasons::IN_SYNC, format!("{} instance(s) registered", registered.len())),
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
        Leave { instance: id.into(), reason: reason.into() }
    }

    fn join(id: &str, node: &str) -> Join {
        Join { instance: id.into(), node: node.into() }
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
        deregister_submitted(&mut s, 7, &[leave("ins-a", "NodeDeleted")], t(10));
        assert_eq!(s.backends[0].state, BackendState::Deregistering);
        assert_eq!(s.backends[0].request_id, Some(7));
        assert_eq!(s.backends[0].reason.as_deref(), Some("NodeDeleted"));
        assert_eq!(running_tasks(&s), [7]);

        let done = task_finished(&mut s, 7, true, t(11));
        assert_eq!(done, Some((TaskAction::Deregister, vec!["ins-a".to_string()])));
        assert_eq!(s.backends, [registered("ins-b")]);
        assert_eq!(s.tasks[0].state, TaskState::Succeeded);
        assert_eq!(s.tasks[0].completed_at, Some(Time(t(11))));
        assert_eq!(task_finished(&mut s, 7, true, t(12)), None, "a finished task is not finished twice");
    }

    /// A failed task leaves its instances in their previous state.
    #[test]
    fn failed_tasks_restore_previous_state() {
        let mut s = ClbBackendBindingStatus { backends: vec![registered("ins-a")], ..Default::default() };
        deregister_submitted(&mut s, 1, &[leave("ins-a", "NotSelected")], t(1));
        register_submitted(&mut s, 2, &[join("ins-b", "node-b")], t(1));
        assert_eq!(running_tasks(&s), [2, 1]);
        task_finished(&mut s, 1, false, t(2));
        task_finished(&mut s, 2, false, t(2));
        assert_eq!(s.backends, [registered("ins-a")]);
        assert!(s.tasks.iter().all(|t| t.state == TaskState::Failed));
    }

    /// Running tasks stay first; finished history is newest first and bounded.
    #[test]
    fn task_history_is_ordered_and_bounded() {
        let mut s = ClbBackendBindingStatus::default();
        for id in 0..15 {
            register_submitted(&mut s, id, &[join(&format!("ins-{id}"), "n")], t(id as i64));
        }
        for id in 0..14 {
            task_finished(&mut s, id, true, t(100 + id as i64));
        }
        assert_eq!(s.tasks.len(), 1 + TASK_HISTORY);
        assert_eq!(s.tasks[0].request_id, 14);
        assert_eq!(s.tasks[0].state, TaskState::Running);
        assert_eq!(s.tasks[1].request_id, 13);
        assert_eq!(s.backends.iter().filter(|b| b.state == BackendState::Registered).count(), 14);
    }

    /// Ready needs every desired instance registered, nothing extra owned, nothing in flight and no problem.
    #[test]
    fn conditions_follow_the_sync_state_and_keep_transition_times() {
        let desired: BTreeSet<String> = ["ins-a".to_string()].into();
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

        deregister_submitted(&mut s, 5, &[leave("ins-a", "x")], t(30));
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
