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
    kubelet_shaped: bool,
}

impl NodeFixture {
    /// A node named `name`, without labels, taints or provider ID.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
            instance: None,
            taints: Vec::new(),
            kwok: false,
            kubelet_shaped: false,
        }
    }

    /// Shaped like a node a kubelet registers on TKE (the labels, addresses, conditions, node info, capacity and
    /// the images it holds), about 5 kB as JSON, so memory figures mean what users see.
    pub fn kubelet_shaped(mut self) -> Self {
        self.kubelet_shaped = true;
        self
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
        if self.kubelet_shaped {
            kubelet_node(&mut node, &mut labels, &self.name);
            if let Some(id) = &self.instance {
                labels.insert("cloud.tencent.com/node-instance-id".into(), id.clone());
            }
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
    kubelet_shaped: bool,
}

impl PodFixture {
    /// A pod named `name`, not scheduled, without labels.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
            node: None,
            finalizers: Vec::new(),
            ready: false,
            kubelet_shaped: false,
        }
    }

    /// Shaped like a Deployment's pod with a sidecar (env, ports, volumes, probes, resources; and, when
    /// [`PodFixture::ready`], the status a kubelet reports with container statuses), about 6 kB as JSON.
    pub fn kubelet_shaped(mut self) -> Self {
        self.kubelet_shaped = true;
        self
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
        if self.kubelet_shaped {
            pod["spec"] = kubelet_pod_spec(&self.name);
            pod["metadata"]["annotations"] = json!({
                "kubectl.kubernetes.io/restartedAt": "2026-11-30T10:00:00Z",
                "tke.cloud.tencent.com/networks-status": "[{\"name\":\"tke-bridge\",\"interface\":\"eth0\",\"ips\":[\"172.16.3.25\"],\"default\":true}]",
            });
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-7d9c6b5f4d", "uid": "6f1c1f7e-2b7a-4d3e-9a51-0d2f4b8c9e10", "controller": true,
                "blockOwnerDeletion": true}]);
            pod["metadata"]["generateName"] = json!("web-7d9c6b5f4d-");
        }
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
        let ready = match self.kubelet_shaped {
            true => json!({"status": kubelet_pod_status()}),
            false => {
                json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
            }
        };
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

/// Fills in what a kubelet on a TKE node registers beyond the fixture's own fields.
fn kubelet_node(node: &mut Value, labels: &mut BTreeMap<String, String>, name: &str) {
    for (k, v) in [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/instance-type", "SA5.2XLARGE16"),
        ("failure-domain.beta.kubernetes.io/region", "gz"),
        ("failure-domain.beta.kubernetes.io/zone", "100003"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/os", "linux"),
        ("node.kubernetes.io/instance-type", "SA5.2XLARGE16"),
        ("topology.kubernetes.io/region", "gz"),
        ("topology.kubernetes.io/zone", "100003"),
        ("tke.cloud.tencent.com/nodepool-id", "np-3x8k2l9q"),
    ] {
        labels.entry(k.to_owned()).or_insert_with(|| v.to_owned());
    }
    labels.insert("kubernetes.io/hostname".into(), name.to_owned());
    node["metadata"]["annotations"] = json!({
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "tke.cloud.tencent.com/created-by": "tke-nodepool",
    });
    node["spec"]["podCIDR"] = json!("172.16.3.0/26");
    node["spec"]["podCIDRs"] = json!(["172.16.3.0/26"]);
    let capacity = json!({"cpu": "8", "ephemeral-storage": "103079844Ki", "hugepages-1Gi": "0",
        "hugepages-2Mi": "0", "memory": "32386916Ki", "pods": "61"});
    let allocatable = json!({"cpu": "7900m", "ephemeral-storage": "94998384074", "hugepages-1Gi": "0",
        "hugepages-2Mi": "0", "memory": "30126948Ki", "pods": "61"});
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": "2026-12-01T08:14:03Z", "lastTransitionTime": "2026-11-20T02:41:55Z"})
    };
    let images: Vec<Value> = (0..14)
        .map(|i| {
            json!({"names": [
                format!("ccr.ccs.tencentyun.com/tkeimages/component-{i}@sha256:{:064x}", i * 7919 + 17),
                format!("ccr.ccs.tencentyun.com/tkeimages/component-{i}:v1.{i}.3"),
            ], "sizeBytes": 18_000_000 + i * 3_100_000})
        })
        .collect();
    node["status"] = json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": "10.0.3.17"},
            {"type": "ExternalIP", "address": "203.0.113.17"},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": "8d2b4e0c1f6a4c7d9e3b5a7c2d4f6e8a", "systemUUID": "8D2B4E0C-1F6A-4C7D-9E3B-5A7C2D4F6E8A",
            "bootID": "0b6c2e4f-8a1d-4e3b-9c5f-7d2a4b6c8e0f", "kernelVersion": "5.4.241-1-tlinux4-0017.7",
            "osImage": "TencentOS Server 3.1 (Final)", "containerRuntimeVersion": "containerd://1.6.9-tke.8",
            "kubeletVersion": "v1.34.4-tke.1", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        "images": images,
    });
}

/// The spec of a Deployment's pod with an app container and a log sidecar, as a scheduler leaves it.
fn kubelet_pod_spec(name: &str) -> Value {
    let env: Vec<Value> = (0..10)
        .map(|i| json!({"name": format!("APP_SETTING_{i}"), "value": format!("value-{i}-of-the-app")}))
        .collect();
    json!({
        "containers": [
            {"name": "web", "image": "ccr.ccs.tencentyun.com/shop/web:2026.11.30-3f9c2d1",
             "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}, {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
             "env": env,
             "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
             "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}, {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
             "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
             "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
             "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "sleep 15"]}}},
             "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"},
            {"name": "log-agent", "image": "ccr.ccs.tencentyun.com/tkeimages/log-agent:v1.1.9",
             "args": ["--path=/var/log/web", "--topic=shop-web"],
             "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
             "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
             "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"},
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": "web-config", "defaultMode": 420}},
            {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}},
        ],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default", "serviceAccount": "default", "hostname": name,
        "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
        "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ],
    })
}

/// The status a kubelet reports for a running, ready pod of [`kubelet_pod_spec`].
fn kubelet_pod_status() -> Value {
    let at = "2026-11-30T10:02:11Z";
    let container = |name: &str, image: &str, id: u64| {
        json!({"name": name, "ready": true, "restartCount": 0, "started": true,
            "image": image, "imageID": format!("{image}@sha256:{id:064x}"),
            "containerID": format!("containerd://{:064x}", id * 31),
            "state": {"running": {"startedAt": at}}, "lastState": {}})
    };
    let condition =
        |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": at});
    json!({
        "phase": "Running",
        "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"), condition("Ready"),
            condition("ContainersReady"), condition("PodScheduled")],
        "hostIP": "10.0.3.17", "hostIPs": [{"ip": "10.0.3.17"}],
        "podIP": "172.16.3.25", "podIPs": [{"ip": "172.16.3.25"}],
        "startTime": at, "qosClass": "Burstable",
        "containerStatuses": [
            container("web", "ccr.ccs.tencentyun.com/shop/web:2026.11.30-3f9c2d1", 91),
            container("log-agent", "ccr.ccs.tencentyun.com/tkeimages/log-agent:v1.1.9", 92),
        ],
    })
}
