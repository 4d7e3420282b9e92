//! Reverse index from nodes and pods to the bindings they affect, so an event wakes only those bindings.
//!
//! kube-runtime's reflector stores have no secondary indexes, and scanning every binding for every node or pod
//! event does not scale; so each reconcile records what its binding looks at, and the watch mappers read it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::RwLock,
};

use kube::{ResourceExt, runtime::reflector::ObjectRef};

use super::slim::{SlimNode, SlimPod};
use crate::api::{ClbBackendBinding, ClbBackendBindingSpec};

type Key = ObjectRef<ClbBackendBinding>;

/// What one binding depends on, as recorded by its last reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    /// Nodes it selected or owns instances on: any change to them may change its membership.
    pub nodes: BTreeSet<String>,
    /// For node-targeted bindings: the `matchLabels` pairs, all of which a node needs to be selected.
    /// Empty when the selector has only expressions (then every node event is a candidate).
    pub node_labels: BTreeMap<String, String>,
    /// Whether it targets nodes (rather than pods).
    pub targets_nodes: bool,
    /// For pod-targeted bindings: its namespace.
    pub pod_namespace: Option<String>,
}

impl Interest {
    /// The interest of a binding in `namespace` with `spec`, looking at `nodes`.
    pub fn of(spec: &ClbBackendBindingSpec, namespace: &str, nodes: BTreeSet<String>) -> Self {
        match (&spec.targets.node_selector, &spec.targets.pod_selector) {
            (Some(sel), _) => Self {
                nodes,
                node_labels: sel.match_labels.clone().unwrap_or_default(),
                targets_nodes: true,
                pod_namespace: None,
            },
            (None, _) => Self { nodes, pod_namespace: Some(namespace.to_owned()), ..Default::default() },
        }
    }
}

#[derive(Default)]
struct Inner {
    interests: HashMap<Key, Interest>,
    by_node: HashMap<String, HashSet<Key>>,
    /// Node-targeted bindings keyed by one of their required label pairs (the first), or in `node_any` if none.
    by_label: HashMap<(String, String), HashSet<Key>>,
    node_any: HashSet<Key>,
    by_namespace: HashMap<String, HashSet<Key>>,
}

/// The index; shared by the reconciler (writer) and the watch mappers (readers).
#[derive(Default)]
pub struct BindingIndex {
    inner: RwLock<Inner>,
}

impl BindingIndex {
    /// Replaces what `key` is interested in.
    pub fn update(&self, key: Key, interest: Interest) {
        let Ok(mut inner) = self.inner.write() else { return };
        if inner.interests.get(&key) == Some(&interest) {
            return;
        }
        inner.remove(&key);
        for node in &interest.nodes {
            inner.by_node.entry(node.clone()).or_default().insert(key.clone());
        }
        if interest.targets_nodes {
            match interest.node_labels.iter().next() {
                Some((k, v)) => {
                    inner.by_label.entry((k.clone(), v.clone())).or_default().insert(key.clone());
                }
                None => {
                    inner.node_any.insert(key.clone());
                }
            }
        }
        if let Some(ns) = &interest.pod_namespace {
            inner.by_namespace.entry(ns.clone()).or_default().insert(key.clone());
        }
        inner.interests.insert(key, interest);
    }

    /// Forgets a deleted binding.
    pub fn remove(&self, key: &Key) {
        if let Ok(mut inner) = self.inner.write() {
            inner.remove(key);
        }
    }

    /// Bindings a change to `node` may affect: those that look at it, and node-targeted bindings whose
    /// required labels it carries (it may have just become selected).
    pub fn for_node(&self, node: &SlimNode) -> Vec<Key> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        let name = node.name_any();
        let mut out: HashSet<Key> = inner.by_node.get(&name).cloned().unwrap_or_default();
        out.extend(inner.node_any.iter().cloned());
        for (k, v) in node.labels.iter() {
            if let Some(keys) = inner.by_label.get(&(k.to_owned(), v.to_owned())) {
                out.extend(keys.iter().cloned());
            }
        }
        out.into_iter().collect()
    }

    /// Bindings a change to `pod` may affect: the pod-targeted bindings of its namespace.
    pub fn for_pod(&self, pod: &SlimPod) -> Vec<Key> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        pod.namespace()
            .and_then(|ns| inner.by_namespace.get(&ns))
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Inner {
    fn remove(&mut self, key: &Key) {
        let Some(old) = self.interests.remove(key) else {
            return;
        };
        for node in &old.nodes {
            drop_from(&mut self.by_node, node, key);
        }
        if let Some((k, v)) = old.node_labels.iter().next() {
            drop_from(&mut self.by_label, &(k.clone(), v.clone()), key);
        }
        self.node_any.remove(key);
        if let Some(ns) = &old.pod_namespace {
            drop_from(&mut self.by_namespace, ns, key);
        }
    }
}

fn drop_from<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, HashSet<Key>>, k: &K, key: &Key) {
    if let Some(set) = map.get_mut(k) {
        set.remove(key);
        if set.is_empty() {
            map.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;

    fn key(name: &str) -> Key {
        ObjectRef::new(name).within("ns")
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> SlimNode {
        fixtures::node(name, labels, None)
    }

    fn pod(ns: &str) -> SlimPod {
        fixtures::slim_pod("p", ns, None, false)
    }

    fn sorted(mut v: Vec<Key>) -> Vec<String> {
        let mut names: Vec<String> = v.drain(..).map(|k| k.name).collect();
        names.sort();
        names
    }

    /// A node event reaches the bindings that look at the node or whose labels it carries, and no others.
    #[test]
    fn node_events_reach_only_interested_bindings() {
        let idx = BindingIndex::default();
        let web = Interest {
            nodes: ["n1".to_string()].into(),
            node_labels: [("role".to_string(), "web".to_string())].into(),
            targets_nodes: true,
            pod_namespace: None,
        };
        idx.update(key("web"), web);
        idx.update(
            key("db"),
            Interest {
                nodes: ["n9".to_string()].into(),
                node_labels: [("role".to_string(), "db".to_string())].into(),
                targets_nodes: true,
                pod_namespace: None,
            },
        );
        idx.update(
            key("pods"),
            Interest {
                nodes: ["n2".to_string()].into(),
                pod_namespace: Some("shop".into()),
                ..Default::default()
            },
        );
        assert_eq!(sorted(idx.for_node(&node("n1", &[]))), ["web"]);
        assert_eq!(sorted(idx.for_node(&node("n5", &[("role", "web")]))), ["web"]);
        assert_eq!(sorted(idx.for_node(&node("n2", &[]))), ["pods"]);
        assert!(idx.for_node(&node("n7", &[("role", "cache")])).is_empty());
        assert_eq!(sorted(idx.for_pod(&pod("shop"))), ["pods"]);
        assert!(idx.for_pod(&pod("other")).is_empty());

        idx.remove(&key("pods"));
        assert!(idx.for_node(&node("n2", &[])).is_empty());
        assert!(idx.for_pod(&pod("shop")).is_empty());
    }

    /// A selector without matchLabels cannot be indexed by label, so every node event is a candidate for it.
    #[test]
    fn expression_only_selectors_see_every_node() {
        let idx = BindingIndex::default();
        idx.update(key("expr"), Interest { targets_nodes: true, ..Default::default() });
        assert_eq!(sorted(idx.for_node(&node("anything", &[]))), ["expr"]);
    }
}
