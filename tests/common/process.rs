//! The operator as a separate process (the built binary), and what a test reads from it over HTTP.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use super::{TestNs, eventually, scenario::WAIT};

/// The operator as a separate process (the built binary), so that it can be killed without warning or stopped as
/// a pod is. It serves `/metrics`, `/readyz` and `/healthz` on a free port of 127.0.0.1; its log (stderr) goes to
/// a file. Killed when dropped.
pub struct OperatorProcess {
    child: Child,
    port: u16,
    /// Where its log is.
    pub log: PathBuf,
}

/// How to start an [`OperatorProcess`]: `clb-operator run` against a control plane and a CLB endpoint.
pub struct OperatorCommand {
    kubeconfig: PathBuf,
    endpoint: url::Url,
    namespace: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    rust_log: String,
    log: PathBuf,
}

impl OperatorCommand {
    /// All namespaces, `RUST_LOG=info,clb_operator=debug`, the log at `log`.
    pub fn new(kubeconfig: &Path, endpoint: &url::Url, log: PathBuf) -> Self {
        Self {
            kubeconfig: kubeconfig.to_owned(),
            endpoint: endpoint.clone(),
            namespace: None,
            args: Vec::new(),
            env: Vec::new(),
            rust_log: "info,clb_operator=debug".into(),
            log,
        }
    }

    /// Watches only `ns` (`--namespace`).
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.to_owned());
        self
    }

    /// More arguments of `run`.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// More environment variables.
    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        self.env.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// The `RUST_LOG` filter.
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_owned();
        self
    }

    /// Starts it, on a free port unless the arguments give `--http-addr`. The CLB credentials come from the
    /// bindings' Secrets only: none are inherited from the environment.
    pub fn start(self) -> OperatorProcess {
        let given = self.args.iter().find_map(|a| a.strip_prefix("--http-addr="));
        let port = match given {
            Some(addr) => addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_default(),
            None => free_port(),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clb-operator"));
        cmd.args(["run", "--clb-endpoint", self.endpoint.as_str()]);
        if !self.args.iter().any(|a| a.starts_with("--clb-api")) {
            cmd.args(["--clb-api", api_of(&self.endpoint).as_str()]);
        }
        if let Some(ns) = &self.namespace {
            cmd.args(["--namespace", ns]);
        }
        if !self.args.iter().any(|a| a.starts_with("--kubeconfig")) {
            cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        }
        if given.is_none() {
            cmd.arg(format!("--http-addr=127.0.0.1:{port}"));
        }
        let child = cmd
            .args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .env_remove("TENCENTCLOUD_SECRET_ID")
            .env_remove("TENCENTCLOUD_SECRET_KEY")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).expect("operator log file"))
            .spawn()
            .expect("start the operator binary");
        OperatorProcess { child, port, log: self.log }
    }
}

/// The API an emulator endpoint speaks: `/v2/index.php` is API 2.0, `/` API 3.0 (the emulator serves both).
pub fn api_of(endpoint: &url::Url) -> clb_operator::clb::cloud::ClbApi {
    use clb_operator::clb::cloud::ClbApi;
    if endpoint.path().starts_with("/v2") { ClbApi::V2 } else { ClbApi::V3 }
}

impl OperatorProcess {
    /// Starts `clb-operator run` watching only the test's namespace, against `endpoint`, with `extra` arguments
    /// and `env` variables. Its log goes to a file named after the namespace, in the temp folder.
    pub fn start(t: &TestNs, endpoint: &url::Url, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("{}-operator-{}.log", t.ns, rand::random::<u16>()));
        OperatorCommand::new(&t.plane.kubeconfig, endpoint, log)
            .namespace(&t.ns)
            .args(extra)
            .envs(env)
            .start()
    }

    /// The port of its HTTP server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The text of `/metrics`; empty while it does not answer.
    pub async fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.base_url())).await.map(|(_, text)| text).unwrap_or_default()
    }

    /// SIGTERM, as the kubelet stops a pod, and waits for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
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

/// Starts `cmd` with stdout and stderr piped, to be read with `wait_with_output`.
pub fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the command")
}

/// GET `url`: the status code and the body, or `None` if nothing answers.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}

/// Waits until `{base_url}/readyz` answers 200; returns the body.
pub async fn wait_readyz(base_url: &str) -> String {
    let url = format!("{base_url}/readyz");
    eventually(WAIT, &format!("{url} ok"), || async { http_get(&url).await.filter(|(code, _)| *code == 200) })
        .await
        .1
}

/// The sum of the metric samples whose line starts with `prefix` (e.g. `name{labels}` or `name `), or `None`
/// when there is no such sample.
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// The samples of one labelled metric: each line `name{k="v",...} value`, as its labels and value (label values
/// holding `",` are not parsed).
pub fn samples<'a>(
    metrics: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (BTreeMap<&'a str, &'a str>, f64)> + 'a {
    metrics.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.rsplit_once("} ")?;
        let labels = (labels.split("\",").map(|kv| kv.trim_end_matches('"')))
            .filter_map(|kv| kv.split_once("=\""))
            .collect();
        Some((labels, value.parse().ok()?))
    })
}

/// [`sample`], 0 when there is none.
pub fn metric(text: &str, prefix: &str) -> f64 {
    sample(text, prefix).unwrap_or_default()
}
