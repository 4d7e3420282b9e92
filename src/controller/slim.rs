//! Slim pods and nodes for the caches: only what membership reads, decoded straight from the API, so that
//! 20,000 pods and 2,000 nodes cost a few megabytes and decoding them allocates nothing it throws away.

use std::{borrow::Cow, collections::BTreeMap, fmt, ops::Deref};

use k8s_openapi::{
    ClusterResourceScope, NamespaceResourceScope,
    api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Taint},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::Resource;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{IgnoredAny, MapAccess, Visitor},
};

use crate::api::GROUP;

/// A pod with only the fields the operator reads; every other field of the API object is skipped on decode.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct SlimPod {
    /// Name, namespace, labels, deletionTimestamp (see [`slim_meta`]).
    #[serde(default, deserialize_with = "slim_meta")]
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
    /// The pod's Ready condition, if it has one (only type and status are kept).
    #[serde(default, deserialize_with = "ready_only")]
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

/// Keeps only the Ready condition of a pod's conditions.
fn ready_only<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SlimCondition>, D::Error> {
    let all = Option::<Vec<SlimCondition>>::deserialize(d)?.unwrap_or_default();
    Ok(all.into_iter().filter(|c| c.type_ == "Ready").collect())
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

/// A node with only the fields the operator reads: [`slim_meta`]'s metadata, providerID, taints,
/// unschedulable, and the Ready condition's status and transition time. Heartbeat times, images, capacity and
/// the other conditions are skipped on decode (heartbeats would make every status update look like a change).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct SlimNode(pub Node);

impl Deref for SlimNode {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SlimNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The wire form of the parts of a Node that are kept.
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default, deserialize_with = "slim_meta")]
            metadata: ObjectMeta,
            #[serde(default)]
            spec: Option<WireSpec>,
            #[serde(default)]
            status: Option<WireStatus>,
        }
        #[derive(Deserialize)]
        struct WireSpec {
            #[serde(default, rename = "providerID")]
            provider_id: Option<String>,
            #[serde(default)]
            taints: Option<Vec<Taint>>,
            #[serde(default)]
            unschedulable: Option<bool>,
        }
        #[derive(Deserialize)]
        struct WireStatus {
            #[serde(default)]
            conditions: Option<Vec<WireCondition>>,
        }
        #[derive(Deserialize)]
        struct WireCondition {
            #[serde(rename = "type")]
            type_: String,
            status: String,
            #[serde(default, rename = "lastTransitionTime")]
            last_transition_time: Option<Time>,
        }

        let wire = Wire::deserialize(d)?;
        Ok(SlimNode(Node {
            metadata: wire.metadata,
            spec: wire.spec.map(|s| NodeSpec {
                provider_id: s.provider_id,
                taints: s.taints,
                unschedulable: s.unschedulable,
                ..NodeSpec::default()
            }),
            status: wire.status.and_then(|s| s.conditions).map(|conditions| NodeStatus {
                conditions: Some(
                    conditions
                        .into_iter()
                        .filter(|c| c.type_ == "Ready")
                        .map(|c| NodeCondition {
                            type_: c.type_,
                            status: c.status,
                            last_transition_time: c.last_transition_time,
                            ..NodeCondition::default()
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
        }))
    }
}

impl Resource for SlimNode {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// Decodes an object's metadata keeping name, namespace, labels, deletionTimestamp, resourceVersion (the
/// watcher resumes from it) and this operator's own `clb.tke.dev/` annotations. The rest - managedFields above
/// all, and annotations such as kubectl's last-applied configuration - is skipped by the parser, never
/// allocated: a large cluster's initial list would otherwise churn through far more memory than it keeps.
pub fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    /// The wire form of the metadata that is kept.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
        #[serde(default)]
        annotations: Option<OwnAnnotations>,
        #[serde(default)]
        deletion_timestamp: Option<Time>,
        #[serde(default)]
        resource_version: Option<String>,
    }
    let wire = Wire::deserialize(d)?;
    Ok(ObjectMeta {
        name: wire.name,
        namespace: wire.namespace,
        labels: wire.labels,
        annotations: wire.annotations.map(|a| a.0).filter(|a| !a.is_empty()),
        deletion_timestamp: wire.deletion_timestamp,
        resource_version: wire.resource_version,
        ..ObjectMeta::default()
    })
}

/// The annotations under this operator's own prefix (`clb.tke.dev/`); the values of all others are skipped.
struct OwnAnnotations(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for OwnAnnotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Own;
        impl<'de> Visitor<'de> for Own {
            type Value = OwnAnnotations;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of annotations")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kept = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let own = key.strip_prefix(GROUP).is_some_and(|rest| rest.starts_with('/'));
                    if own {
                        kept.insert(key, map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(OwnAnnotations(kept))
            }
        }
        d.deserialize_map(Own)
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
                       "conditions": [{"type": "PodScheduled", "status": "True"},
                                      {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        assert_eq!(pod.spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(pod.status.phase.as_deref(), Some("Running"));
        assert_eq!(pod.status.conditions, [SlimCondition { type_: "Ready".into(), status: "True".into() }]);
        assert_eq!(SlimPod::url_path(&(), Some("shop")), "/api/v1/namespaces/shop/pods");
    }

    /// Metadata keeps what is read and this operator's own annotations; managedFields, uid, owner references,
    /// and other annotations (kubectl's last-applied configuration) are not kept.
    #[test]
    fn metadata_keeps_only_what_is_read() {
        let pod: SlimPod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-0", "namespace": "shop", "uid": "0b3c", "resourceVersion": "42",
                "creationTimestamp": "2026-01-01T00:00:00Z", "deletionTimestamp": "2026-01-02T00:00:00Z",
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}",
                                "clb.tke.dev/instance-id": "ins-1", "clb.tke.dev.example/x": "y"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "1"}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:metadata": {}}}],
            },
        }))
        .unwrap();
        let meta = &pod.metadata;
        assert_eq!((meta.name.as_deref(), meta.namespace.as_deref()), (Some("web-0"), Some("shop")));
        assert_eq!(meta.labels, Some([("app".to_owned(), "web".to_owned())].into()));
        assert_eq!(
            meta.annotations,
            Some([("clb.tke.dev/instance-id".to_owned(), "ins-1".to_owned())].into())
        );
        assert_eq!(meta.resource_version.as_deref(), Some("42"), "the watcher resumes from it");
        assert!(meta.deletion_timestamp.is_some());
        assert_eq!((&meta.uid, &meta.creation_timestamp), (&None, &None));
        assert_eq!((&meta.owner_references, &meta.managed_fields), (&None, &None));

        let bare: SlimPod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p", "labels": null, "annotations": {"a": "b"}}}),
        )
        .unwrap();
        assert_eq!((&bare.metadata.labels, &bare.metadata.annotations), (&None, &None));
    }

    /// A node keeps providerID, taints, unschedulable, and the Ready condition's status and transition time;
    /// heartbeats, other conditions, images and capacity are dropped.
    #[test]
    fn decodes_the_node_fields_membership_reads() {
        let node: SlimNode = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "node-a", "labels": {"role": "web"}},
            "spec": {"providerID": "qcloud:///100003/ins-1", "podCIDR": "10.0.0.0/24", "unschedulable": true,
                     "taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]},
            "status": {
                "capacity": {"cpu": "4"}, "images": [{"names": ["a"], "sizeBytes": 1}],
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                     "lastHeartbeatTime": "2026-01-01T00:01:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                ],
            },
        }))
        .unwrap();
        let spec = node.spec.as_ref().unwrap();
        assert_eq!(spec.provider_id.as_deref(), Some("qcloud:///100003/ins-1"));
        assert_eq!(spec.unschedulable, Some(true));
        assert_eq!(spec.taints.as_ref().map(|t| t[0].key.as_str()), Some("ToBeDeletedByClusterAutoscaler"));
        assert_eq!(spec.pod_cidr, None);
        let status = node.status.as_ref().unwrap();
        assert_eq!((&status.capacity, &status.images), (&None, &None));
        let conditions = status.conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!((conditions[0].type_.as_str(), conditions[0].status.as_str()), ("Ready", "False"));
        assert!(conditions[0].last_transition_time.is_some());
        assert_eq!((&conditions[0].last_heartbeat_time, &conditions[0].reason), (&None, &None));
        assert_eq!(SlimNode::url_path(&(), None), "/api/v1/nodes");

        // What is cached encodes as a Node again (change detection hashes it).
        let again: Node = serde_json::from_value(serde_json::to_value(&node).unwrap()).unwrap();
        assert_eq!(again, node.0);
    }
}
