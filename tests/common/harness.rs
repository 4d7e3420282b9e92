//! The control plane: one per test run (started by `tests/testenv/testenv.sh`, or reused through
//! `TESTENV_KUBECONFIG`), the CRDs from `crds/` installed, and a namespace of its own for every test, deleted
//! again when the test is done.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use super::fixtures;
use k8s_openapi::{
    api::core::v1::{Namespace, Node},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
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

impl Plane {
    /// The control plane `testenv.sh` keeps in `dir` (its `TESTENV_DIR`).
    pub fn at(dir: &Path) -> Self {
        Self { kubeconfig: dir.join("kubeconfig"), logs: dir.join("logs") }
    }
}

/// `testenv.sh <args>` for the control plane in `dir`.
pub fn testenv(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("tests/testenv/testenv.sh")).args(args).env("TESTENV_DIR", dir);
    cmd
}

fn start_plane() -> Result<Plane, String> {
    let dir =
        std::env::var_os("TESTENV_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join(".testenv/run"));
    let out =
        testenv(&dir, &["up", "--with-kwok"]).output().map_err(|e| format!("cannot run testenv.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "testenv.sh up failed (logs in {}):\n{}",
            dir.join("logs").display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(Plane::at(&dir))
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
    try_client_for(kubeconfig).await.unwrap_or_else(|e| panic!("{e}"))
}

/// [`client_for`], with the failure as a value.
pub async fn try_client_for(kubeconfig: &Path) -> Result<Client, String> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| format!("unreadable kubeconfig: {e}"))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("invalid kubeconfig: {e}"))?;
    Client::try_from(config).map_err(|e| format!("client: {e}"))
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
        Self::on(plane().clone(), test).await
    }

    /// [`TestNs::new`] on another control plane than the shared one, whose CRDs the caller installed.
    pub async fn on(plane: Plane, test: &str) -> Self {
        let client = client_for(&plane.kubeconfig).await;
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let ns = format!("{}-{suffix}", test.replace('_', "-")).chars().take(63).collect::<String>();
        fixtures::namespace(&client, &ns).await.expect("create test namespace");
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
        fixtures::credentials_secret(&self.client, &self.ns, name, id, key).await.expect("create Secret");
    }

    /// Where to look when a test fails.
    pub fn logs_hint(&self) -> String {
        format!("control-plane logs: {}; namespace: {}", self.plane.logs.display(), self.ns)
    }
}

/// How long cleanup may take before the test goes on without it.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for TestNs {
    /// Deletes the namespace and the test's nodes (labelled `clb-test=<ns>`), so that they do not pile up in the
    /// shared control plane, where every operator watches all nodes. Best effort and bounded in time: a failure is
    /// only reported. A failed test keeps its objects, to be looked at with the names in its panic message.
    ///
    /// The test's client belongs to the test's runtime, which may be shutting down; this runs on a thread of its
    /// own, with a runtime and a client of its own.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: keeping namespace {} and its nodes", self.ns);
            return;
        }
        let (ns, kubeconfig) = (self.ns.clone(), self.plane.kubeconfig.clone());
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    // The timer needs the runtime: made inside it, not as block_on's argument.
                    rt.block_on(async {
                        tokio::time::timeout(CLEANUP_TIMEOUT, delete_test_objects(&kubeconfig, &ns)).await
                    })
                    .map_err(|_| "timed out".to_owned())?
                });
            if let Err(e) = result {
                eprintln!("cleanup of test namespace {ns}: {e}");
            }
            let _ = done.send(());
        });
        // Wait a little longer than the cleanup's own timeout; never longer.
        let _ = wait.recv_timeout(CLEANUP_TIMEOUT + Duration::from_secs(2));
    }
}

/// Deletes namespace `ns` and the nodes labelled `clb-test=<ns>`; does not wait for them to be gone.
async fn delete_test_objects(kubeconfig: &Path, ns: &str) -> Result<(), String> {
    let client = try_client_for(kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let labelled = ListParams::default().labels(&format!("clb-test={ns}"));
    let nodes_deleted = nodes.delete_collection(&DeleteParams::default(), &labelled).await.map(|_| ());
    let namespaces: Api<Namespace> = Api::all(client);
    let ns_deleted = match namespaces.delete(ns, &DeleteParams::background()).await {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other.map(|_| ()),
    };
    nodes_deleted.and(ns_deleted).map_err(|e| e.to_string())
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
    testenv_bin("K8S_BIN", "kubectl").to_string_lossy().into_owned()
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

/// Builds the operator's image with `deploy/image.sh`; what it reports (image, tarball, sizes) as JSON.
pub fn build_image() -> serde_json::Value {
    let repo = repo();
    let out = Command::new("bash").arg(repo.join("deploy/image.sh")).current_dir(&repo).output().unwrap();
    assert!(out.status.success(), "deploy/image.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .expect("image.sh reports the image as JSON")
}

/// A binary of the test environment: `$<dir_var>/<name>` as tests/testenv/versions.sh sets it (e.g. `K8S_BIN`,
/// `HELM_BIN`).
pub fn testenv_bin(dir_var: &str, name: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg("-c")
        .arg(". \"$1/tests/testenv/versions.sh\" && printf %s \"${!2}/$3\"")
        .args(["versions", &repo().to_string_lossy(), dir_var, name])
        .output()
        .expect("bash reads tests/testenv/versions.sh");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pinned helm, built by `tests/testenv/build.sh helm` on first use if the cache lacks it.
pub fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = testenv_bin("HELM_BIN", "helm");
        if !bin.is_file() {
            let out = Command::new("bash")
                .arg(repo().join("tests/testenv/build.sh"))
                .arg("helm")
                .output()
                .expect("run tests/testenv/build.sh");
            assert!(
                out.status.success() && bin.is_file(),
                "no helm at {} and `bash tests/testenv/build.sh helm` failed:\n{}",
                bin.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        bin
    })
}

/// The python that draws the benchmarks' plots: a venv with matplotlib under target/ when there is one
/// (`python3 -m venv target/plot-venv; target/plot-venv/bin/pip install matplotlib`), else python3.
pub fn plot_python() -> std::ffi::OsString {
    let venv = repo().join("target/plot-venv/bin/python");
    if venv.exists() { venv.into_os_string() } else { "python3".into() }
}
