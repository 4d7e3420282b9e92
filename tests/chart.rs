//! The Helm chart and `deploy/`: the chart lints and renders (default and non-default values), the schema refuses
//! bad values, its CRD and `deploy/` cannot drift, and a real install is accepted by the API server, its pod meets
//! the restricted Pod Security Standard, and its ServiceAccount may do exactly what the operator does - checked
//! with `kubectl auth can-i`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use common::TestNs;
use serde_json::Value;

const CHART: &str = "charts/clb-operator";
/// The release name: every object of the chart is then named `clb-operator`.
const RELEASE: &str = "clb-operator";
const SA: &str = "clb-operator";

fn output(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(common::repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Runs helm in the repository root (no cluster); stdout, or stderr as the error.
fn helm(args: &[&str]) -> Result<String, String> {
    let out = output(common::helm_bin(), args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs helm against the test control plane.
fn helm_in_cluster(args: &[&str]) -> Result<String, String> {
    let kubeconfig = common::plane().kubeconfig.to_string_lossy().into_owned();
    let mut all = vec!["--kubeconfig", &kubeconfig];
    all.extend_from_slice(args);
    helm(&all)
}

/// Renders the chart (release `clb-operator` in namespace `clb-operator`) and parses every document.
fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", "clb-operator"];
    args.extend_from_slice(extra);
    let yaml = helm(&args).unwrap_or_else(|e| panic!("helm {args:?} failed:\n{e}"));
    serde_saphyr::from_multiple(&yaml).unwrap_or_else(|e| panic!("helm {args:?} is not YAML: {e}\n{yaml}"))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> =
        docs.iter().map(|d| d["kind"].as_str().unwrap_or_default().to_owned()).collect();
    kinds.sort();
    kinds
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
}

/// Does any ClusterRole rule grant something on secrets?
fn cluster_role_mentions_secrets(docs: &[Value]) -> bool {
    let rules = &find(docs, "ClusterRole", "clb-operator")["rules"];
    rules.as_array().unwrap().iter().any(|r| strings(&r["resources"]).contains(&"secrets".to_owned()))
}

const NON_DEFAULT: &str = r#"
replicaCount: 3
image: {repository: registry.example.com/clb-operator, tag: "1.2.3", pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
clb: {api: v2, endpoint: "http://clb-emulator.test:8080/v2/index.php", rateLimit: 5, batchSize: 50}
credentials: {existingSecret: clb-credentials}
reconcile: {concurrency: 4, resync: 10m, settle: 250ms, watchNamespace: shop}
leaderElection: {enabled: true, leaseName: clb-leader, leaseDuration: 30s}
logging: {level: "info,clb_operator=debug", format: json}
rbac: {secretNamespaces: [shop, web]}
serviceAccount: {annotations: {team: platform}}
podAnnotations: {prometheus.io/scrape: "true"}
podLabels: {team: platform}
nodeSelector: {node-role.kubernetes.io/system: "true"}
tolerations: [{key: dedicated, operator: Equal, value: system, effect: NoSchedule}]
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64]}]}]
priorityClassName: system-cluster-critical
extraEnv: [{name: HTTPS_PROXY, value: "http://proxy:3128"}]
podDisruptionBudget: {enabled: true, maxUnavailable: 1}
serviceMonitor: {enabled: true, interval: 15s, scrapeTimeout: 5s, labels: {release: prometheus}}
networkPolicy:
  enabled: true
  metricsFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
  apiServer: {cidrs: [172.16.0.10/32, 172.16.0.11/32], port: 6443}
  clb: {cidrs: [10.200.0.0/16], port: 8080}
"#;

fn non_default_values() -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), NON_DEFAULT).unwrap();
    file
}

/// `helm lint --strict` passes with the default values and with a non-default set.
#[test]
fn chart_lints() {
    helm(&["lint", "--strict", CHART]).unwrap_or_else(|e| panic!("helm lint failed:\n{e}"));
    let values = non_default_values();
    let path = values.path().to_string_lossy();
    helm(&["lint", "--strict", CHART, "-f", &path])
        .unwrap_or_else(|e| panic!("helm lint with non-default values failed:\n{e}"));
}

/// The default values render the objects of a production install: two leader-elected replicas under the
/// restricted pod security standard, probes, resources, a PDB, a metrics Service, and RBAC with cluster-wide
/// secrets get; no ServiceMonitor and no credentials.
#[test]
fn default_values_render_a_production_install() {
    let docs = render(&[]);
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let d = find(&docs, "Deployment", "clb-operator");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], SA);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "clb-operator:0.1.0", "default tag is the appVersion");
    let args = strings(&c["args"]);
    for arg in [
        "run",
        "--http-addr=0.0.0.0:8080",
        "--leader-elect",
        "--leader-election-lease=clb-operator",
        "--lease-duration=15s",
        "--clb-api=v3",
        "--rate-limit=20",
        "--batch-size=20",
    ] {
        assert!(args.iter().any(|a| a == arg), "args lack {arg}: {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--namespace")), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--clb-endpoint")), "the endpoint follows the API: {args:?}");
    let env: Vec<&Value> = c["env"].as_array().unwrap().iter().collect();
    let env_named = |n: &str| env.iter().find(|e| e["name"] == n).copied();
    assert_eq!(env_named("POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(
        env_named("POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert!(env_named("TENCENTCLOUD_SECRET_ID").is_none(), "no credentials by default");
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["resources"]["requests"]["cpu"], "50m");
    assert_eq!(c["resources"]["limits"]["memory"], "128Mi");
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(pod["affinity"]["podAntiAffinity"].is_object(), "replicas spread by default");

    assert_eq!(find(&docs, "PodDisruptionBudget", "clb-operator")["spec"]["maxUnavailable"], 1);
    let svc = find(&docs, "Service", "clb-operator");
    assert_eq!(svc["spec"]["ports"][0]["name"], "http");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    assert!(cluster_role_mentions_secrets(&docs));
    let lease_role = find(&docs, "Role", "clb-operator-leader-election");
    assert_eq!(lease_role["metadata"]["namespace"], "clb-operator");
}

/// A non-default set renders as asked: ServiceMonitor, per-namespace secrets Roles and no cluster-wide secrets
/// rule, the credentials Secret (token optional), scheduling settings, and the CLB and reconcile settings as
/// flags.
#[test]
fn non_default_values_render_as_asked() {
    let values = non_default_values();
    let docs = render(&["-f", &values.path().to_string_lossy()]);
    let sm = find(&docs, "ServiceMonitor", "clb-operator");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");

    assert!(!cluster_role_mentions_secrets(&docs), "secretNamespaces must remove the cluster-wide rule");
    for ns in ["shop", "web"] {
        let role = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no secrets Role in {ns}"));
        assert_eq!(role["rules"][0]["resources"][0], "secrets");
        assert_eq!(strings(&role["rules"][0]["verbs"]), ["get"]);
        assert!(
            docs.iter().any(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == ns),
            "no secrets RoleBinding in {ns}"
        );
    }
    let lease_role = find(&docs, "Role", "clb-operator-leader-election");
    assert_eq!(strings(&lease_role["rules"][1]["resourceNames"]), ["clb-leader"]);

    let d = find(&docs, "Deployment", "clb-operator");
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["node-role.kubernetes.io/system"], "true");
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert!(pod["affinity"]["nodeAffinity"].is_object());
    assert!(pod["affinity"]["podAntiAffinity"].is_null(), "a given affinity replaces the default");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["team"], "platform");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example.com/clb-operator:1.2.3");
    assert_eq!(c["imagePullPolicy"], "Always");
    let args = strings(&c["args"]);
    for arg in [
        "--clb-api=v2",
        "--clb-endpoint=http://clb-emulator.test:8080/v2/index.php",
        "--rate-limit=5",
        "--batch-size=50",
        "--concurrency=4",
        "--resync=10m",
        "--settle=250ms",
        "--namespace=shop",
        "--leader-election-lease=clb-leader",
        "--lease-duration=30s",
        "--log-format=json",
    ] {
        assert!(args.iter().any(|a| a == arg), "args lack {arg}: {args:?}");
    }
    let env = c["env"].as_array().unwrap();
    let env_named = |n: &str| env.iter().find(|e| e["name"] == n).unwrap_or_else(|| panic!("no env {n}"));
    assert_eq!(env_named("RUST_LOG")["value"], "info,clb_operator=debug");
    assert_eq!(env_named("HTTPS_PROXY")["value"], "http://proxy:3128");
    for (var, key) in [
        ("TENCENTCLOUD_SECRET_ID", "secretId"),
        ("TENCENTCLOUD_SECRET_KEY", "secretKey"),
        ("TENCENTCLOUD_SESSION_TOKEN", "token"),
    ] {
        let r = &env_named(var)["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], "clb-credentials");
        assert_eq!(r["key"], key);
        assert_eq!(r["optional"].as_bool().unwrap_or(false), key == "token", "{var}");
    }
}

/// The optional NetworkPolicy: ingress to the metrics port only (from the given peers), egress to the API
/// server's addresses and port, DNS and the CLB endpoint only; it cannot be enabled without the addresses.
#[test]
fn the_network_policy_allows_only_what_the_operator_needs() {
    let values = non_default_values();
    let docs = render(&["-f", &values.path().to_string_lossy()]);
    let np = &find(&docs, "NetworkPolicy", "clb-operator")["spec"];
    assert_eq!(np["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "clb-operator");
    assert_eq!(strings(&np["policyTypes"]), ["Ingress", "Egress"]);
    let ingress = np["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0]["ports"], serde_json::json!([{"port": "http", "protocol": "TCP"}]));
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let egress = np["egress"].as_array().unwrap();
    let cidrs = |rule: &Value| -> Vec<String> {
        rule["to"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["ipBlock"]["cidr"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(egress.len(), 3, "API server, DNS, CLB: {egress:?}");
    assert_eq!(cidrs(&egress[0]), ["172.16.0.10/32", "172.16.0.11/32"]);
    assert_eq!(egress[0]["ports"][0]["port"], 6443);
    assert_eq!(egress[1]["to"][0]["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
    let dns_ports: Vec<(i64, &str)> = (egress[1]["ports"].as_array().unwrap().iter())
        .map(|p| (p["port"].as_i64().unwrap(), p["protocol"].as_str().unwrap()))
        .collect();
    assert_eq!(dns_ports, [(53, "UDP"), (53, "TCP")]);
    assert_eq!(cidrs(&egress[2]), ["10.200.0.0/16"]);
    assert_eq!(egress[2]["ports"][0]["port"], 8080);
    assert!(!kinds(&render(&[])).contains(&"NetworkPolicy".to_owned()), "off by default");

    let err = helm(&["template", RELEASE, CHART, "--set", "networkPolicy.enabled=true"]).unwrap_err();
    assert!(err.contains("networkPolicy.apiServer.cidrs is required"), "{err}");
    let err =
        helm(&["template", RELEASE, CHART, "--set", "networkPolicy.apiServer.cidrs={10.0.0.1}"]).unwrap_err();
    assert!(err.contains("at '/networkPolicy/apiServer/cidrs/0'"), "{err}");
}

/// kube-score (tests/testenv/build.sh kube-score) passes the rendered chart, default and non-default values; the
/// checks it would fail by default are ignored on the Deployment only where values.yaml gives the reason.
#[test]
fn kube_score_passes_the_rendered_chart() {
    let bin = common::testenv_bin("KUBE_SCORE_BIN", "kube-score");
    if !bin.is_file() {
        let out = Command::new("bash")
            .arg(common::repo().join("tests/testenv/build.sh"))
            .arg("kube-score")
            .output();
        assert!(out.is_ok_and(|o| o.status.success()) && bin.is_file(), "build.sh kube-score failed");
    }
    let values = non_default_values();
    let path = values.path().to_string_lossy().into_owned();
    for (what, extra) in [("default values", vec![]), ("non-default values", vec!["-f", path.as_str()])] {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", "clb-operator"];
        args.extend(extra.iter().copied());
        let rendered = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(rendered.path(), helm(&args).unwrap()).unwrap();
        let out = output(&bin, &["score", "--output-format", "ci", &rendered.path().to_string_lossy()]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "kube-score fails the chart with {what}:\n{report}");
        assert!(
            report.contains("[OK] clb-operator/clb-operator apps/v1/Deployment"),
            "kube-score scored the Deployment:\n{report}"
        );
        println!("kube-score, {what}:\n{report}");
    }
    let d = find(&render(&[]), "Deployment", "clb-operator").clone();
    assert_eq!(
        d["metadata"]["annotations"]["kube-score/ignore"],
        "pod-networkpolicy,container-image-pull-policy"
    );
    let values = non_default_values();
    let d = find(&render(&["-f", &values.path().to_string_lossy()]), "Deployment", "clb-operator").clone();
    assert!(d["metadata"]["annotations"].is_null(), "nothing ignored with a NetworkPolicy and Always");
}

/// Bad values are refused before anything is rendered, each with the schema's message naming the key.
#[test]
fn bad_values_are_refused_with_a_clear_message() {
    for (set, message) in [
        ("replicaCount=-1", "at '/replicaCount': minimum: got -1, want 1"),
        ("replicaCount=two", "at '/replicaCount': got string, want integer"),
        ("leaderElection.bogus=1", "at '/leaderElection': additional properties 'bogus' not allowed"),
        ("replicas=3", "additional properties 'replicas' not allowed"),
        ("clb.api=v4", "at '/clb/api'"),
        ("clb.batchSize=0", "at '/clb/batchSize': minimum: got 0, want 1"),
        ("clb.batchSize=101", "at '/clb/batchSize': maximum: got 101, want 100"),
        ("clb.rateLimit=0", "at '/clb/rateLimit': minimum: got 0, want 1"),
        ("clb.region=gz", "at '/clb': additional properties 'region' not allowed"),
        ("logging.format=xml", "at '/logging/format': value must be one of 'text', 'json'"),
        ("reconcile.resync=5minutes", "at '/reconcile/resync': '5minutes' does not match pattern"),
        ("rbac.secretNamespaces={Shop}", "at '/rbac/secretNamespaces/0': 'Shop' does not match pattern"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy': value must be one of"),
        ("leaderElection.enabled=false", "replicaCount > 1 needs leaderElection.enabled"),
    ] {
        let err = helm(&["template", RELEASE, CHART, "--set", set])
            .expect_err(&format!("--set {set} must be refused"));
        assert!(err.contains(message), "--set {set}: expected {message:?} in:\n{err}");
    }
    // One replica without leader election is fine.
    render(&["--set", "leaderElection.enabled=false", "--set", "replicaCount=1"]);
}

/// The chart ships the repository's CRD byte for byte (`cp crds/clbbackendbindings.yaml charts/clb-operator/crds/`).
#[test]
fn chart_crds_equal_the_repos_crds() {
    let repo = common::repo();
    let mut names: Vec<_> =
        std::fs::read_dir(repo.join("crds")).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    let mut chart_names: Vec<_> =
        std::fs::read_dir(repo.join(CHART).join("crds")).unwrap().map(|e| e.unwrap().file_name()).collect();
    chart_names.sort();
    assert_eq!(names, chart_names, "charts/clb-operator/crds/ must hold the same files as crds/");
    for name in names {
        let ours = std::fs::read(repo.join("crds").join(&name)).unwrap();
        let chart = std::fs::read(repo.join(CHART).join("crds").join(&name)).unwrap();
        assert!(
            ours == chart,
            "charts/clb-operator/crds/{0} differs from crds/{0}: cp crds/{0} charts/clb-operator/crds/",
            name.to_string_lossy()
        );
    }
}

/// `deploy/clb-operator.yaml` is the Namespace plus the chart rendered with default values, as
/// `deploy/render.sh` prints it.
#[test]
fn deploy_manifests_equal_the_rendered_chart() {
    let repo = common::repo();
    let out = Command::new("bash")
        .arg(repo.join("deploy/render.sh"))
        .env("HELM", common::helm_bin())
        .output()
        .unwrap();
    assert!(out.status.success(), "deploy/render.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(repo.join("deploy/clb-operator.yaml")).unwrap();
    assert!(
        rendered == committed,
        "deploy/clb-operator.yaml is stale; regenerate it with `bash deploy/render.sh > deploy/clb-operator.yaml` \
         (the Namespace, then `helm template clb-operator charts/clb-operator --namespace clb-operator`)"
    );
    // `kubectl apply -f deploy/` applies every .yaml, .yml and .json file there: clb-operator.yaml must be the
    // only one (the scripts beside it are not manifests).
    let manifests: Vec<String> = (std::fs::read_dir(repo.join("deploy")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| [".yaml", ".yml", ".json"].iter().any(|ext| n.ends_with(ext)))
        .collect();
    assert_eq!(manifests, ["clb-operator.yaml"], "deploy/ holds one manifest");

    let docs: Vec<Value> = serde_saphyr::from_multiple(&committed).unwrap();
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs[0]["metadata"]["name"], "clb-operator");
    assert_eq!(&docs[1..], render(&[]).as_slice());
}

/// Serializes the installs: the ClusterRole and ClusterRoleBinding are cluster-wide objects named clb-operator.
static INSTALLS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A release in a test namespace, uninstalled when dropped (also when the test fails).
struct Release {
    ns: String,
    /// The objects helm installed.
    docs: Vec<Value>,
}

impl Release {
    /// `helm install` (the CRD is already installed by the harness) and check every object exists.
    fn install(ns: &str, extra: &[&str]) -> Self {
        // Cluster-wide leftovers of an aborted earlier run would make helm refuse to install.
        let _ = common::try_kubectl(&[
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            "app.kubernetes.io/name=clb-operator,app.kubernetes.io/instance=clb-operator",
            "--ignore-not-found",
        ]);
        let mut args = vec!["install", RELEASE, CHART, "--namespace", ns, "--skip-crds", "--wait=false"];
        args.extend_from_slice(extra);
        let notes = helm_in_cluster(&args).unwrap_or_else(|e| panic!("helm {args:?} failed:\n{e}"));
        let mut release = Self { ns: ns.to_owned(), docs: Vec::new() };
        assert!(notes.contains("kubectl get cbb -A"), "NOTES.txt not shown:\n{notes}");

        let manifest = helm_in_cluster(&["get", "manifest", RELEASE, "--namespace", ns]).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&manifest).unwrap();
        let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(file.path(), &manifest).unwrap();
        let found = common::try_kubectl(&["get", "-f", &file.path().to_string_lossy(), "-o", "name"])
            .unwrap_or_else(|e| panic!("objects of the release missing: {e}"));
        assert_eq!(found.lines().count(), docs.len(), "every object is in the cluster:\n{found}");
        release.docs = docs;
        release
    }

    /// The operator's pod meets the restricted Pod Security Standard: a Pod made from the Deployment's template
    /// is admitted (server-side dry run) in the release namespace, which enforces that standard.
    fn assert_pod_is_restricted(&self) {
        common::try_kubectl(&[
            "label",
            "namespace",
            &self.ns,
            "pod-security.kubernetes.io/enforce=restricted",
        ])
        .unwrap();
        let template = &find(&self.docs, "Deployment", "clb-operator")["spec"]["template"];
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "clb-operator-psa-check", "namespace": self.ns, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        });
        let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
        std::fs::write(file.path(), pod.to_string()).unwrap();
        common::try_kubectl(&["create", "--dry-run=server", "-f", &file.path().to_string_lossy()])
            .unwrap_or_else(|e| {
                panic!("the operator's pod is not admitted under the restricted standard: {e}")
            });
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm_in_cluster(&["uninstall", RELEASE, "--namespace", &self.ns]);
    }
}

const VERBS: [&str; 8] = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];

/// `kubectl auth can-i VERB RESOURCE ... --as` the operator's ServiceAccount.
fn can_i(ns: &str, verb: &str, resource: &str, scope: &[&str]) -> bool {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    let kubectl = KUBECTL.get_or_init(|| common::testenv_bin("K8S_BIN", "kubectl"));
    let kubeconfig = common::plane().kubeconfig.to_string_lossy().into_owned();
    let user = format!("system:serviceaccount:{ns}:{SA}");
    let mut args = vec!["--kubeconfig", &kubeconfig, "auth", "can-i", verb, resource, "--as", &user];
    args.extend_from_slice(scope);
    let out = output(kubectl, &args);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {args:?}: {other}\n{}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Asks `kubectl auth can-i` about every verb of each (resource, scope) and compares with the verbs allowed.
fn assert_rights(ns: &str, expected: &[(&str, Vec<&str>, &[&str])]) {
    let mut wrong = Vec::new();
    std::thread::scope(|s| {
        let rows: Vec<_> = expected
            .iter()
            .map(|(resource, scope, allowed)| {
                s.spawn(move || {
                    VERBS
                        .iter()
                        .filter_map(|verb| {
                            let yes = can_i(ns, verb, resource, scope);
                            (yes != allowed.contains(verb)).then(|| {
                                format!(
                                    "can-i {verb} {resource} {scope:?}: {}",
                                    if yes { "yes" } else { "no" }
                                )
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for row in rows {
            wrong.extend(row.join().unwrap());
        }
    });
    assert!(
        wrong.is_empty(),
        "the ServiceAccount's rights differ from the operator's needs:\n{}",
        wrong.join("\n")
    );
}

const ALL_NS: &[&str] = &["--all-namespaces"];

/// The rights every install has, whatever rbac.secretNamespaces says: (resource, scope, allowed verbs).
fn common_rights<'a>(
    ns: &'a [&'a str],
    other: &'a [&'a str],
) -> Vec<(&'static str, Vec<&'a str>, &'static [&'static str])> {
    vec![
        ("nodes", vec![], &["get", "list", "watch", "patch"]),
        ("pods", ALL_NS.to_vec(), &["get", "list", "watch"]),
        ("clbbackendbindings.clb.tke.dev", ALL_NS.to_vec(), &["get", "list", "watch", "patch", "update"]),
        (
            "clbbackendbindings.clb.tke.dev",
            [ALL_NS, &["--subresource=status"]].concat(),
            &["get", "patch", "update"],
        ),
        ("clbbackendbindings.clb.tke.dev", [ALL_NS, &["--subresource=finalizers"]].concat(), &["update"]),
        ("events.events.k8s.io", other.to_vec(), &["create", "patch"]),
        // The Lease: created (any name), then read and renewed by name, in the release namespace only.
        ("leases.coordination.k8s.io", ns.to_vec(), &["create"]),
        ("leases.coordination.k8s.io/clb-operator", ns.to_vec(), &["get", "update", "patch", "create"]),
        ("leases.coordination.k8s.io/clb-operator", other.to_vec(), &[]),
        ("leases.coordination.k8s.io", other.to_vec(), &[]),
        // A sample of what the operator never does.
        ("configmaps", ns.to_vec(), &[]),
        ("deployments.apps", ns.to_vec(), &[]),
        ("customresourcedefinitions.apiextensions.k8s.io", vec![], &[]),
        ("serviceaccounts", ns.to_vec(), &[]),
    ]
}

/// With the default values the release is accepted and its ServiceAccount may do exactly what the operator
/// does, with `get`, `list` and `watch secrets` (metadata watch) in every namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_grants_exactly_the_verbs_the_operator_uses() {
    let _serial = INSTALLS.lock().await;
    let t = TestNs::new("chart-default").await;
    let other = TestNs::new("chart-other").await;
    let release = Release::install(&t.ns, &[]);
    release.assert_pod_is_restricted();

    let ns: &[&str] = &["-n", &t.ns];
    let other_ns: &[&str] = &["-n", &other.ns];
    let mut expected = common_rights(ns, other_ns);
    expected.push(("secrets", other_ns.to_vec(), &["get", "list", "watch"]));
    expected.push(("secrets", ALL_NS.to_vec(), &["get", "list", "watch"]));
    assert_rights(&t.ns, &expected);
}

/// With `rbac.secretNamespaces` the operator may `get secrets` only in the listed namespaces, and everything
/// else stays as with the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_with_secret_namespaces_keeps_secrets_narrow() {
    let _serial = INSTALLS.lock().await;
    let t = TestNs::new("chart-narrow").await;
    let shop = TestNs::new("chart-shop").await;
    let web = TestNs::new("chart-web").await;
    let other = TestNs::new("chart-other").await;
    let list = format!("rbac.secretNamespaces={{{},{}}}", shop.ns, web.ns);
    let _release =
        Release::install(&t.ns, &["--set", &list, "--set", "credentials.existingSecret=clb-credentials"]);

    let ns: &[&str] = &["-n", &t.ns];
    let other_ns: &[&str] = &["-n", &other.ns];
    let (shop_ns, web_ns): (&[&str], &[&str]) = (&["-n", &shop.ns], &["-n", &web.ns]);
    let mut expected = common_rights(ns, other_ns);
    expected.push(("secrets", shop_ns.to_vec(), &["get"]));
    expected.push(("secrets", web_ns.to_vec(), &["get"]));
    expected.push(("secrets", other_ns.to_vec(), &[]));
    expected.push(("secrets", ns.to_vec(), &[]));
    expected.push(("secrets", ALL_NS.to_vec(), &[]));
    assert_rights(&t.ns, &expected);
}

/// A bad value also stops `helm install` before anything reaches the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_refuses_bad_values() {
    let t = TestNs::new("chart-bad").await;
    let err = helm_in_cluster(&[
        "install",
        "bad",
        CHART,
        "--namespace",
        &t.ns,
        "--skip-crds",
        "--set",
        "replicaCount=-1",
    ])
    .expect_err("replicaCount=-1 must be refused");
    assert!(err.contains("at '/replicaCount': minimum: got -1, want 1"), "{err}");
    let releases = helm_in_cluster(&["list", "--namespace", &t.ns, "-q"]).unwrap();
    assert!(releases.trim().is_empty(), "{releases}");
}

/// The operator really works with nothing but the chart's rights: run as the chart's ServiceAccount (a token
/// from the TokenRequest API), with leader election, it takes the lease, reads a binding's Secret, registers and
/// deregisters, and writes status, finalizers and events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_with_exactly_the_charts_rights() {
    use common::scenario::*;
    let _serial = INSTALLS.lock().await;
    let (t, emu) = setup("chart-rights").await;
    let release = Release::install(&t.ns, &[]);
    let token = common::try_kubectl(&["create", "token", SA, "-n", &t.ns, "--duration=1h"]).unwrap();
    let admin = std::fs::read_to_string(&t.plane.kubeconfig).unwrap();
    let start = admin.find("token: \"").expect("token in the test kubeconfig") + "token: \"".len();
    let end = start + admin[start..].find('"').unwrap();
    let as_sa = format!("{}{}{}", &admin[..start], token.trim(), &admin[end..]);
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), as_sa).unwrap();

    let tok = token_suffix();
    let nodes = nodes(&t, &tok, 2).await;
    let kc = format!("--kubeconfig={}", kubeconfig.path().display());
    let lease_ns = format!("--leader-election-namespace={}", t.ns);
    let _op = common::OperatorProcess::start(
        &t,
        &emu.endpoint(),
        &[kc.as_str(), "--leader-elect", lease_ns.as_str()],
        &[("POD_NAME", "chart-rights-0")],
    );
    binding(&t, "web", LB, false, serde_json::json!({})).await;
    wait_ready_with(&t, "web", &ids(&nodes)).await;
    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(t.client.clone());
    api.delete(&nodes[0].0, &Default::default()).await.unwrap();
    wait_ready_with(&t, "web", &ids(&nodes[1..])).await;
    assert_eq!(deregister_calls(&emu), [vec![nodes[0].1.clone()]]);
    let events = common::try_kubectl(&["get", "events", "-n", &t.ns, "-o", "name"]).unwrap();
    assert!(!events.trim().is_empty(), "the operator published events");
    drop(release);
}
