//! `tests/testenv/testenv.sh` itself: `up` gives a ready API server, a second `up` is harmless, `down` leaves no
//! process behind, and `up` after `down` works. Uses a control plane of its own, beside the shared one.

mod common;

use std::{path::Path, process::Command};

fn testenv(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(common::repo().join("tests/testenv/testenv.sh"))
        .args(args)
        .env("TESTENV_DIR", dir)
        .output()
        .expect("run testenv.sh");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn readyz(dir: &Path) -> String {
    let out = Command::new(common::kubectl_bin())
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .args(["get", "--raw", "/readyz"])
        .output()
        .expect("run kubectl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pids(dir: &Path) -> Vec<String> {
    ["etcd", "apiserver"]
        .iter()
        .filter_map(|c| std::fs::read_to_string(dir.join(format!("{c}.pid"))).ok())
        .map(|p| p.trim().to_owned())
        .collect()
}

/// Whether `pid` runs: exists and is not a zombie (a stopped process its parent has not reaped yet).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|rest| rest.split_whitespace().next() != Some("Z")))
        .unwrap_or(false)
}

#[test]
fn up_down_up_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = testenv(dir.path(), &["up"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("export KUBECONFIG={}", dir.path().join("kubeconfig").display())), "{out}");
    assert_eq!(readyz(dir.path()), "ok");
    let started = pids(dir.path());
    assert_eq!(started.len(), 2);

    let (ok, out) = testenv(dir.path(), &["up"]);
    assert!(ok, "a second up is harmless: {out}");
    assert_eq!(pids(dir.path()), started, "the second up reused the running control plane");

    let (ok, out) = testenv(dir.path(), &["down"]);
    assert!(ok, "{out}");
    assert!(started.iter().all(|p| !alive(p)), "down stopped every process it started");

    let (ok, out) = testenv(dir.path(), &["up"]);
    assert!(ok, "up after down: {out}");
    assert_eq!(readyz(dir.path()), "ok");
    let again = pids(dir.path());
    let (ok, out) = testenv(dir.path(), &["down"]);
    assert!(ok, "{out}");
    assert!(again.iter().all(|p| !alive(p)));
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new("bash")
        .arg(common::repo().join("tests/testenv/testenv.sh"))
        .arg("up")
        .env("TESTENV_DIR", dir.path())
        .env("TESTENV_API_PORT", &port)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("port {port} for kube-apiserver is taken")), "{err}");
    testenv(dir.path(), &["down"]);
}

/// The API server alone stops and starts again, on the same port and with the same kubeconfig, while etcd and
/// its data stay: what the soak test's API-server restart needs.
#[test]
fn the_api_server_restarts_alone_on_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = testenv(dir.path(), &["up"]);
    assert!(ok, "{out}");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap().trim().to_owned();
    let (port, etcd, api) = (read("api.port"), read("etcd.pid"), read("apiserver.pid"));
    let kubectl = |args: &[&str]| {
        Command::new(common::kubectl_bin())
            .arg("--kubeconfig")
            .arg(dir.path().join("kubeconfig"))
            .args(args)
            .output()
            .expect("run kubectl")
    };
    assert!(kubectl(&["create", "namespace", "kept"]).status.success());

    let (ok, out) = testenv(dir.path(), &["stop-apiserver"]);
    assert!(ok, "{out}");
    assert!(!alive(&api), "the API server is gone, not left as a zombie");
    assert!(alive(&etcd), "etcd keeps running");
    assert_ne!(readyz(dir.path()), "ok");
    let (_, status) = testenv(dir.path(), &["status"]);
    assert!(status.contains("apiserver: stopped"), "{status}");

    let (ok, out) = testenv(dir.path(), &["start-apiserver"]);
    assert!(ok, "{out}");
    assert_eq!(read("api.port"), port, "the same port");
    assert_eq!(readyz(dir.path()), "ok");
    assert!(kubectl(&["get", "namespace", "kept"]).status.success(), "the data survived");
    let (ok, out) = testenv(dir.path(), &["down"]);
    assert!(ok, "{out}");
}
