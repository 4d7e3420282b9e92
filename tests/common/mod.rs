//! Test harness: one real control plane per test run (started by `tests/testenv/testenv.sh`, or reused through
//! `TESTENV_KUBECONFIG`), the CRDs from `crds/` installed, and a namespace of its own for every test.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod scenario;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the control plane gives the tests.
#[derive(Clone, Debug)]
pub struct Plane {
    /// Kubeconfig of an admin user.
    pub kubeconfig: PathBuf,
    /// Where the control plane's logs are, for failure messages.
    pub logs: PathBuf,
}

static PLANE: OnceLock<Result<Plane, String>> = OnceLock::new();

/// The control plane, started on first use. Reuses the one `TESTENV_KUBECONFIG` names, else runs
/// `testenv.sh up --with-kwok` (which is idempotent, so several test binaries share one control plane).
pub fn plane() -> &'static Plane {
    let plane = PLANE.get_or_init(|| {
        let plane = match std::env::var_os("TESTENV_KUBECONFIG") {
            Some(kc) => {
                let kubeconfig = PathBuf::from(kc);
                let logs = kubeconfig.parent().map(|d| d.join("logs")).unwrap_or_default();
                Plane { kubeconfig, logs }
            }
            None => start_plane()?,
        };
        install_crds_into(&plane)?;
        Ok(plane)
    });
    match plane {
        Ok(p) => p,
        Err(e) => panic!("test control plane unavailable: {e}"),
    }
}

fn start_plane() -> Result<Plane, String> {
    let dir =
        std::env::var_os("TESTENV_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join(".testenv/run"));
    let out = Command::new("bash")
        .arg(repo().join("tests/testenv/testenv.sh"))
        .args(["up", "--with-kwok"])
        .env("TESTENV_DIR", &dir)
        .output()
        .map_err(|e| format!("cannot run testenv.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "testenv.sh up failed (logs in {}):\n{}",
            dir.join("logs").display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Plane { kubeconfig: dir.join("kubeconfig"), logs: dir.join("logs") })
}

/// Applies every CRD in `crds/` and waits until each is established. Runs on its own runtime because each
/// `#[tokio::test]` has its own, and a client must not outlive the runtime it was made on.
pub fn install_crds_into(plane: &Plane) -> Result<(), String> {
    let kubeconfig = plane.kubeconfig.clone();
    std::thread::spawn(move || {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let client = client_for(&kubeconfig).await;
            let crds: Api<CustomResourceDefinition> = Api::all(client);
            let mut entries: Vec<_> = std::fs::read_dir(repo().join("crds"))
                .map_err(|e| format!("reading crds/: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect();
            entries.sort();
            for path in entries {
                let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let crd: CustomResourceDefinition =
                    serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                let name = crd.metadata.name.clone().unwrap_or_default();
                crds.patch(&name, &PatchParams::apply("clb-operator-tests").force(), &Patch::Apply(&crd))
                    .await
                    .map_err(|e| format!("applying {}: {e}", path.display()))?;
                tokio::time::timeout(
                    Duration::from_secs(30),
                    await_condition(crds.clone(), &name, conditions::is_crd_established()),
                )
                .await
                .map_err(|_| format!("CRD {name} not established in 30 s"))?
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    })
    .join()
    .map_err(|_| "CRD installer panicked".to_owned())?
}

/// A client for the given kubeconfig (made on the calling test's runtime).
pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("valid kubeconfig");
    Client::try_from(config).expect("client")
}

/// One test's view: a client and a fresh namespace.
pub struct TestNs {
    /// Admin client.
    pub client: Client,
    /// The test's own namespace.
    pub ns: String,
    /// The control plane.
    pub plane: Plane,
}

impl TestNs {
    /// Creates a namespace named after the test, unique per run.
    pub async fn new(test: &str) -> Self {
        let plane = plane().clone();
        let client = client_for(&plane.kubeconfig).await;
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let ns = format!("{}-{suffix}", test.replace('_', "-")).chars().take(63).collect::<String>();
        let api: Api<Namespace> = Api::all(client.clone());
        let obj = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(ns.clone()), ..Default::default() },
            ..Default::default()
        };
        api.create(&PostParams::default(), &obj).await.expect("create test namespace");
        Self { client, ns, plane }
    }

    /// A namespaced API in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates the CLB credentials Secret `name` in the test namespace.
    pub async fn credentials_secret(&self, name: &str, id: &str, key: &str) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            string_data: Some(
                [("secretId".to_string(), id.to_string()), ("secretKey".to_string(), key.to_string())].into(),
            ),
            ..Default::default()
        };
        self.api::<Secret>().create(&PostParams::default(), &secret).await.expect("create Secret");
    }

    /// Where to look when a test fails.
    pub fn logs_hint(&self) -> String {
        format!("control-plane logs: {}; namespace: {}", self.plane.logs.display(), self.ns)
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The control plane's kubectl binary (from `tests/testenv/versions.sh`).
pub fn kubectl_bin() -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(". \"$1/tests/testenv/versions.sh\" && printf %s \"$K8S_BIN/kubectl\"")
        .arg("versions")
        .arg(repo())
        .output()
        .expect("reading tests/testenv/versions.sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the control plane's kubectl against the test control plane; returns stdout, or stderr as the error.
pub fn try_kubectl(args: &[&str]) -> Result<String, String> {
    let bin = kubectl_bin();
    let out = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&plane().kubeconfig)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {bin}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// [`try_kubectl`], retried for up to 30 s: the API server publishes a new CRD's OpenAPI schema (which
/// `kubectl explain` reads) a few seconds after the CRD is established.
pub async fn kubectl(args: &[&str]) -> String {
    let mut last = String::new();
    for _ in 0..150 {
        match try_kubectl(args) {
            Ok(out) => return out,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{last}");
}

/// The operator as a separate process (the built binary), watching only the test's namespace, so that it can be
/// killed without warning. Its log goes to a file named after the namespace and `name`, in the temp folder.
pub struct OperatorProcess {
    child: std::process::Child,
    /// Where its log is.
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts `clb-operator run` against `endpoint`, with `extra` arguments and `env` variables.
    pub fn start(t: &TestNs, endpoint: &url::Url, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("{}-operator-{}.log", t.ns, rand::random::<u16>()));
        let has = |flag: &str| extra.iter().any(|a| a.starts_with(flag));
        let mut defaults: Vec<String> = Vec::new();
        if !has("--kubeconfig") {
            defaults.push(format!("--kubeconfig={}", t.plane.kubeconfig.display()));
        }
        if !has("--http-addr") {
            defaults.push("--http-addr=127.0.0.1:0".into());
        }
        let child = Command::new(env!("CARGO_BIN_EXE_clb-operator"))
            .args(["run", "--namespace", &t.ns, "--clb-endpoint", endpoint.as_str()])
            .args(&defaults)
            .args(extra)
            .env("RUST_LOG", "info,clb_operator=debug")
            .env_remove("TENCENTCLOUD_SECRET_ID")
            .env_remove("TENCENTCLOUD_SECRET_KEY")
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log).expect("operator log file"))
            .spawn()
            .expect("start the operator binary");
        Self { child, log }
    }

    /// SIGKILL: no cleanup, no final status write, no lease release.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
