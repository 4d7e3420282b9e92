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

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
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
