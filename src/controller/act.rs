//! The only place that writes: CLB task polls and submissions, the status patch, the nodes' drained marks.
//! Each function does its I/O and reports what happened as a value; deciding about it is left to the caller.

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use tracing::{info, warn};

use super::{
    Context,
    error::{Error, Result},
    memory::Key,
    plan::{Join, Leave},
    status::{Outcome, Problem, reasons},
};
use crate::{
    api::{ClbBackendBinding, ClbBackendBindingStatus, DEREGISTERED_AT_ANNOTATION, MANAGER},
    clb::cloud::{Batch, Cloud, CloudError, Submitted, Target, TaskState},
};

/// Polls the running tasks that are due. Returns the finished ones as (requestId, succeeded), those the API does
/// not know (to be confirmed from the targets), and the problem if a poll failed (the remaining tasks wait for
/// the next reconcile).
pub async fn poll(ctx: &Context, cloud: &dyn Cloud, key: &Key, running: &[String]) -> Polled {
    let mut polled = Polled::default();
    for request_id in running.iter().filter(|id| ctx.polls.is_due(id)) {
        let state = match cloud.task(request_id).await {
            Ok(state) => state,
            Err(e) => {
                warn!(binding = %key, request_id, kind = e.kind(), error = %e, "Polling a CLB task failed");
                polled.problem = Some(problem_from(&e));
                return polled;
            }
        };
        match state {
            TaskState::Running => ctx.polls.polled(request_id),
            TaskState::Succeeded | TaskState::Failed => {
                ctx.polls.finished(request_id);
                polled.finished.push((request_id.clone(), state == TaskState::Succeeded));
            }
            TaskState::Unknown => {
                ctx.polls.finished(request_id);
                polled.unknown.push(request_id.clone());
            }
        }
    }
    polled
}

/// What polling found.
#[derive(Debug, Default)]
pub struct Polled {
    /// Finished tasks: (requestId, succeeded).
    pub finished: Vec<(String, bool)>,
    /// Tasks the API does not know.
    pub unknown: Vec<String>,
    /// Why polling stopped early.
    pub problem: Option<Problem>,
}

/// Submits Deregister tasks for `leaving`, in as few calls as the API allows.
pub async fn deregister(
    ctx: &Context,
    cloud: &dyn Cloud,
    key: &Key,
    lb: &str,
    leaving: &[Leave],
) -> Vec<Outcome<Leave>> {
    let targets: Vec<Target> = leaving.iter().map(|l| l.target.clone()).collect();
    let batches = cloud.deregister(lb, &targets).await;
    outcomes(
        ctx,
        key,
        "Deregister",
        batches,
        leaving,
        |l| &l.target,
        |batch| {
            info!(binding = %key, targets = batch.len(), "Already gone from the load balancer");
            Outcome::Gone(batch)
        },
    )
}

/// Submits Register tasks for `joining` with `weight`, in as few calls as the API allows.
pub async fn register(
    ctx: &Context,
    cloud: &dyn Cloud,
    key: &Key,
    lb: &str,
    joining: &[Join],
    weight: u32,
) -> Vec<Outcome<Join>> {
    let targets: Vec<Target> = joining.iter().map(|j| j.target.clone()).collect();
    let batches = cloud.register(lb, &targets, weight).await;
    outcomes(
        ctx,
        key,
        "Register",
        batches,
        joining,
        |j| &j.target,
        |_| {
            let message = format!("load balancer {lb} does not exist");
            Outcome::Failed(Problem { reason: reasons::LOAD_BALANCER_NOT_FOUND, message })
        },
    )
}

/// Sets the weight of the targets of `items` (`action` names it in logs: Quiesce or Restore).
#[allow(clippy::too_many_arguments)]
pub async fn set_weight<T: Clone>(
    ctx: &Context,
    cloud: &dyn Cloud,
    key: &Key,
    lb: &str,
    items: &[T],
    target: impl Fn(&T) -> &Target,
    weight: u32,
    action: &'static str,
) -> Vec<Outcome<T>> {
    let targets: Vec<Target> = items.iter().map(|i| target(i).clone()).collect();
    let batches = cloud.set_weight(lb, &targets, weight).await;
    outcomes(ctx, key, action, batches, items, target, |_| {
        let message = format!("load balancer {lb} does not exist");
        Outcome::Failed(Problem { reason: reasons::LOAD_BALANCER_NOT_FOUND, message })
    })
}

/// Turns the calls of a submission into outcomes over `items`; accepted tasks are scheduled for polling.
fn outcomes<T: Clone>(
    ctx: &Context,
    key: &Key,
    action: &'static str,
    batches: Vec<Batch>,
    items: &[T],
    target: impl Fn(&T) -> &Target,
    gone: impl Fn(Vec<T>) -> Outcome<T>,
) -> Vec<Outcome<T>> {
    batches
        .into_iter()
        .map(|outcome| {
            let batch: Vec<T> =
                items.iter().filter(|i| outcome.targets.contains(target(i))).cloned().collect();
            match outcome.result {
                Ok(Submitted::Task(request_id)) => {
                    info!(binding = %key, request_id, targets = batch.len(), "{action} submitted");
                    ctx.polls.submitted(&request_id);
                    Outcome::Task { request_id, batch }
                }
                Ok(Submitted::AlreadyGone) => gone(batch),
                Err(e) => {
                    warn!(binding = %key, kind = e.kind(), error = %e, "{action} failed");
                    Outcome::Failed(problem_from(&e))
                }
            }
        })
        .collect()
}

/// Writes the whole status with server-side apply and remembers it, so that a reconcile that starts before the
/// watch delivers this write still sees it.
pub async fn write_status(
    ctx: &Context,
    binding: &ClbBackendBinding,
    status: &ClbBackendBindingStatus,
) -> Result<()> {
    let api: Api<ClbBackendBinding> =
        Api::namespaced(ctx.client.clone(), &binding.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": ClbBackendBinding::api_version(&()),
        "kind": ClbBackendBinding::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(MANAGER).force();
    let updated = api
        .patch_status(&binding.name_any(), &params, &Patch::Apply(&patch))
        .await
        .map_err(Error::kube("writing the binding's status"))?;
    ctx.memory.wrote(
        &kube::runtime::reflector::ObjectRef::from_obj(binding),
        updated.resource_version(),
        status,
    );
    Ok(())
}

/// Sets (`Some(time)`) or removes (`None`) the drained mark on nodes. Failures are logged: the mark is a
/// courtesy to drain tooling, and the next change retries it.
pub async fn mark_nodes(ctx: &Context, marks: &[(String, Option<String>)]) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    for (node, value) in marks {
        let patch = serde_json::json!({"metadata": {"annotations": {DEREGISTERED_AT_ANNOTATION: value}}});
        match nodes.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => info!(node, drained = value.is_some(), "Updated the node's drained mark"),
            Err(e) => warn!(node, error = %e, "Updating the node's drained mark failed"),
        }
    }
}

/// The condition a CLB error shows as. Messages come from [`CloudError`]'s Display, which carries no secrets.
pub fn problem_from(e: &CloudError) -> Problem {
    let reason = if e.lb_not_found() {
        reasons::LOAD_BALANCER_NOT_FOUND
    } else if e.is_auth() {
        reasons::AUTH_FAILED
    } else {
        reasons::CLB_API_ERROR
    };
    Problem { reason, message: e.to_string() }
}
