//! Slim pods and nodes for the caches: only what membership reads, decoded straight from the API into compact
//! fields, so that 20,000 pods and 2,000 nodes cost a few megabytes and decoding them allocates little it throws
//! away.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use k8s_openapi::{
    ClusterResourceScope, NamespaceResourceScope,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::Resource;
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{IgnoredAny, MapAccess, Visitor},
};

use super::labels::Labels;
use crate::api::GROUP;

/// A pod with only what the operator reads; every other field of the API object is skipped on decode.
/// Serialized only to digest what membership reads (the change filter), never sent to the API.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SlimPod {
    /// Name, namespace, deletionTimestamp, resourceVersion and this operator's annotations (decoded by `SlimMeta`);
    /// never labels, which are in `labels` (`ResourceExt::labels` is empty on a slim pod).
    pub metadata: ObjectMeta,
    /// The pod's labels.
    pub labels: Labels,
    /// The node the pod is bound to (`spec.nodeName`).
    pub node_name: Option<String>,
    /// The pod's phase is Succeeded or Failed: it will not run again.
    pub finished: bool,
    /// The pod's Ready condition is True.
    pub ready: bool,
}

impl<'de> Deserialize<'de> for SlimPod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The parts of a Pod's spec that are kept.
        #[derive(Default, Deserialize)]
        struct WireSpec {
            #[serde(default, rename = "nodeName")]
            node_name: Option<String>,
        }
        #[derive(Default, Deserialize)]
        struct WireStatus {
            #[serde(default)]
            phase: Option<String>,
            #[serde(default)]
            conditions: Option<Vec<WireCondition>>,
        }

        let wire = Wire::<WireSpec, WireStatus>::deserialize(d)?;
        let status = wire.status.unwrap_or_default();
        Ok(SlimPod {
            metadata: wire.metadata.meta,
            labels: wire.metadata.labels,
            node_name: wire.spec.and_then(|s| s.node_name),
            finished: matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")),
            ready: WireCondition::ready(status.conditions).is_some_and(|c| c.status == "True"),
        })
    }
}

/// The wire form of the parts of a pod or node that are kept, with the kind's own `Spec` and `Status`.
#[derive(Deserialize)]
struct Wire<Spec, Status> {
    #[serde(default)]
    metadata: SlimMeta,
    #[serde(default)]
    spec: Option<Spec>,
    #[serde(default)]
    status: Option<Status>,
}

/// A condition as decoded, before only the Ready one is kept.
#[derive(Deserialize)]
struct WireCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    #[serde(default, rename = "lastTransitionTime")]
    last_transition_time: Option<Time>,
}

impl WireCondition {
    /// The Ready condition of `conditions`, if there is one.
    fn ready(conditions: Option<Vec<Self>>) -> Option<Self> {
        conditions?.into_iter().find(|c| c.type_ == "Ready")
    }
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

/// A node with only what the operator reads: the metadata `SlimMeta` keeps, labels, providerID, the keys of its
/// taints, unschedulable, and the Ready condition's status and transition time. Heartbeat times, images,
/// capacity and the other conditions are skipped on decode (heartbeats would make every status update look like
/// a change). Serialized only to digest what membership reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SlimNode {
    /// Name, deletionTimestamp, resourceVersion and this operator's annotations; never labels, which are in
    /// `labels` (`ResourceExt::labels` is empty on a slim node).
    pub metadata: ObjectMeta,
    /// The node's labels.
    pub labels: Labels,
    /// `spec.providerID`, e.g. `qcloud:///100003/ins-abc`.
    pub provider_id: Option<String>,
    /// The keys of the node's taints (drain signals are keyed by taint key alone).
    pub taints: Box<[Box<str>]>,
    /// `spec.unschedulable`: the node is cordoned.
    pub unschedulable: bool,
    /// The node's Ready condition, if it reports one.
    pub ready: Option<NodeReady>,
}

/// A node's Ready condition, as membership reads it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeReady {
    /// The condition's status is True.
    pub ready: bool,
    /// When the status last changed.
    pub since: Option<Time>,
}

impl<'de> Deserialize<'de> for SlimNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The parts of a Node's spec that are kept.
        #[derive(Default, Deserialize)]
        struct WireSpec {
            #[serde(default, rename = "providerID")]
            provider_id: Option<String>,
            #[serde(default)]
            taints: Option<Vec<WireTaint>>,
            #[serde(default)]
            unschedulable: Option<bool>,
        }
        #[derive(Deserialize)]
        struct WireTaint {
            key: Box<str>,
        }
        #[derive(Default, Deserialize)]
        struct WireStatus {
            #[serde(default)]
            conditions: Option<Vec<WireCondition>>,
        }

        let wire = Wire::<WireSpec, WireStatus>::deserialize(d)?;
        let spec = wire.spec.unwrap_or_default();
        let ready = WireCondition::ready(wire.status.and_then(|s| s.conditions));
        Ok(SlimNode {
            metadata: wire.metadata.meta,
            labels: wire.metadata.labels,
            provider_id: spec.provider_id,
            taints: spec.taints.unwrap_or_default().into_iter().map(|t| t.key).collect(),
            unschedulable: spec.unschedulable.unwrap_or(false),
            ready: ready.map(|c| NodeReady { ready: c.status == "True", since: c.last_transition_time }),
        })
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
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// An object's metadata as the caches keep it: name, namespace, deletionTimestamp, resourceVersion (the watcher
/// resumes from it) and this operator's own `clb.tke.dev/` annotations in `meta`, and the labels apart, compact.
/// The rest - managedFields above all, and annotations such as kubectl's last-applied configuration - is skipped
/// by the parser, never allocated: a large cluster's initial list would otherwise churn through far more memory
/// than it keeps.
#[derive(Default)]
struct SlimMeta {
    meta: ObjectMeta,
    labels: Labels,
}

impl<'de> Deserialize<'de> for SlimMeta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The wire form of the metadata that is kept.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            namespace: Option<String>,
            #[serde(default)]
            labels: Labels,
            #[serde(default)]
            annotations: Option<OwnAnnotations>,
            #[serde(default)]
            deletion_timestamp: Option<Time>,
            #[serde(default)]
            resource_version: Option<String>,
        }
        let wire = Wire::deserialize(d)?;
        let meta = ObjectMeta {
            name: wire.name,
            namespace: wire.namespace,
            annotations: wire.annotations.map(|a| a.0).filter(|a| !a.is_empty()),
            deletion_timestamp: wire.deletion_timestamp,
            resource_version: wire.resource_version,
            ..ObjectMeta::default()
        };
        Ok(SlimMeta { meta, labels: wire.labels })
    }
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
            "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web", "pod-template-hash": "7d9c"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "b"}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "conditions": [{"type": "PodScheduled", "status": "True"},
                                      {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap();
        assert_eq!(pod.node_name.as_deref(), Some("node-a"));
        assert_eq!(pod.labels.iter().collect::<Vec<_>>(), [("app", "web"), ("pod-template-hash", "7d9c")]);
        assert_eq!(pod.metadata.labels, None, "labels are kept apart");
        assert!(pod.ready && !pod.finished);
        assert_eq!(SlimPod::url_path(&(), Some("shop")), "/api/v1/namespaces/shop/pods");

        let done: SlimPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "job-0"},
            "status": {"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False"}]},
        }))
        .unwrap();
        assert!(done.finished && !done.ready);
        let bare: SlimPod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!((bare.finished, bare.ready, &bare.node_name), (false, false, &None));
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
        assert_eq!(pod.labels.get("app"), Some("web"));
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
        assert_eq!((&bare.labels, &bare.metadata.annotations), (&Labels::default(), &None));
    }

    /// A node keeps labels, providerID, taint keys, unschedulable, and the Ready condition's status and
    /// transition time; heartbeats, other conditions, images and capacity are dropped.
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
        assert_eq!(node.labels.get("role"), Some("web"));
        assert_eq!(node.provider_id.as_deref(), Some("qcloud:///100003/ins-1"));
        assert!(node.unschedulable);
        assert_eq!(&*node.taints, [Box::from("ToBeDeletedByClusterAutoscaler")]);
        let ready = node.ready.as_ref().unwrap();
        assert!(!ready.ready);
        assert_eq!(ready.since.as_ref().map(|t| t.0.to_string()).as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(SlimNode::url_path(&(), None), "/api/v1/nodes");

        let bare: SlimNode = serde_json::from_value(serde_json::json!({"metadata": {"name": "n"}})).unwrap();
        assert_eq!(bare, SlimNode { metadata: bare.metadata.clone(), ..SlimNode::default() });
    }
}
