//! Builders of the objects the tests and the benchmark create: nodes, pods, bindings, namespaces, the CLB
//! credentials Secret, and the CLB emulator. Each one holds the shape of its object in one place; a caller says
//! only what differs.

use std::{collections::BTreeMap, time::Duration};

use clb_operator::{
    api::ClbBackendBinding,
    emulator::{self, EmulatorConfig, EmulatorHandle, Faults, SeedLoadBalancer},
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// A node with a TKE provider ID (`qcloud:///100003/<instance>`), which is how the operator finds its CVM.
#[derive(Clone, Debug)]
pub struct NodeFixture {
    name: String,
    labels: BTreeMap<String, String>,
    instance: Option<String>,
    taints: Vec<Value>,
    kwok: bool,
}

impl NodeFixture {
    /// A node named `name`, without labels, taints or provider ID.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), labels: BTreeMap::new(), instance: None, taints: Vec::new(), kwok: false }
    }

    /// Runs the CVM `instance` (e.g. `ins-abc001`).
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }

    /// One more label.
    pub fn label(mut self, key: &str, value: impl Into<String>) -> Self {
        self.labels.insert(key.to_owned(), value.into());
        self
    }

    /// A taint from the start.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints.push(json!({"key": key, "value": value, "effect": effect}));
        self
    }

    /// Managed by kwok, which then runs the pods bound to it (turns them Ready, deletes them on eviction).
    pub fn kwok(mut self) -> Self {
        self.kwok = true;
        self
    }

    /// The node object.
    pub fn build(&self) -> Node {
        let mut labels = self.labels.clone();
        let mut node = json!({"metadata": {"name": self.name}, "spec": {}});
        if let Some(id) = &self.instance {
            node["spec"]["providerID"] = json!(format!("qcloud:///100003/{id}"));
        }
        if !self.taints.is_empty() {
            node["spec"]["taints"] = json!(self.taints);
        }
        if self.kwok {
            labels.insert("kubernetes.io/hostname".into(), self.name.clone());
            node["metadata"]["annotations"] = json!({"kwok.x-k8s.io/node": "fake"});
            let shape = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
            node["status"] = json!({"allocatable": shape, "capacity": shape});
        }
        node["metadata"]["labels"] = json!(labels);
        serde_json::from_value(node).expect("a valid Node")
    }

    /// Creates it.
    pub async fn try_create(&self, client: &Client) -> Result<Node, kube::Error> {
        Api::<Node>::all(client.clone()).create(&PostParams::default(), &self.build()).await
    }

    /// Creates it; panics on failure.
    pub async fn create(&self, client: &Client) -> Node {
        self.try_create(client).await.unwrap_or_else(|e| panic!("create node {}: {e}", self.name))
    }
}

/// A pod with one fake container. There is no kubelet (except kwok's, on kwok nodes): [`PodFixture::ready`] has
/// creation report it Running and Ready, as a kubelet would.
#[derive(Clone, Debug)]
pub struct PodFixture {
    name: String,
    labels: BTreeMap<String, String>,
    node: Option<String>,
    finalizers: Vec<String>,
    ready: bool,
}

impl PodFixture {
    /// A pod named `name`, not scheduled, without labels.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), labels: BTreeMap::new(), node: None, finalizers: Vec::new(), ready: false }
    }

    /// Labelled `app=<app>`.
    pub fn app(self, app: &str) -> Self {
        self.label("app", app)
    }

    /// One more label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Bound to `node` (`spec.nodeName`).
    pub fn on(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Held by `finalizer`: deleted, it stays terminating until the finalizer is removed, standing in for a grace
    /// period.
    pub fn held(mut self, finalizer: &str) -> Self {
        self.finalizers.push(finalizer.to_owned());
        self
    }

    /// Reported Running and Ready once created.
    pub fn ready(mut self) -> Self {
        self.ready = true;
        self
    }

    /// The pod object.
    pub fn build(&self) -> Pod {
        let mut pod = json!({
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": {"containers": [{"name": "c", "image": "fake"}]},
        });
        if let Some(node) = &self.node {
            pod["spec"]["nodeName"] = json!(node);
        }
        if !self.finalizers.is_empty() {
            pod["metadata"]["finalizers"] = json!(self.finalizers);
        }
        serde_json::from_value(pod).expect("a valid Pod")
    }

    /// Creates it in `api`'s namespace (and reports it Ready if asked to).
    pub async fn try_create(&self, api: &Api<Pod>) -> Result<Pod, kube::Error> {
        let pod = api.create(&PostParams::default(), &self.build()).await?;
        if !self.ready {
            return Ok(pod);
        }
        let ready =
            json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&ready)).await
    }

    /// [`PodFixture::try_create`]; panics on failure.
    pub async fn create(&self, api: &Api<Pod>) -> Pod {
        self.try_create(api).await.unwrap_or_else(|e| panic!("create pod {}: {e}", self.name))
    }
}

/// A `ClbBackendBinding` named `name` for load balancer `lb`, in region `gz`, with the credentials of the Secret
/// `clb-credentials`; say what it targets with [`BindingFixture::nodes`], [`BindingFixture::pods`] or
/// [`BindingFixture::targets`].
pub fn binding(name: &str, lb: &str) -> BindingFixture {
    BindingFixture {
        name: name.to_owned(),
        lb: lb.to_owned(),
        region: "gz".into(),
        targets: json!({}),
        credentials: Some("clb-credentials".into()),
        extra: json!({}),
    }
}

/// See [`binding`].
#[derive(Clone, Debug)]
pub struct BindingFixture {
    name: String,
    lb: String,
    region: String,
    targets: Value,
    credentials: Option<String>,
    extra: Value,
}

impl BindingFixture {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Targets the nodes labelled `key=value`.
    pub fn nodes(self, key: &str, value: &str) -> Self {
        self.targets(json!({"nodeSelector": {"matchLabels": {key: value}}}))
    }

    /// Targets the pods labelled `app=<app>` in its namespace.
    pub fn pods(self, app: &str) -> Self {
        self.targets(json!({"podSelector": {"matchLabels": {"app": app}}}))
    }

    /// `spec.targets` as given, valid or not.
    pub fn targets(mut self, targets: Value) -> Self {
        self.targets = targets;
        self
    }

    /// In another region.
    pub fn region(mut self, region: &str) -> Self {
        self.region = region.to_owned();
        self
    }

    /// Without `credentialsSecretRef`.
    pub fn no_credentials(mut self) -> Self {
        self.credentials = None;
        self
    }

    /// More `spec` fields (merged over the others), e.g. `{"deletionPolicy": "Retain"}`.
    pub fn with(mut self, spec: Value) -> Self {
        if let (Some(extra), Some(more)) = (self.extra.as_object_mut(), spec.as_object()) {
            extra.extend(more.clone());
        }
        self
    }

    /// The binding object.
    pub fn build(&self) -> ClbBackendBinding {
        let mut spec = json!({"loadBalancerId": self.lb, "region": self.region, "targets": self.targets});
        if let Some(secret) = &self.credentials {
            spec["credentialsSecretRef"] = json!({"name": secret});
        }
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), self.extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "clb.tke.dev/v1alpha1", "kind": "ClbBackendBinding",
            "metadata": {"name": self.name}, "spec": spec,
        }))
        .expect("a ClbBackendBinding")
    }

    /// Creates it in `api`'s namespace.
    pub async fn try_create(&self, api: &Api<ClbBackendBinding>) -> Result<ClbBackendBinding, kube::Error> {
        api.create(&PostParams::default(), &self.build()).await
    }
}

/// Creates namespace `name`.
pub async fn namespace(client: &Client, name: &str) -> Result<Namespace, kube::Error> {
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await
}

/// Creates the CLB credentials Secret `name` (keys `secretId` and `secretKey`) in namespace `ns`.
pub async fn credentials_secret(
    client: &Client,
    ns: &str,
    name: &str,
    id: &str,
    key: &str,
) -> Result<Secret, kube::Error> {
    let secret = Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some(
            [("secretId".to_owned(), id.to_owned()), ("secretKey".to_owned(), key.to_owned())].into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &secret).await
}

/// Load balancer `lb`, serving `instance_ids` from the start.
pub fn seed(lb: &str, instance_ids: Vec<String>) -> SeedLoadBalancer {
    SeedLoadBalancer { id: lb.to_owned(), instance_ids }
}

/// An emulator's configuration: the given load balancers, tasks that take `task_duration`, no other faults, random
/// credentials, and the other defaults. Change fields for what a test needs.
pub fn emulator_config(task_duration: Duration, load_balancers: Vec<SeedLoadBalancer>) -> EmulatorConfig {
    EmulatorConfig {
        faults: Faults { task_duration, ..Faults::default() },
        load_balancers,
        ..EmulatorConfig::default()
    }
}

/// The CLB emulator with `config`, on a free port of 127.0.0.1, on the calling runtime.
pub async fn spawn_emulator(config: EmulatorConfig) -> EmulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port on 127.0.0.1");
    emulator::spawn(config, listener).await.expect("the emulator starts")
}
