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
    clb::{self, BatchOutcome, ClbClient, ClbError, Submitted},
};

/// Polls the running tasks that are due. Returns the finished ones as (requestId, succeeded), and the problem
/// if a poll failed (the remaining tasks wait for the next reconcile).
pub async fn poll(
    ctx: &Context,
    clb: &ClbClient,
    key: &Key,
    running: &[u64],
) -> (Vec<(u64, bool)>, Option<Problem>) {
    let mut finished = Vec::new();
    for &request_id in running.iter().filter(|id| ctx.polls.is_due(**id)) {
        let state = match clb.task_result(request_id).await {
            Ok(state) => state,
            Err(e) => {
                warn!(binding = %key, request_id, kind = e.kind(), error = %e, "Polling a CLB task failed");
                return (finished, Some(problem_from(&e)));
            }
        };
        match state {
            clb::TaskState::Running => ctx.polls.polled(request_id),
            clb::TaskState::Succeeded | clb::TaskState::Failed => {
                ctx.polls.finished(request_id);
                finished.push((request_id, state == clb::TaskState::Succeeded));
            }
        }
    }
    (finished, None)
}

/// Submits Deregister tasks for `leaving`, in batches.
pub async fn deregister(
    ctx: &Context,
    clb: &ClbClient,
    key: &Key,
    lb: &str,
    leaving: &[Leave],
) -> Vec<Outcome<Leave>> {
    let ids: Vec<String> = leaving.iter().map(|l| l.instance.clone()).collect();
    let batches = clb.deregister(lb, &ids).await;
    outcomes(
        ctx,
        key,
        "Deregister",
        batches,
        leaving,
        |l| &l.instance,
        |batch| {
            info!(binding = %key, instances = batch.len(), "Already gone from the load balancer");
            Outcome::Gone(batch)
        },
    )
}

/// Submits Register tasks for `joining` with `weight`, in batches.
pub async fn register(
    ctx: &Context,
    clb: &ClbClient,
    key: &Key,
    lb: &str,
    joining: &[Join],
    weight: u32,
) -> Vec<Outcome<Join>> {
    let backends: Vec<(String, u32)> = joining.iter().map(|j| (j.instance.clone(), weight)).collect();
    let batches = clb.register(lb, &backends).await;
    outcomes(
        ctx,
        key,
        "Register",
        batches,
        joining,
        |j| &j.instance,
        |_| {
            let message = format!("load balancer {lb} does not exist");
            Outcome::Failed(Problem { reason: reasons::LOAD_BALANCER_NOT_FOUND, message })
        },
    )
}

/// Turns the batches of a submission into outcomes over `items`; accepted tasks are scheduled for polling.
fn outcomes<T: Clone>(
    ctx: &Context,
    key: &Key,
    action: &'static str,
    batches: Vec<BatchOutcome>,
    items: &[T],
    instance: impl Fn(&T) -> &String,
    gone: impl Fn(Vec<T>) -> Outcome<T>,
) -> Vec<Outcome<T>> {
    batches
        .into_iter()
        .map(|outcome| {
            let batch: Vec<T> =
                items.iter().filter(|i| outcome.instance_ids.contains(instance(i))).cloned().collect();
            match outcome.result {
                Ok(Submitted::Task { request_id }) => {
                    info!(binding = %key, request_id, instances = batch.len(), "{action} submitted");
                    ctx.polls.submitted(request_id);
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

/// The condition a CLB error shows as. Messages come from [`ClbError`]'s Display, which carries no secrets.
pub fn problem_from(e: &ClbError) -> Problem {
    let reason = match (e.code(), e.kind()) {
        (Some(5000), _) => reasons::LOAD_BALANCER_NOT_FOUND,
        (_, "auth") => reasons::AUTH_FAILED,
        _ => reasons::CLB_API_ERROR,
    };
    Problem { reason, message: e.to_string() }
}
