//! Pure change planning: which targets should serve, what to deregister, what to register or adopt, and when a
//! failed action may retry.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use jiff::Timestamp;

use super::{
    backoff::Exponential,
    membership::{LeaveReason, Membership},
};
use crate::{
    api::{BackendState, BackendStatus, TargetRef, TaskAction, TaskRecord, TaskState},
    clb::cloud::{Placement, Target},
};

/// An owned target that must leave the load balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leave {
    /// The instance, and where it is bound.
    pub target: Target,
    /// Why it leaves, as recorded in the status (e.g. `NodeDeleted`, `Taint/ToBeDeletedByClusterAutoscaler`).
    pub reason: String,
}

/// A desired target the binding does not own yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// The instance, and where it is to be bound.
    pub target: Target,
    /// The node it belongs to.
    pub node: String,
}

/// Why an instance that still serves leaves one of its places: the spec's listeners or ports changed.
pub const SPEC_CHANGED: &str = "SpecChanged";

/// The target an owned backend is.
pub fn target_of(b: &BackendStatus) -> Target {
    let at = match (&b.listener_id, b.port) {
        (Some(listener_id), Some(port)) => {
            Some(Placement { listener_id: listener_id.clone(), location_id: b.location_id.clone(), port })
        }
        _ => None,
    };
    Target { instance: b.instance_id.clone(), at }
}

/// A backend entry for `target`.
pub fn backend(
    target: &Target,
    node: Option<String>,
    state: BackendState,
    request_id: Option<String>,
) -> BackendStatus {
    let at = target.at.as_ref();
    BackendStatus {
        instance_id: target.instance.clone(),
        listener_id: at.map(|a| a.listener_id.clone()),
        location_id: at.and_then(|a| a.location_id.clone()),
        port: at.map(|a| a.port),
        quiesced_until: None,
        node,
        state,
        request_id,
        reason: None,
    }
}

/// The status form of a target on a listener (`None` on a classic CLB).
pub fn target_ref(t: &Target) -> Option<TargetRef> {
    let at = t.at.as_ref()?;
    Some(TargetRef {
        instance_id: t.instance.clone(),
        listener_id: at.listener_id.clone(),
        location_id: at.location_id.clone(),
        port: at.port,
    })
}

/// The targets a task or intent recorded: its listener targets, or its instances on a classic CLB.
pub fn recorded_targets(instance_ids: &[String], targets: &[TargetRef]) -> Vec<Target> {
    if targets.is_empty() {
        return instance_ids.iter().map(Target::classic).collect();
    }
    let at = |r: &TargetRef| Placement {
        listener_id: r.listener_id.clone(),
        location_id: r.location_id.clone(),
        port: r.port,
    };
    targets.iter().map(|r| Target { instance: r.instance_id.clone(), at: Some(at(r)) }).collect()
}

/// Every target that should serve, with its node: each desired instance at each placement, or on its own for a
/// classic CLB (no placements).
pub fn desired_targets(membership: &Membership, placements: &[Placement]) -> BTreeMap<Target, String> {
    let mut out = BTreeMap::new();
    for (instance, node) in &membership.desired {
        if placements.is_empty() {
            out.insert(Target::classic(instance.clone()), node.clone());
        }
        for at in placements {
            out.insert(Target { instance: instance.clone(), at: Some(at.clone()) }, node.clone());
        }
    }
    out
}

/// The changes a binding needs, before the CLB is asked which joining instances it already has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Owned, registered targets that must leave, each with the reason recorded in the status.
    pub deregister: Vec<Leave>,
    /// Desired targets the binding does not own yet, with their node.
    pub join: Vec<Join>,
    /// Registered targets going away that are first set to weight 0 (spec.drain.weightZeroFor).
    pub quiesce: Vec<Leave>,
    /// Quiesced targets whose node came back: their weight is given back.
    pub restore: Vec<Join>,
    /// When the first quiesced target's wait ends, if one waits.
    pub wake: Option<Timestamp>,
}

/// How a binding drains: the weight-0 wait, if any, and the time now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drain {
    /// spec.drain.weightZeroFor.
    pub weight_zero_for: Option<Duration>,
    /// Now, in the status's clock.
    pub now: Option<Timestamp>,
}

/// Compares what should serve (`desired`, from [`desired_targets`]) with what the binding owns. Targets with a
/// task in flight are left alone until the task ends; targets the binding does not own are never planned for
/// removal.
///
/// With a weight-0 wait (`drain`), a going-away listener target is quiesced first (unless its node is gone),
/// deregistered once its wait has passed, and restored if it is desired again meanwhile.
pub fn plan(
    backends: &[BackendStatus],
    membership: &Membership,
    desired: &BTreeMap<Target, String>,
    node_exists: impl Fn(&str) -> bool,
    pod_targeted: bool,
    drain: Drain,
) -> Plan {
    let owned: BTreeSet<Target> = backends.iter().map(target_of).collect();
    let mut plan = Plan::default();
    for b in backends {
        let target = target_of(b);
        let wanted = desired.contains_key(&target);
        let node_gone = b.node.as_deref().is_none_or(|n| !node_exists(n));
        let reason = || match membership.leaving.get(&b.instance_id) {
            Some(signal) => signal.to_string(),
            None if membership.desired.contains_key(&b.instance_id) => SPEC_CHANGED.to_owned(),
            None => match b.node.as_deref() {
                Some(node) if node_exists(node) && pod_targeted => LeaveReason::NoReadyPods,
                Some(node) if node_exists(node) => LeaveReason::NotSelected,
                _ => LeaveReason::NodeDeleted,
            }
            .to_string(),
        };
        match (b.state, wanted) {
            (BackendState::Registered, false) => {
                let leave = Leave { target: target.clone(), reason: reason() };
                match drain.weight_zero_for {
                    Some(_) if target.at.is_some() && !node_gone => plan.quiesce.push(leave),
                    _ => plan.deregister.push(leave),
                }
            }
            (BackendState::Quiesced, false) => {
                let until = b.quiesced_until.as_ref().map(|t| t.0);
                let due = match (drain.weight_zero_for, until, drain.now) {
                    (Some(_), Some(until), Some(now)) if !node_gone && until > now => {
                        plan.wake = Some(plan.wake.map_or(until, |w: Timestamp| w.min(until)));
                        false
                    }
                    _ => true,
                };
                if due {
                    let reason = b.reason.clone().unwrap_or_else(reason);
                    plan.deregister.push(Leave { target: target.clone(), reason });
                }
            }
            (BackendState::Quiesced, true) => {
                let node = desired.get(&target).cloned().unwrap_or_default();
                plan.restore.push(Join { target: target.clone(), node });
            }
            _ => {}
        }
    }
    plan.join = desired
        .iter()
        .filter(|(t, _)| !owned.contains(*t))
        .map(|(t, node)| Join { target: t.clone(), node: node.clone() })
        .collect();
    plan
}

impl Plan {
    /// Whether nothing needs to change now.
    pub fn is_empty(&self) -> bool {
        self.deregister.is_empty()
            && self.join.is_empty()
            && self.quiesce.is_empty()
            && self.restore.is_empty()
    }
}

/// Splits joining targets into those already on the load balancer (adopted without a Register call) and
/// those to register.
pub fn split_join(join: Vec<Join>, on_load_balancer: &BTreeSet<Target>) -> (Vec<Join>, Vec<Join>) {
    join.into_iter().partition(|j| on_load_balancer.contains(&j.target))
}

/// Retries of a failing action: 2 s after the first failed task, doubling with each consecutive one, 5 min at
/// most.
pub const TASK_RETRY: Exponential =
    Exponential { initial: Duration::from_secs(2), max: Duration::from_secs(300) };

/// When `action` may be submitted again: after the newest run of consecutive failed tasks of that action, back
/// off exponentially from the last failure. `None` means at once. Derived from the status, so a restart keeps it.
pub fn retry_at(tasks: &[TaskRecord], action: TaskAction) -> Option<Timestamp> {
    let mut finished = tasks.iter().filter(|t| t.action == action && t.state != TaskState::Running);
    let newest = finished.next().filter(|t| t.state == TaskState::Failed)?;
    let failures = 1 + finished.take_while(|t| t.state == TaskState::Failed).count() as u32;
    let delay = TASK_RETRY.delay(failures);
    let since = newest.completed_at.as_ref().map(|t| t.0).unwrap_or(newest.submitted_at.0);
    // Status times come back from the API server truncated to whole seconds; counting from the end of that
    // second keeps every retry at least `delay` after the real failure.
    since.checked_add(delay + Duration::from_secs(1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::controller::fixtures::backend;

    /// The plan for a classic CLB: each desired instance is one target.
    fn classic_plan(
        backends: &[BackendStatus],
        m: &Membership,
        node_exists: impl Fn(&str) -> bool,
        pod_targeted: bool,
    ) -> Plan {
        plan(backends, m, &desired_targets(m, &[]), node_exists, pod_targeted, Drain::default())
    }

    fn membership(desired: &[(&str, &str)], leaving: &[(&str, LeaveReason)]) -> Membership {
        Membership {
            desired: desired.iter().map(|(i, n)| (i.to_string(), n.to_string())).collect(),
            leaving: leaving.iter().map(|(i, r)| (i.to_string(), r.clone())).collect(),
            ..Default::default()
        }
    }

    /// Owned instances that are no longer desired leave with the right reason; desired ones not owned join.
    #[test]
    fn plan_deregisters_owned_leavers_and_joins_new_instances() {
        let backends = [
            backend("ins-a", "a", BackendState::Registered),
            backend("ins-b", "b", BackendState::Registered),
            backend("ins-c", "c", BackendState::Registered),
            backend("ins-d", "d", BackendState::Registered),
        ];
        let m = membership(
            &[("ins-a", "a"), ("ins-e", "e")],
            &[("ins-b", LeaveReason::Taint("karpenter.sh/disrupted".into()))],
        );
        let p = classic_plan(&backends, &m, |n| n != "c", false);
        let leave = |i: &str, r: &str| Leave { target: Target::classic(i), reason: r.into() };
        assert_eq!(
            p.deregister,
            [
                leave("ins-b", "Taint/karpenter.sh/disrupted"),
                leave("ins-c", "NodeDeleted"),
                leave("ins-d", "NotSelected"),
            ]
        );
        assert_eq!(p.join, [Join { target: Target::classic("ins-e"), node: "e".into() }]);
        let p = classic_plan(&backends[3..], &membership(&[], &[]), |_| true, true);
        assert_eq!(p.deregister[0].reason, "NoReadyPods");
    }

    /// Instances with a task in flight are not planned again, in either direction.
    #[test]
    fn plan_leaves_instances_with_running_tasks_alone() {
        let backends = [
            backend("ins-a", "a", BackendState::Registering),
            backend("ins-b", "b", BackendState::Deregistering),
        ];
        let p = classic_plan(&backends, &membership(&[("ins-b", "b")], &[]), |_| true, false);
        assert_eq!(p, Plan::default());
    }

    /// A binding with nothing to do plans nothing: the steady state makes no CLB call.
    #[test]
    fn plan_is_empty_when_in_sync() {
        let backends = [backend("ins-a", "a", BackendState::Registered)];
        assert_eq!(
            classic_plan(&backends, &membership(&[("ins-a", "a")], &[]), |_| true, false),
            Plan::default()
        );
    }

    /// With a weight-0 wait, a going-away listener target is quiesced first, deregistered once its wait has
    /// passed (at once if its node is gone), and restored when it is desired again; classic targets and those of
    /// deleted nodes go at once.
    #[test]
    fn weight_zero_quiesces_then_deregisters_or_restores() {
        let t = |s| Timestamp::from_second(s).unwrap();
        let on = |i: &str| Target {
            instance: i.into(),
            at: Some(Placement { listener_id: "lbl-1".into(), location_id: None, port: 80 }),
        };
        let listed = |i: &str, node: &str, state, until: Option<i64>| {
            let mut b = backend(i, node, state);
            (b.listener_id, b.port) = (Some("lbl-1".into()), Some(80));
            b.quiesced_until = until.map(|u| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(u)));
            b
        };
        let backends = [
            listed("ins-a", "a", BackendState::Registered, None),
            listed("ins-b", "b", BackendState::Quiesced, Some(100)),
            listed("ins-c", "c", BackendState::Quiesced, Some(200)),
            listed("ins-d", "d", BackendState::Quiesced, Some(200)),
            listed("ins-e", "gone", BackendState::Registered, None),
            backend("ins-f", "f", BackendState::Registered),
        ];
        let m = membership(&[("ins-d", "d")], &[]);
        let desired: BTreeMap<Target, String> = [(on("ins-d"), "d".to_owned())].into();
        let drain = Drain { weight_zero_for: Some(Duration::from_secs(30)), now: Some(t(150)) };
        let p = plan(&backends, &m, &desired, |n| n != "gone", false, drain);
        let targets = |l: &[Leave]| l.iter().map(|l| l.target.instance.clone()).collect::<Vec<_>>();
        assert_eq!(targets(&p.quiesce), ["ins-a"]);
        assert_eq!(targets(&p.deregister), ["ins-b", "ins-e", "ins-f"], "wait over, node gone, classic");
        assert_eq!(p.restore, [Join { target: on("ins-d"), node: "d".into() }]);
        assert_eq!(p.wake, Some(t(200)), "ins-c waits until 200");
        let without =
            plan(&backends, &m, &desired, |n| n != "gone", false, Drain { weight_zero_for: None, ..drain });
        assert!(without.quiesce.is_empty() && without.wake.is_none(), "unset: everything leaves at once");
    }

    /// Instances already on the load balancer are adopted rather than registered again.
    #[test]
    fn split_join_adopts_instances_already_on_the_load_balancer() {
        let join = |i: &str, n: &str| Join { target: Target::classic(i), node: n.into() };
        let (adopt, register) =
            split_join(vec![join("ins-a", "a"), join("ins-b", "b")], &[Target::classic("ins-b")].into());
        assert_eq!(adopt, [join("ins-b", "b")]);
        assert_eq!(register, [join("ins-a", "a")]);
    }

    fn task(action: TaskAction, state: TaskState, completed_secs: i64) -> TaskRecord {
        TaskRecord {
            request_id: "1".into(),
            targets: vec![],
            action,
            instance_ids: vec![],
            state,
            submitted_at: Time(Timestamp::from_second(completed_secs - 1).unwrap()),
            completed_at: Some(Time(Timestamp::from_second(completed_secs).unwrap())),
        }
    }

    /// Consecutive failures of an action double the wait before it is retried; a success resets it.
    #[test]
    fn retry_backs_off_exponentially_per_action() {
        use TaskAction::*;
        use TaskState::*;
        assert_eq!(retry_at(&[], Deregister), None);
        let t = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(retry_at(&[task(Deregister, Failed, 100)], Deregister), Some(t(103)));
        let history =
            [task(Deregister, Failed, 100), task(Register, Succeeded, 90), task(Deregister, Failed, 80)];
        assert_eq!(retry_at(&history, Deregister), Some(t(105)));
        assert_eq!(retry_at(&history, Register), None);
        let recovered = [task(Deregister, Succeeded, 100), task(Deregister, Failed, 80)];
        assert_eq!(retry_at(&recovered, Deregister), None);
        let many: Vec<_> = (0..30).map(|i| task(Deregister, Failed, 1000 - i)).collect();
        assert_eq!(retry_at(&many, Deregister), Some(t(1301)));
    }
}
