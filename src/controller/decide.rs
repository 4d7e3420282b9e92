//! Pure decisions of a reconcile: whether a problem is still being backed off, what to submit now, which
//! problem the status shows, which drained marks change, whether to write, and when to look again.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
    time::Duration,
};

use jiff::Timestamp;
use tokio::time::Instant;

use super::{
    memory::Trouble,
    observe::NodeMark,
    plan::{self, Plan},
    status::{Problem, reasons},
};
use crate::{
    api::{BackendState, ClbBackendBindingStatus, IntentRecord, TaskAction, TaskRecord, TaskState},
    clb::cloud::Target,
};

/// What a retry is made from: the spec generation, the Secret's version, the retry annotation and the planned
/// changes. The same cause after a problem waits out the backoff; a different one is tried at once.
pub fn cause(generation: Option<i64>, secret: Option<&str>, retry: Option<&str>, plan: &Plan) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (generation, secret, retry).hash(&mut h);
    for leave in &plan.deregister {
        (&leave.target, &leave.reason).hash(&mut h);
    }
    for join in &plan.join {
        (&join.target, &join.node).hash(&mut h);
    }
    h.finish()
}

/// How long an intent left by a crash is given to show on the load balancer before its submission is made
/// again: three times the longest of the recently finished tasks (a call that was accepted shows once its task
/// ends), within 10 s .. 2 min; 30 s without history.
pub fn intent_bound(tasks: &[TaskRecord]) -> Duration {
    let longest = (tasks.iter())
        .filter_map(|t| Some(t.completed_at.as_ref()?.0.duration_since(t.submitted_at.0)))
        .filter_map(|d| Duration::try_from(d).ok())
        .max();
    match longest {
        Some(d) => (d * 3).clamp(Duration::from_secs(10), Duration::from_secs(120)),
        None => Duration::from_secs(30),
    }
}

/// What the load balancer tells about intents left by a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntentVerdict {
    /// Per attempt, the targets whose change shows (a Deregister's gone, a Register's there).
    pub shown: Vec<(String, Vec<Target>)>,
    /// Attempts whose bound has passed: their remaining instances are planned afresh (submitted again once).
    pub expired: Vec<String>,
    /// Until the first remaining bound passes, if any attempt still waits.
    pub wait: Option<Duration>,
}

/// Judges intents against the targets `on_lb` holds at `now`, each given `bound` from its time.
pub fn intents(
    intents: &[IntentRecord],
    on_lb: &BTreeSet<Target>,
    now: Timestamp,
    bound: Duration,
) -> IntentVerdict {
    let mut v = IntentVerdict::default();
    for intent in intents {
        let shows = |t: &Target| match intent.action {
            TaskAction::Deregister => !on_lb.contains(t),
            // Weight changes write no intent (they are safe to repeat); were one there, a bound target is all
            // that can be seen of it.
            TaskAction::Register | TaskAction::Quiesce | TaskAction::Restore => on_lb.contains(t),
        };
        let targets = plan::recorded_targets(&intent.instance_ids, &intent.targets);
        let shown: Vec<Target> = targets.iter().filter(|t| shows(t)).cloned().collect();
        let all_shown = shown.len() == targets.len();
        if !shown.is_empty() {
            v.shown.push((intent.attempt.clone(), shown));
        }
        if all_shown {
            continue;
        }
        let left = intent.at.0.checked_add(bound).ok().map(|end| end.duration_since(now));
        match left.and_then(|l| Duration::try_from(l).ok()).filter(|l| !l.is_zero()) {
            Some(l) => v.wait = Some(v.wait.map_or(l, |w| w.min(l))),
            None => v.expired.push(intent.attempt.clone()),
        }
    }
    v
}

/// The plan without targets that an intent still waits for: they are neither submitted again nor planned the
/// other way until the intent is resolved.
pub fn without_intents(mut plan: Plan, intents: &[IntentRecord]) -> Plan {
    let held: BTreeSet<Target> =
        intents.iter().flat_map(|i| plan::recorded_targets(&i.instance_ids, &i.targets)).collect();
    plan.deregister.retain(|l| !held.contains(&l.target));
    plan.join.retain(|j| !held.contains(&j.target));
    plan
}

/// Whether a task the API does not know (a write that was no task) did what it was for, judged from the
/// targets `on_lb` holds: a Deregister's are all gone, a Register's all there.
pub fn confirmed(task: &TaskRecord, on_lb: &BTreeSet<Target>) -> bool {
    let targets = plan::recorded_targets(&task.instance_ids, &task.targets);
    match task.action {
        TaskAction::Deregister => targets.iter().all(|t| !on_lb.contains(t)),
        TaskAction::Register | TaskAction::Quiesce | TaskAction::Restore => {
            targets.iter().all(|t| on_lb.contains(t))
        }
    }
}

/// Whether the CLB may be asked now.
#[derive(Clone, Debug, PartialEq)]
pub enum Gate {
    /// Yes.
    Open,
    /// No: the same attempt failed lately; the problem stays shown until the retry is due.
    Held {
        /// When the retry is due.
        until: Instant,
        /// The problem the last attempt met.
        problem: Problem,
    },
}

/// The gate for an attempt from `cause` at `now`, given the problem being backed off.
pub fn gate(trouble: Option<&Trouble>, cause: u64, now: Instant) -> Gate {
    match trouble {
        Some(t) if t.cause == cause && t.retry_at > now => {
            Gate::Held { until: t.retry_at, problem: t.problem.clone() }
        }
        _ => Gate::Open,
    }
}

/// Whether a problem is backed off by the binding-wide gate. A failed task is not: its action has its own
/// backoff in the status ([`plan::retry_at`]), and it must not hold back other instances' changes.
pub fn backs_off(problem: &Problem) -> bool {
    problem.reason != reasons::TASK_FAILED
}

/// What to do now with planned changes of one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Nothing is planned, or it waits for changes to settle or for the gate (it is not "pending").
    Idle,
    /// Submit these now.
    Submit(Vec<T>),
    /// Planned, but a failed task of this action is backing off: shown as Progressing.
    Pending,
}

/// Decides about planned changes `planned` of `action`: submitted now unless changes are settling, the gate is
/// held, or failed tasks of the action are backing off.
pub fn step<T>(
    planned: Vec<T>,
    action: TaskAction,
    tasks: &[TaskRecord],
    now: Timestamp,
    wait: bool,
) -> Step<T> {
    if planned.is_empty() || wait {
        return Step::Idle;
    }
    match plan::retry_at(tasks, action) {
        Some(at) if at > now => Step::Pending,
        _ => Step::Submit(planned),
    }
}

/// `Degraded` because of a failed task, while the failed action still has work to retry.
pub fn failed_task_problem(status: &ClbBackendBindingStatus, now: Timestamp) -> Option<Problem> {
    let failed = status.tasks.iter().find(|t| t.state != TaskState::Running)?;
    if failed.state != TaskState::Failed {
        return None;
    }
    let retry_at = plan::retry_at(&status.tasks, failed.action)?;
    let still_relevant = status.backends.iter().any(|b| b.state != BackendState::Registered)
        || status.desired != status.registered
        || retry_at > now;
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

/// How much a problem outweighs others, when a reconcile met several: what the user must fix first.
fn severity(problem: &Problem) -> u8 {
    match problem.reason {
        reasons::INVALID_SPEC
        | reasons::LOAD_BALANCER_TYPE_MISMATCH
        | reasons::LISTENER_NOT_FOUND
        | reasons::SERVICE_PORT_NOT_FOUND => 6,
        reasons::CREDENTIALS_NOT_FOUND => 5,
        reasons::AUTH_FAILED => 4,
        reasons::LOAD_BALANCER_NOT_FOUND => 3,
        reasons::CLB_API_ERROR => 2,
        reasons::TASK_FAILED => 1,
        _ => 0,
    }
}

/// The problem the status shows: the most severe one met (the first of equals).
pub fn worst(problems: impl IntoIterator<Item = Problem>) -> Option<Problem> {
    problems.into_iter().fold(None, |worst: Option<Problem>, p| match &worst {
        Some(w) if severity(w) >= severity(&p) => worst,
        _ => Some(p),
    })
}

/// The drained marks to change: set (to `now`) on released nodes that exist, carry no mark and are owned by no
/// binding any more; removed from claimed nodes that carry one.
pub fn marks(
    claimed: &BTreeSet<String>,
    released: &BTreeSet<String>,
    state: &BTreeMap<String, NodeMark>,
    owned_here: &BTreeSet<String>,
    now: Timestamp,
) -> Vec<(String, Option<String>)> {
    let of = |n: &String| state.get(n).cloned().unwrap_or_default();
    let unmark = claimed.iter().filter(|n| of(n).marked).map(|n| (n.clone(), None));
    let mark = released
        .iter()
        .filter(|n| {
            let s = of(n);
            s.exists && !s.marked && !s.owned_elsewhere && !owned_here.contains(*n)
        })
        .map(|n| (n.clone(), Some(now.to_string())));
    unmark.chain(mark).collect()
}

/// Whether to write the status. While submissions settle, a change of the summary alone (counts, conditions) is
/// left to the reconcile that submits a few tens of milliseconds later: written now, on a busy API server, it
/// would delay that reconcile, and the Deregister with it. Backends and tasks are written at once, always.
pub fn should_write(
    status: &ClbBackendBindingStatus,
    written: &ClbBackendBindingStatus,
    settling: bool,
) -> bool {
    status != written && (!settling || holds_unwritten_changes(status, written))
}

/// Whether `status` owns or submitted something `written` does not show (not just a different summary): what
/// must reach the API server before anything depends on it.
pub fn holds_unwritten_changes(status: &ClbBackendBindingStatus, written: &ClbBackendBindingStatus) -> bool {
    status.backends != written.backends || status.tasks != written.tasks
}

/// What the next look at a binding waits for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timers {
    /// Until each running task's next poll.
    pub polls: Vec<Duration>,
    /// Until membership changes without an event (a NotReady node reaching its limit), or the load balancer
    /// is looked at again for an intent left by a crash.
    pub recheck: Option<Duration>,
    /// Until changes have settled.
    pub settle: Option<Duration>,
    /// Until failed actions with pending work may retry.
    pub retries: Vec<Duration>,
    /// Until a problem is retried.
    pub problem: Option<Duration>,
    /// Until a status held for submissions whose record waits must be written.
    pub record: Option<Duration>,
}

/// The shortest timer, at least 10 ms (so a due timer does not spin); `None` when nothing waits (then the
/// periodic resync applies). A problem's backoff never delays a poll: each timer counts on its own.
pub fn next_delay(t: &Timers) -> Option<Duration> {
    let singles = [t.recheck, t.settle, t.problem, t.record].into_iter().flatten();
    t.polls.iter().chain(&t.retries).copied().chain(singles).min().map(|d| d.max(Duration::from_millis(10)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clb::cloud::Target;
    use crate::controller::{
        fixtures::backend,
        plan::{Join, Leave},
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn problem(reason: &'static str) -> Problem {
        Problem { reason, message: reason.to_owned() }
    }

    fn failed(action: TaskAction, at: i64) -> TaskRecord {
        TaskRecord {
            request_id: "9".into(),
            targets: vec![],
            action,
            instance_ids: vec!["ins-a".into()],
            state: TaskState::Failed,
            submitted_at: Time(Timestamp::from_second(at - 1).unwrap()),
            completed_at: Some(Time(Timestamp::from_second(at).unwrap())),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn intent(action: TaskAction, ids: &[&str], at: i64) -> IntentRecord {
        IntentRecord {
            attempt: "a1".into(),
            action,
            instance_ids: ids.iter().map(|i| i.to_string()).collect(),
            targets: vec![],
            at: Time(t(at)),
        }
    }

    /// An intent whose change already shows on the load balancer is resolved without a resubmission; one that
    /// never shows waits out its bound, then its instances are planned again: exactly one resubmission.
    #[test]
    fn intents_are_confirmed_not_repeated() {
        let bound = Duration::from_secs(30);
        let lb = |ids: &[&str]| ids.iter().map(|i| Target::classic(*i)).collect::<BTreeSet<_>>();
        let gone = intent(TaskAction::Deregister, &["ins-a", "ins-b"], 100);
        let v = intents(std::slice::from_ref(&gone), &lb(&["ins-c"]), t(101), bound);
        assert_eq!(v.shown, [("a1".to_owned(), vec![Target::classic("ins-a"), Target::classic("ins-b")])]);
        assert_eq!((v.expired.len(), v.wait), (0, None), "nothing left to wait for");

        // Never shows: wait until the bound, then give up exactly once.
        let stuck = intent(TaskAction::Deregister, &["ins-a"], 100);
        let leave = Leave { target: Target::classic("ins-a"), reason: "NodeDeleted".into() };
        let planned = || Plan { deregister: vec![leave.clone()], ..Plan::default() };
        let mut resubmissions = 0;
        let mut pending = vec![stuck];
        for now in (100..200).step_by(5) {
            let v = intents(&pending, &lb(&["ins-a"]), t(now), bound);
            if now < 130 {
                assert_eq!(v.wait, Some(Duration::from_secs((130 - now) as u64)), "at {now}");
            }
            pending.retain(|i| !v.expired.contains(&i.attempt));
            let plan = without_intents(planned(), &pending);
            if !plan.deregister.is_empty() && resubmissions == 0 {
                resubmissions += 1;
                assert_eq!(now, 130, "resubmitted when the bound passed");
            }
        }
        assert_eq!(resubmissions, 1);

        // A Register shows when the instance is there; partly shown intents keep waiting for the rest.
        let join = intent(TaskAction::Register, &["ins-a", "ins-b"], 100);
        let v = intents(&[join], &lb(&["ins-a"]), t(110), bound);
        assert_eq!(v.shown, [("a1".to_owned(), vec![Target::classic("ins-a")])]);
        assert_eq!(v.wait, Some(Duration::from_secs(20)));
    }

    /// A task the API does not know is confirmed from the targets: per listener target, not per instance.
    #[test]
    fn unknown_tasks_are_confirmed_from_the_targets() {
        use crate::{api::TargetRef, clb::cloud::Placement};
        let on = |listener: &str| Target {
            instance: "ins-a".into(),
            at: Some(Placement { listener_id: listener.into(), location_id: None, port: 80 }),
        };
        let reference = |listener: &str| TargetRef {
            instance_id: "ins-a".into(),
            listener_id: listener.into(),
            location_id: None,
            port: 80,
        };
        let mut task = failed(TaskAction::Deregister, 100);
        task.targets = vec![reference("lbl-1"), reference("lbl-2")];
        assert!(!confirmed(&task, &BTreeSet::from([on("lbl-2")])), "one listener still has it");
        assert!(confirmed(&task, &BTreeSet::from([on("lbl-3")])));
        task.action = TaskAction::Register;
        assert!(confirmed(&task, &BTreeSet::from([on("lbl-1"), on("lbl-2")])));
        assert!(!confirmed(&task, &BTreeSet::from([on("lbl-1")])));
        // A classic task (no targets recorded) is judged by its instances.
        task.targets.clear();
        assert!(confirmed(&task, &BTreeSet::from([Target::classic("ins-a")])));
    }

    /// The bound follows recent task durations, within 10 s and 2 min.
    #[test]
    fn the_intent_bound_follows_task_durations() {
        assert_eq!(intent_bound(&[]), Duration::from_secs(30));
        let took = |secs: i64| TaskRecord {
            state: TaskState::Succeeded,
            ..failed(TaskAction::Register, 100 + secs)
        };
        let with = |secs: i64| {
            let mut task = took(secs);
            task.submitted_at = Time(t(100));
            task
        };
        assert_eq!(intent_bound(&[with(1)]), Duration::from_secs(10));
        assert_eq!(intent_bound(&[with(1), with(8)]), Duration::from_secs(24));
        assert_eq!(intent_bound(&[with(100)]), Duration::from_secs(120));
    }

    /// The gate holds only the same attempt, and only until its retry is due.
    #[tokio::test(start_paused = true)]
    async fn the_gate_holds_the_same_cause_until_due() {
        let now = Instant::now();
        let trouble = Trouble {
            problem: problem(reasons::LOAD_BALANCER_NOT_FOUND),
            cause: 7,
            failures: 2,
            retry_at: now + Duration::from_secs(4),
        };
        assert!(matches!(gate(Some(&trouble), 7, now), Gate::Held { .. }));
        assert_eq!(gate(Some(&trouble), 8, now), Gate::Open, "a fix (new cause) is tried at once");
        assert_eq!(gate(Some(&trouble), 7, now + Duration::from_secs(4)), Gate::Open, "due");
        assert_eq!(gate(None, 7, now), Gate::Open);
    }

    /// The cause changes with the generation, the Secret, the retry annotation and the planned changes.
    #[test]
    fn causes() {
        let plan = Plan::default();
        let other = Plan {
            join: vec![Join { target: Target::classic("ins-a"), node: "a".into() }],
            ..Plan::default()
        };
        let base = cause(Some(1), Some("5"), None, &plan);
        assert_eq!(base, cause(Some(1), Some("5"), None, &Plan::default()));
        for changed in [
            cause(Some(2), Some("5"), None, &plan),
            cause(Some(1), Some("6"), None, &plan),
            cause(Some(1), Some("5"), Some("now"), &plan),
            cause(Some(1), Some("5"), None, &other),
        ] {
            assert_ne!(base, changed);
        }
    }

    /// Table: what happens to planned work of one action.
    #[test]
    fn steps() {
        let leave = || vec![Leave { target: Target::classic("ins-a"), reason: "NodeDeleted".into() }];
        let history = [failed(TaskAction::Deregister, 100)];
        use TaskAction::*;
        type Case<'a> = (Vec<Leave>, TaskAction, &'a [TaskRecord], i64, bool, Step<Leave>);
        let cases: [Case; 6] = [
            (vec![], Deregister, &[], 0, false, Step::Idle),
            (leave(), Deregister, &[], 0, false, Step::Submit(leave())),
            (leave(), Deregister, &[], 0, true, Step::Idle),
            (leave(), Deregister, &history, 101, false, Step::Pending),
            (leave(), Deregister, &history, 103, false, Step::Submit(leave())),
            (leave(), Register, &history, 101, false, Step::Submit(leave())),
        ];
        for (i, (planned, action, tasks, now, wait, expected)) in cases.into_iter().enumerate() {
            assert_eq!(step(planned, action, tasks, t(now), wait), expected, "case {i}");
        }
    }

    /// The most severe problem wins, whatever the order it was met in.
    #[test]
    fn the_worst_problem_wins() {
        use reasons::*;
        let met = [problem(TASK_FAILED), problem(LOAD_BALANCER_NOT_FOUND), problem(CLB_API_ERROR)];
        assert_eq!(worst(met).map(|p| p.reason), Some(LOAD_BALANCER_NOT_FOUND));
        assert_eq!(
            worst([problem(AUTH_FAILED), problem(INVALID_SPEC)]).map(|p| p.reason),
            Some(INVALID_SPEC)
        );
        assert_eq!(worst([]), None);
        assert!(!backs_off(&problem(TASK_FAILED)) && backs_off(&problem(AUTH_FAILED)));
    }

    /// A failed task is a problem while its action has work to retry, and not once all is in sync again.
    #[test]
    fn failed_tasks_are_problems_while_relevant() {
        let mut s = ClbBackendBindingStatus {
            backends: vec![backend("ins-a", "a", BackendState::Registered)],
            tasks: vec![failed(TaskAction::Deregister, 100)],
            desired: 0,
            registered: 1,
            ..Default::default()
        };
        assert_eq!(failed_task_problem(&s, t(200)).map(|p| p.reason), Some(reasons::TASK_FAILED));
        (s.desired, s.registered) = (1, 1);
        assert_eq!(failed_task_problem(&s, t(200)), None, "in sync and past the retry");
        assert!(failed_task_problem(&s, t(101)).is_some(), "still backing off");
    }

    /// Marks: set on released nodes nobody owns, never twice, never on a missing node; removed when claimed.
    #[test]
    fn drained_marks() {
        let set = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let mark = |exists, marked, owned_elsewhere| NodeMark { exists, marked, owned_elsewhere };
        let state: BTreeMap<String, NodeMark> = [
            ("free", mark(true, false, false)),
            ("gone", mark(false, false, false)),
            ("done", mark(true, true, false)),
            ("shared", mark(true, false, true)),
            ("back", mark(true, true, false)),
        ]
        .into_iter()
        .map(|(n, m)| (n.to_owned(), m))
        .collect();
        let released = set(&["free", "gone", "done", "shared", "mine"]);
        let m = marks(&set(&["back"]), &released, &state, &set(&["mine"]), t(5));
        assert_eq!(m, [("back".to_owned(), None), ("free".to_owned(), Some(t(5).to_string()))]);
    }

    /// Summary-only changes wait while settling; backend and task changes never do.
    #[test]
    fn writes() {
        let written = ClbBackendBindingStatus::default();
        let counted = ClbBackendBindingStatus { desired: 2, ..Default::default() };
        let owned = ClbBackendBindingStatus {
            backends: vec![backend("ins-a", "a", BackendState::Registered)],
            ..Default::default()
        };
        assert!(!should_write(&written, &written, false));
        assert!(should_write(&counted, &written, false));
        assert!(!should_write(&counted, &written, true));
        assert!(should_write(&owned, &written, true));
    }

    /// Table: the next delay is the shortest timer, a problem never delays a poll, nothing waits means resync.
    #[test]
    fn next_delays() {
        let ms = Duration::from_millis;
        let cases = [
            (Timers::default(), None),
            (Timers { polls: vec![ms(950), ms(100)], ..Default::default() }, Some(ms(100))),
            (
                Timers { polls: vec![ms(100)], problem: Some(ms(300_000)), ..Default::default() },
                Some(ms(100)),
            ),
            (Timers { problem: Some(ms(2000)), ..Default::default() }, Some(ms(2000))),
            (Timers { settle: Some(ms(2)), recheck: Some(ms(50)), ..Default::default() }, Some(ms(10))),
            (
                Timers { retries: vec![ms(3000)], recheck: Some(ms(60_000)), ..Default::default() },
                Some(ms(3000)),
            ),
        ];
        for (i, (timers, expected)) in cases.into_iter().enumerate() {
            assert_eq!(next_delay(&timers), expected, "case {i}");
        }
    }
}
