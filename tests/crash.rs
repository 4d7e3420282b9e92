//! Crash safety against the real test control plane: a status write that fails right after the CLB accepted a
//! task neither loses the task nor submits it a second time.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use clb_operator::api::{ClbBackendBinding, TaskAction, TaskState};
use common::{TestNs, fixtures, scenario::*};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
    client::{Body, ClientBuilder},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A fault hook in the operator's Kubernetes client: once armed with pieces of text, the next status write
/// whose body contains all of them fails as a lost connection would, without reaching the API server.
#[derive(Clone, Default)]
struct FailWrite {
    needles: Arc<Mutex<Option<Vec<String>>>>,
    failed: Arc<AtomicUsize>,
}

impl FailWrite {
    fn arm(&self, needles: Vec<String>) {
        *self.needles.lock().unwrap() = Some(needles);
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }
}

impl<S> tower::Layer<S> for FailWrite {
    type Service = FailWriteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FailWriteService { inner: Arc::new(tokio::sync::Mutex::new(inner)), fault: self.clone() }
    }
}

/// The fault hook around kube's (boxed, not cloneable) service stack: it is locked only to get each call's
/// future, never while a request runs (watches run for minutes).
struct FailWriteService<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
    fault: FailWrite,
}

impl<S> tower::Service<http::Request<Body>> for FailWriteService<S>
where
    S: tower::Service<http::Request<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner service is awaited per call, under the lock.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        let fault = self.fault.clone();
        Box::pin(async move {
            let is_status_write =
                request.method() == http::Method::PATCH && request.uri().path().ends_with("/status");
            let armed = fault.needles.lock().unwrap().clone();
            let request = match (is_status_write, armed) {
                (true, Some(needles)) => {
                    let (parts, body) = request.into_parts();
                    let bytes = body.collect_bytes().await?;
                    let text = String::from_utf8_lossy(&bytes);
                    if needles.iter().all(|n| text.contains(n.as_str()))
                        && fault.needles.lock().unwrap().take().is_some()
                    {
                        fault.failed.fetch_add(1, Ordering::SeqCst);
                        return Err("injected: the status write was lost".into());
                    }
                    http::Request::from_parts(parts, Body::from(bytes))
                }
                _ => request,
            };
            let call = {
                let mut service = inner.lock().await;
                futures::future::poll_fn(|cx| service.poll_ready(cx)).await.map_err(Into::into)?;
                service.call(request)
            };
            call.await.map_err(Into::into)
        })
    }
}

async fn faulty_client(t: &TestNs, fault: &FailWrite) -> kube::Client {
    let kc = Kubeconfig::read_from(&t.plane.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    ClientBuilder::try_from(config).unwrap().with_layer(fault).build()
}

/// The first status write holding a new Deregister task fails once (the write that records it, at its end or
/// when its record may wait no longer): the requestId still reaches the status (written again from the
/// operator's memory), is polled to success, and no second Deregister is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_status_write_after_a_submission_loses_nothing() {
    let (t, emu) = setup("write-fault").await;
    let nodes = nodes(&t, &token_suffix(), 3).await;
    let fault = FailWrite::default();
    let _op = start_operator_on(faulty_client(&t, &fault).await, run_config(&t, &emu));
    binding(&t, "web", LB, false, json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;

    let (node, gone) = nodes[0].clone();
    // The first status write holding a Deregister task for the instance (the patch's keys are sorted, and a
    // finished task has `completedAt` between `action` and `instanceIds`; an intent has no requestId, and the
    // instance was registered together with the others).
    fault.arm(vec![r#""action":"Deregister""#.into(), format!(r#""instanceIds":["{gone}"],"requestId""#)]);
    Api::<Node>::all(t.client.clone()).delete(&node, &DeleteParams::default()).await.unwrap();
    let s = wait_ready_with(&t, "web", &ids(&nodes[1..])).await;

    assert_eq!(fault.failed(), 1, "the status write with the new task failed once");
    assert_eq!(deregister_calls(&emu), [vec![gone.clone()]], "one Deregister, never a second");
    let state = emu.state();
    // On CLB API 3.0 (the default), through the ClassicalLB actions: the RequestId is the task.
    let call =
        state.calls.iter().find(|c| c.action == "DeregisterTargetsFromClassicalLB" && c.code == 0).unwrap();
    let request_id = call.task_id.clone().unwrap();
    let task = s.tasks.iter().find(|t| t.action == TaskAction::Deregister).unwrap();
    assert_eq!(
        (task.request_id.clone(), task.state),
        (request_id.clone(), TaskState::Succeeded),
        "{:?}",
        s.tasks
    );
    let polls = (state.calls.iter())
        .filter(|c| c.action == "DescribeTaskStatus" && c.task_id.as_deref() == Some(request_id.as_str()))
        .count();
    assert!(polls >= 1, "the task was polled");
    assert!(s.intents.is_empty(), "no intent left behind: {:?}", s.intents);
}

/// One reconcile deregisters an instance and then registers another; the status write of the Register intent,
/// which also carries the new Deregister task, fails. The Register call is not made (its intent was never
/// written), the Deregister task is written by the next reconcile from the operator's memory and polled to
/// success, and each instance is submitted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_intent_write_after_a_submission_in_the_same_reconcile_loses_nothing() {
    let (t, emu) = setup("intent-fault").await;
    let nodes = nodes(&t, &token_suffix(), 4).await;
    // Nodes 1 and 2 serve under either selector; node 0 only under the first, node 3 only under the second.
    let node_api = Api::<Node>::all(t.client.clone());
    for (i, (node, _)) in nodes.iter().enumerate() {
        let labels = match i {
            0 => json!({"slot-a": "yes"}),
            3 => json!({"slot-b": "yes"}),
            _ => json!({"slot-a": "yes", "slot-b": "yes"}),
        };
        let patch = json!({"metadata": {"labels": labels}});
        node_api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }
    let fault = FailWrite::default();
    let _op = start_operator_on(faulty_client(&t, &fault).await, run_config(&t, &emu));
    fixtures::binding("web", LB).nodes("slot-a", "yes").try_create(&t.api()).await.unwrap();
    wait_ready_with(&t, "web", &ids(&nodes[..3])).await;

    let (gone, new) = (nodes[0].1.clone(), nodes[3].1.clone());
    fault.arm(vec![
        format!(r#""action":"Deregister","instanceIds":["{gone}"],"requestId""#),
        format!(r#""intents":[{{"action":"Register""#),
        format!(r#""instanceIds":["{new}"]"#),
    ]);
    let swap =
        json!({"spec": {"targets": {"nodeSelector": {"matchLabels": {"slot-a": null, "slot-b": "yes"}}}}});
    (t.api::<ClbBackendBinding>()).patch("web", &PatchParams::default(), &Patch::Merge(&swap)).await.unwrap();
    let s = wait_ready_with(&t, "web", &ids(&nodes[1..])).await;

    assert_eq!(fault.failed(), 1, "the intent write after the submission failed once");
    assert_eq!(deregister_calls(&emu), [vec![gone.clone()]], "one Deregister, never a second");
    let registers: Vec<Vec<String>> = (emu.state().calls.iter())
        .filter(|c| c.action == "RegisterTargetsWithClassicalLB" && c.code == 0)
        .filter(|c| c.instance_ids.contains(&new))
        .map(|c| c.instance_ids.clone())
        .collect();
    assert_eq!(registers, [vec![new.clone()]], "the new instance registered once, after the failed write");
    let task =
        s.tasks.iter().find(|t| t.action == TaskAction::Deregister && t.instance_ids == [gone.clone()]);
    assert_eq!(task.map(|t| t.state), Some(TaskState::Succeeded), "{:?}", s.tasks);
    assert!(s.intents.is_empty(), "no intent left behind: {:?}", s.intents);
}
