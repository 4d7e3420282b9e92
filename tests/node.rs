//! The Helm chart on a real node: a control plane of its own with a kubelet, containerd, runc and CNI
//! (`testenv.sh up --with-node`), the image built by `deploy/image.sh`, and the chart installed into a namespace
//! that enforces the restricted Pod Security Standard. The operator's pods run there with in-cluster
//! configuration, probed by the kubelet on their pod IPs, and reach a CLB emulator on 127.0.0.1 through the node's
//! bridge; then the leader pod is deleted while a Deregister task runs, the chart is upgraded while another runs,
//! and uninstalled. Needs root, containerd, runc, nftables and the CNI plugins (`.ci/run` installs them).

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use clb_operator::{
    api::{ClbBackendBinding, TaskAction, TaskState},
    clb::v3::Action,
    emulator::{EmulatorHandle, Faults, SeedListener},
};
use common::{Plane, TestNs, eventually, fixtures, scenario::*};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{Namespace, Node, Pod},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

/// Where this test's control plane lives (its own: the shared one runs without ServiceAccount admission).
const DIR: &str = ".testenv/node-test";
/// The kubelet's node, and the address of its pod bridge (tests/testenv/node.sh).
const NODE: &str = "clb-testenv-node";
const BRIDGE_IP: &str = "10.89.0.1";
/// The release and its namespace.
const RELEASE: &str = "clb-operator";
const NS: &str = "clb-system";
/// The lease the chart's pods elect a leader with, and how long it holds.
const LEASE_SECS: u64 = 8;
const APP: &str = "lb-node0001";
const TCP: &str = "lbl-node0001";
/// Pods start, images unpack and probes pass on a real node: minutes on a loaded 2-core machine, not seconds.
const SLOW: Duration = Duration::from_secs(180);

/// The node's control plane: started (after stopping any leftover) and stopped again when dropped, with all it
/// made (containers, mounts, the bridge); the logs stay in `DIR/logs`.
struct NodePlane {
    dir: PathBuf,
    plane: Plane,
}

impl NodePlane {
    fn up() -> Self {
        let dir = common::repo().join(DIR);
        let _ = common::testenv(&dir, &["down"]).output();
        let started = Instant::now();
        let out = common::testenv(&dir, &["up", "--with-kwok", "--with-node"]).output().unwrap();
        assert!(
            out.status.success(),
            "testenv.sh up --with-node failed (logs in {}/logs):\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("control plane with a real node up in {:.1} s", started.elapsed().as_secs_f64());
        let plane = Plane::at(&dir);
        common::install_crds_into(&plane).unwrap();
        Self { dir, plane }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("node/containerd/containerd.sock")
    }

    /// Runs `bin` (helm or kubectl) against this control plane; stdout, or stderr as the error.
    fn run(&self, bin: &Path, args: &[&str]) -> Result<String, String> {
        let out = Command::new(bin)
            .arg("--kubeconfig")
            .arg(&self.plane.kubeconfig)
            .args(args)
            .current_dir(common::repo())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(format!("{} {args:?}: {}", bin.display(), String::from_utf8_lossy(&out.stderr))),
        }
    }

    /// `helm install|upgrade` of the chart as release `RELEASE` in `NS` with the values file, waiting for the
    /// rollout.
    fn chart(&self, verb: &str, values: &str, extra: &[&str]) -> String {
        let mut args = vec![verb, RELEASE, "charts/clb-operator", "-n", NS, "-f", values];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--wait", "--timeout", "5m"]);
        self.helm(&args)
    }

    fn helm(&self, args: &[&str]) -> String {
        self.run(common::helm_bin(), args)
            .unwrap_or_else(|e| panic!("{e}\n(logs in {})", self.plane.logs.display()))
    }
}

impl Drop for NodePlane {
    fn drop(&mut self) {
        match common::testenv(&self.dir, &["down"]).output() {
            Ok(out) if out.status.success() => {}
            other => eprintln!("testenv.sh down of {}: {other:?}", self.dir.display()),
        }
    }
}

/// The operator's pods: (name, pod IP, ready) of each one not being deleted.
async fn operator_pods(client: &Client) -> Vec<(String, String, bool)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/name=clb-operator")).await.unwrap();
    (list.items.into_iter())
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let status = p.status.unwrap_or_default();
            let ready = (status.conditions.unwrap_or_default().iter())
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (p.metadata.name.unwrap_or_default(), status.pod_ip.unwrap_or_default(), ready)
        })
        .collect()
}

/// Waits until exactly two operator pods are Ready, none of `not` among them; returns them.
async fn two_ready_pods(client: &Client, not: &BTreeSet<String>, hint: &str) -> Vec<(String, String, bool)> {
    eventually(SLOW, &format!("two Ready operator pods, none of {not:?} ({hint})"), || async {
        let pods = operator_pods(client).await;
        let fresh = pods.iter().all(|(name, _, ready)| *ready && !not.contains(name));
        (pods.len() == 2 && fresh).then_some(pods)
    })
    .await
}

async fn lease_holder(client: &Client) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), NS).get_opt(RELEASE).await.ok()??;
    lease.spec?.holder_identity
}

/// A plain HTTP GET from the host to a pod: the status code and body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()))
}

/// Successful `action` calls naming `instance`.
fn calls_naming(emu: &EmulatorHandle, action: Action, instance: &str) -> usize {
    let state = emu.state();
    let named = state.calls.iter().filter(|c| c.action == action.as_str() && c.error.is_none());
    named.filter(|c| c.instance_ids.iter().any(|i| i == instance)).count()
}

/// Waits until the binding's task `request_id` has succeeded and `instance` is no longer in its status.
async fn finished(t: &TestNs, request_id: &str, instance: &str) {
    eventually(
        SLOW,
        &format!("task {request_id} Succeeded and {instance} gone ({})", t.logs_hint()),
        || async {
            let s = status(t, "web").await;
            let done = s.tasks.iter().any(|x| x.request_id == request_id && x.state == TaskState::Succeeded);
            (done && !s.backends.iter().any(|b| b.instance_id == instance) && is_ready(&s)).then_some(())
        },
    )
    .await;
}

/// `helm install` on the real node: both replicas Ready under the restricted standard, one leader, a binding
/// reconciled from the pods; the leader deleted while a Deregister task runs (the standby takes over and finishes
/// the same RequestId); `helm upgrade` while a task runs; `helm uninstall` leaves the CRD and the bindings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_on_a_real_node_and_fails_over() {
    let node = NodePlane::up();
    let client = common::client_for(&node.plane.kubeconfig).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let real = nodes.get(NODE).await.unwrap();
    let runtime = real.status.and_then(|s| s.node_info).map(|i| i.container_runtime_version);
    println!("node {NODE} Ready, runtime {runtime:?}");

    let image = common::build_image();
    let tarball = image["tarball"].as_str().unwrap().to_owned();
    println!(
        "image {}: {} bytes compressed, {} bytes uncompressed",
        image["image"], image["tarball_bytes"], image["uncompressed_bytes"]
    );
    let out = Command::new("ctr")
        .arg("--address")
        .arg(node.sock())
        .args(["--namespace", "k8s.io", "images", "import", &tarball])
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr images import: {}", String::from_utf8_lossy(&out.stderr));

    // The CLB emulator listens on 127.0.0.1; the pods reach it at the bridge's address, DNATed to loopback.
    let mut config = fixtures::emulator_config(Duration::from_millis(300), vec![]);
    config.listeners = vec![SeedListener {
        load_balancer_id: APP.into(),
        listener_id: TCP.into(),
        protocol: "TCP".into(),
        port: 80,
        rules: vec![],
    }];
    let emu = fixtures::spawn_emulator(config).await;
    let endpoint = format!("http://{BRIDGE_IP}:{}/", emu.local_addr().port());

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let restricted: Namespace = serde_json::from_value(json!({"metadata": {"name": NS, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}}))
    .unwrap();
    namespaces.create(&PostParams::default(), &restricted).await.unwrap();
    // The namespace really enforces the standard: a pod that breaks it is refused.
    let root_pod: Pod = serde_json::from_value(json!({"metadata": {"name": "root"},
        "spec": {"containers": [{"name": "c", "image": "clb-operator:0.1.0",
            "securityContext": {"runAsUser": 0, "privileged": true}}]}}))
    .unwrap();
    let refused = Api::<Pod>::namespaced(client.clone(), NS).create(&PostParams::default(), &root_pod).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("PodSecurity")),
        "a privileged pod is refused in {NS}: {refused:?}"
    );

    let values = format!(
        "image: {{pullPolicy: Never}}\n\
         clb: {{endpoint: \"{endpoint}\"}}\n\
         leaderElection: {{leaseDuration: {LEASE_SECS}s}}\n\
         nodeSelector: {{kubernetes.io/hostname: {NODE}}}\n"
    );
    let values_file = node.dir.join("values.yaml");
    std::fs::write(&values_file, values).unwrap();
    let values_path = values_file.to_string_lossy().into_owned();
    let started = Instant::now();
    node.chart("install", &values_path, &[]);
    let hint = format!("logs in {}", node.plane.logs.display());
    let pods = two_ready_pods(&client, &BTreeSet::new(), &hint).await;
    println!("helm install -> both replicas Ready in {:.1} s", started.elapsed().as_secs_f64());
    for (name, ip, _) in &pods {
        assert!(ip.starts_with("10.89.0."), "{name} has a pod IP on the node's bridge: {ip}");
        let pod = Api::<Pod>::namespaced(client.clone(), NS).get(name).await.unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(NODE), "{name} runs on the real node");
        let token = spec.volumes.unwrap_or_default().iter().any(|v| v.projected.is_some());
        assert!(token, "{name} has its service-account token projected (in-cluster configuration)");
        // The probes' endpoints answer on the pod IP, as the kubelet sees them.
        let addr = format!("{ip}:8080");
        assert_eq!(get(&addr, "/readyz").map(|r| r.0), Some(200), "{name} /readyz");
        assert_eq!(get(&addr, "/healthz").map(|r| r.0), Some(200), "{name} /healthz");
    }
    let names: BTreeSet<String> = pods.iter().map(|p| p.0.clone()).collect();
    let leader = eventually(SLOW, "a pod holds the lease", || async {
        lease_holder(&client).await.filter(|h| names.contains(h))
    })
    .await;
    let leading: Vec<bool> = pods
        .iter()
        .map(|(_, ip, _)| {
            let metrics = get(&format!("{ip}:8080"), "/metrics").map(|r| r.1).unwrap_or_default();
            metrics.lines().any(|l| l.starts_with("clb_operator_leader 1"))
        })
        .collect();
    assert_eq!(leading.iter().filter(|l| **l).count(), 1, "exactly one replica leads: {pods:?} {leading:?}");

    // A binding created afterwards is reconciled by the leader pod against the emulator.
    let t = TestNs::on(node.plane.clone(), "node").await;
    let creds = emu.credentials();
    t.credentials_secret("clb-credentials", creds.secret_id(), creds.secret_key()).await;
    let tok = token_suffix();
    let kwok = kwok_nodes(&t, &tok, 3).await;
    binding(&t, "web", APP, false, json!({"listeners": [{"listenerId": TCP, "port": 30080}]})).await;
    let s = wait_ready_with(&t, "web", &ids(&kwok)).await;
    assert_eq!(s.backends.len(), 3, "{s:?}");
    assert_eq!(emu.state().targets.get(APP).map(Vec::len), Some(3), "registered by the pod");

    // The leader goes while a Deregister task runs: the standby takes over and polls the same RequestId.
    emu.set_faults(Faults { task_duration: Duration::from_secs(20), ..emu.faults() }).unwrap();
    let (gone_node, gone_id) = kwok[0].clone();
    nodes.delete(&gone_node, &DeleteParams::default()).await.unwrap();
    let running = running_task(&t, "web", TaskAction::Deregister).await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    let deleted_at = Instant::now();
    let deleted_ms = emu.state().calls.last().map(|c| c.at_ms).unwrap_or_default();
    pods_api.delete(&leader, &DeleteParams::default()).await.unwrap();
    // The old leader gives the lease back when it stops; the standby (which looks again when the lease it saw
    // would expire) or the Deployment's new pod (which finds it free) takes it.
    let next =
        eventually(Duration::from_secs(LEASE_SECS + 20), "another replica holds the lease", || async {
            let holder = lease_holder(&client).await.filter(|h| *h != leader)?;
            let live = operator_pods(&client).await;
            live.iter().any(|p| p.0 == holder).then_some(holder)
        })
        .await;
    println!(
        "leader {leader} deleted; {next} took the lease after {:.1} s (lease {LEASE_SECS} s; standby was {})",
        deleted_at.elapsed().as_secs_f64(),
        names.iter().find(|n| **n != leader).map_or("", String::as_str),
    );
    finished(&t, &running.request_id, &gone_id).await;
    assert_eq!(calls_naming(&emu, Action::BatchDeregisterTargets, &gone_id), 1, "no resubmission");
    let state = emu.state();
    let polled_after = state.calls.iter().filter(|c| {
        c.at_ms > deleted_ms
            && c.action == "DescribeTaskStatus"
            && c.task_id.as_deref() == Some(&running.request_id)
    });
    assert!(polled_after.count() >= 1, "the new leader polled RequestId {}", running.request_id);

    // helm upgrade with a changed value rolls the pods while a task runs; the task is finished, not repeated.
    let before: BTreeSet<String> = operator_pods(&client).await.into_iter().map(|p| p.0).collect();
    let (second_node, second_id) = kwok[1].clone();
    nodes.delete(&second_node, &DeleteParams::default()).await.unwrap();
    let running = running_task(&t, "web", TaskAction::Deregister).await;
    let started = Instant::now();
    node.chart("upgrade", &values_path, &["--set", "logging.level=debug"]);
    two_ready_pods(&client, &before, &hint).await;
    println!("helm upgrade -> new pods Ready in {:.1} s", started.elapsed().as_secs_f64());
    let deployment = Api::<Deployment>::namespaced(client.clone(), NS).get(RELEASE).await.unwrap();
    let env = format!("{:?}", deployment.spec.unwrap().template.spec.unwrap().containers[0].env);
    assert!(env.contains("debug"), "the changed value reached the pods: {env}");
    finished(&t, &running.request_id, &second_id).await;
    assert_eq!(calls_naming(&emu, Action::BatchDeregisterTargets, &second_id), 1, "no resubmission");

    // helm uninstall takes the operator away and leaves the CRD and the bindings.
    node.helm(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m"]);
    eventually(SLOW, "the operator's pods gone", || async {
        operator_pods(&client).await.is_empty().then_some(())
    })
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(crds.get_opt("clbbackendbindings.clb.tke.dev").await.unwrap().is_some(), "the CRD stays");
    let kept = t.api::<ClbBackendBinding>().get("web").await.unwrap();
    assert_eq!(kept.status.map(|s| s.backends.len()), Some(1), "the binding stays, with its status");
}
