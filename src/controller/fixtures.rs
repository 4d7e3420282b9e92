//! Test fixtures, built once for every unit test of the controller: nodes, slim pods, specs and backends.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::slim::{SlimNode, SlimPod};
use crate::api::{BackendState, BackendStatus, ClbBackendBindingSpec, DeletionPolicy, DrainPolicy, Targets};

fn pairs(labels: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A Ready-less node with `labels` and, if given, a provider ID such as `qcloud:///100003/ins-a`.
pub fn node(name: &str, labels: &[(&str, &str)], provider: Option<&str>) -> SlimNode {
    SlimNode {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        labels: labels.iter().copied().collect(),
        provider_id: provider.map(Into::into),
        ..SlimNode::default()
    }
}

/// A Running pod labelled `app=web` in `ns`, on `node` if given, Ready or not.
pub fn slim_pod(name: &str, ns: &str, node: Option<&str>, ready: bool) -> SlimPod {
    SlimPod {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
        labels: [("app", "web")].into_iter().collect(),
        node_name: node.map(Into::into),
        finished: false,
        ready,
    }
}

/// A selector with one `matchLabels` pair.
pub fn selector(k: &str, v: &str) -> LabelSelector {
    LabelSelector { match_labels: Some(pairs(&[(k, v)])), ..Default::default() }
}

/// A spec on `lb-abcd1234` in region gz with the shipped defaults and the given targets.
pub fn spec(targets: Targets) -> ClbBackendBindingSpec {
    ClbBackendBindingSpec {
        load_balancer_id: "lb-abcd1234".into(),
        region: "gz".into(),
        credentials_secret_ref: None,
        targets,
        listeners: Vec::new(),
        weight: 10,
        drain: DrainPolicy::default(),
        deletion_policy: DeletionPolicy::Deregister,
    }
}

/// An owned backend on `node`, in `state`, with no task.
pub fn backend(id: &str, node: &str, state: BackendState) -> BackendStatus {
    BackendStatus {
        instance_id: id.into(),
        listener_id: None,
        location_id: None,
        port: None,
        quiesced_until: None,
        node: Some(node.into()),
        state,
        request_id: None,
        reason: None,
    }
}
