//! The Kubernetes events the operator publishes about a binding: each one a pure builder of its text, so the
//! wording is tested and written once.

use kube::runtime::events::EventType;

use super::status::Problem;
use crate::api::{FORCE_FINALIZE_ANNOTATION, TaskAction};

/// One event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// PascalCase reason.
    pub reason: &'static str,
    /// What the operator was doing.
    pub action: &'static str,
    /// The human-readable text (no secrets).
    pub text: String,
}

impl Note {
    fn new(type_: EventType, reason: &'static str, action: &'static str, text: String) -> Self {
        Self { type_, reason, action, text }
    }

    /// A key that tells one warning from another, for warnings published once per problem.
    pub fn fingerprint(&self) -> String {
        format!("{}:{}", self.reason, self.text)
    }
}

/// A selected node without a CVM instance ID.
pub fn instance_id_missing(node: &str) -> Note {
    Note::new(
        EventType::Warning,
        "InstanceIdMissing",
        "Skip",
        format!(
            "node {node} has no CVM instance ID (annotation clb.tke.dev/instance-id, label \
             cloud.tencent.com/node-instance-id or providerID qcloud:///<zone>/<ins-id>); it is skipped"
        ),
    )
}

/// The binding has no usable credentials.
pub fn credentials_problem(problem: &Problem) -> Note {
    Note::new(EventType::Warning, problem.reason, "Authenticate", problem.message.clone())
}

/// The spec does not fit the load balancer (its type, a listener or rule, a Service's NodePort): nothing is
/// written until it does.
pub fn spec_problem(problem: &Problem) -> Note {
    Note::new(EventType::Warning, problem.reason, "Check", problem.message.clone())
}

/// A deleting binding released by the force-finalize annotation.
pub fn force_finalized(lb: &str, owned: &[String]) -> Note {
    let what = match owned {
        [] => "nothing was left behind".to_owned(),
        _ => format!("left behind {} backend(s): {}", owned.len(), owned.join(", ")),
    };
    Note::new(
        EventType::Warning,
        "ForceFinalized",
        "Finalize",
        format!("released by {FORCE_FINALIZE_ANNOTATION} without touching {lb}; {what}"),
    )
}

/// A deleting binding with `deletionPolicy: Retain` that leaves its backends.
pub fn retained(lb: &str, owned: &[String]) -> Note {
    Note::new(
        EventType::Normal,
        "Retained",
        "Finalize",
        format!("deletionPolicy Retain: left {} backend(s) on {lb}: {}", owned.len(), owned.join(", ")),
    )
}

/// A CLB task finished.
pub fn task_finished(
    action: TaskAction,
    succeeded: bool,
    ids: &[String],
    lb: &str,
    request_id: &str,
) -> Note {
    let ids = ids.join(", ");
    let action_name = match action {
        TaskAction::Register => "Register",
        TaskAction::Deregister => "Deregister",
        TaskAction::Quiesce => "Quiesce",
        TaskAction::Restore => "Restore",
    };
    match (action, succeeded) {
        (TaskAction::Deregister, true) => Note::new(
            EventType::Normal,
            "Deregistered",
            action_name,
            format!("deregistered {ids} from {lb} (task {request_id})"),
        ),
        (TaskAction::Register, true) => Note::new(
            EventType::Normal,
            "Registered",
            action_name,
            format!("registered {ids} with {lb} (task {request_id})"),
        ),
        (TaskAction::Quiesce, true) => Note::new(
            EventType::Normal,
            "Quiesced",
            action_name,
            format!("set {ids} to weight 0 on {lb} before deregistering (task {request_id})"),
        ),
        (TaskAction::Restore, true) => Note::new(
            EventType::Normal,
            "Restored",
            action_name,
            format!("gave {ids} their weight back on {lb} (task {request_id})"),
        ),
        (_, false) => Note::new(
            EventType::Warning,
            "TaskFailed",
            action_name,
            format!("{action_name} of {ids} on {lb} failed (task {request_id}); retrying with backoff"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts name what was done, where, and by which task; what is left behind is listed.
    #[test]
    fn texts() {
        let ids = ["ins-a".to_owned(), "ins-b".to_owned()];
        let n = task_finished(TaskAction::Deregister, true, &ids, "lb-1", "1001");
        assert_eq!((n.reason, n.action), ("Deregistered", "Deregister"));
        assert_eq!(n.text, "deregistered ins-a, ins-b from lb-1 (task 1001)");
        let n = task_finished(TaskAction::Register, false, &ids[..1], "lb-1", "7");
        assert_eq!((n.type_, n.reason), (EventType::Warning, "TaskFailed"));
        assert_eq!(n.text, "Register of ins-a on lb-1 failed (task 7); retrying with backoff");
        assert_eq!(
            force_finalized("lb-1", &[]).text,
            "released by clb.tke.dev/force-finalize without touching lb-1; nothing was left behind"
        );
        assert!(force_finalized("lb-1", &ids).text.ends_with("left behind 2 backend(s): ins-a, ins-b"));
        assert_eq!(
            retained("lb-1", &ids).text,
            "deletionPolicy Retain: left 2 backend(s) on lb-1: ins-a, ins-b"
        );
        assert!(instance_id_missing("n1").text.starts_with("node n1 has no CVM instance ID"));
    }
}
