//! [`Cloud`] over CLB API 2.0: classic load balancers only, instances bound to the load balancer as a whole.

use std::collections::BTreeSet;

use futures::{FutureExt, future::BoxFuture};

use super::{
    BatchOutcome, ClbClient,
    cloud::{Batch, Cloud, CloudError, Kind, LoadBalancerView, Submitted, Target, TaskState},
};

/// API 2.0 for one region and one set of credentials.
pub struct V2Cloud(pub ClbClient);

/// API 2.0 cannot place targets on listeners; such a request never reaches the API.
fn listeners_unsupported(targets: &[Target]) -> Option<Vec<Batch>> {
    targets.iter().any(|t| t.at.is_some()).then(|| {
        let message = "listeners need CLB API 3.0 (run with --clb-api v3)".to_owned();
        vec![Batch { targets: targets.to_vec(), result: Err(CloudError::Unsupported(message)) }]
    })
}

fn batches(outcomes: Vec<BatchOutcome>) -> Vec<Batch> {
    outcomes
        .into_iter()
        .map(|o| Batch {
            targets: o.instance_ids.into_iter().map(Target::classic).collect(),
            result: o
                .result
                .map(|s| match s {
                    super::Submitted::Task { request_id } => Submitted::Task(request_id.to_string()),
                    super::Submitted::AlreadyGone => Submitted::AlreadyGone,
                })
                .map_err(CloudError::V2),
        })
        .collect()
}

impl Cloud for V2Cloud {
    fn api(&self) -> &'static str {
        "v2"
    }

    fn describe(&self, lb: &str) -> BoxFuture<'_, Result<Option<LoadBalancerView>, CloudError>> {
        let lb = lb.to_owned();
        async move {
            let found = self.0.describe_load_balancers(std::slice::from_ref(&lb)).await?;
            Ok(found.into_iter().find(|l| l.load_balancer_id == lb).map(|l| LoadBalancerView {
                kind: if l.forward == Some(1) { Kind::Application } else { Kind::Classic },
                listeners: Vec::new(),
            }))
        }
        .boxed()
    }

    fn targets<'a>(
        &'a self,
        lb: &'a str,
        listeners: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeSet<Target>, CloudError>> {
        async move {
            if !listeners.is_empty() {
                return Err(CloudError::Unsupported(
                    "listeners need CLB API 3.0 (run with --clb-api v3)".into(),
                ));
            }
            let backends = self.0.describe_backends(lb).await?;
            Ok(backends.into_iter().map(|b| Target::classic(b.instance_id)).collect())
        }
        .boxed()
    }

    fn register<'a>(&'a self, lb: &'a str, targets: &'a [Target], weight: u32) -> BoxFuture<'a, Vec<Batch>> {
        async move {
            if let Some(refused) = listeners_unsupported(targets) {
                return refused;
            }
            let backends: Vec<(String, u32)> = targets.iter().map(|t| (t.instance.clone(), weight)).collect();
            batches(self.0.register(lb, &backends).await)
        }
        .boxed()
    }

    fn deregister<'a>(&'a self, lb: &'a str, targets: &'a [Target]) -> BoxFuture<'a, Vec<Batch>> {
        async move {
            if let Some(refused) = listeners_unsupported(targets) {
                return refused;
            }
            let ids: Vec<String> = targets.iter().map(|t| t.instance.clone()).collect();
            batches(self.0.deregister(lb, &ids).await)
        }
        .boxed()
    }

    fn set_weight<'a>(
        &'a self,
        _lb: &'a str,
        targets: &'a [Target],
        _weight: u32,
    ) -> BoxFuture<'a, Vec<Batch>> {
        let message = "changing weights needs CLB API 3.0 and an application CLB".to_owned();
        let refused =
            vec![Batch { targets: targets.to_vec(), result: Err(CloudError::Unsupported(message)) }];
        futures::future::ready(refused).boxed()
    }

    fn task<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<TaskState, CloudError>> {
        async move {
            // An id this API did not hand out (not a number) cannot be one of its tasks.
            let Ok(request_id) = id.parse::<u64>() else { return Ok(TaskState::Unknown) };
            Ok(match self.0.task_result(request_id).await? {
                super::TaskState::Running => TaskState::Running,
                super::TaskState::Succeeded => TaskState::Succeeded,
                super::TaskState::Failed => TaskState::Failed,
            })
        }
        .boxed()
    }
}
