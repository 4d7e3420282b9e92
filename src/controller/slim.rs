//! A slim pod for the cache: only what membership reads (labels, node, deletion, phase, readiness), decoded
//! straight from the API so that 20,000 pods cost a few megabytes instead of full `Pod` objects.

use std::borrow::Cow;

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::Resource;
use serde::{Deserialize, Serialize};

/// A pod with only the fields the operator reads; every other field of the API object is skipped on decode.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimPod {
    /// Name, namespace, labels, deletionTimestamp (the rest is cleared after decoding).
    pub metadata: ObjectMeta,
    /// The node it runs on.
    #[serde(default)]
    pub spec: SlimPodSpec,
    /// Phase and readiness.
    #[serde(default)]
    pub status: SlimPodStatus,
}

/// The part of `PodSpec` the operator reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    /// The node the pod is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// The part of `PodStatus` the operator reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimPodStatus {
    /// Pending, Running, Succeeded, Failed or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The pod's conditions (only type and status are kept).
    #[serde(default)]
    pub conditions: Vec<SlimCondition>,
}

/// A pod condition's type and status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimCondition {
    /// E.g. Ready.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
}

impl Resource for SlimPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full pod from the API decodes into the slim one, keeping exactly what membership needs.
    #[test]
    fn decodes_the_fields_membership_reads() {
        let pod: SlimPod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "b"}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        assert_eq!(pod.spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(pod.status.phase.as_deref(), Some("Running"));
        assert_eq!(pod.status.conditions, [SlimCondition { type_: "Ready".into(), status: "True".into() }]);
        assert_eq!(SlimPod::url_path(&(), Some("shop")), "/api/v1/namespaces/shop/pods");
    }
}
