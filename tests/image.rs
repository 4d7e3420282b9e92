//! The operator's image, built without Docker by `deploy/image.sh`, imported into a real containerd and run with
//! runc: as user 65532, on a read-only root filesystem, with the binary and its libraries working. Needs root,
//! containerd and runc (`.ci/run` installs them from Debian's packages when missing).

mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A private containerd (its own root, state and socket under a temp dir), stopped when dropped.
struct Containerd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        // Only what running an imported image needs: no CRI (kubelet) plugin.
        std::fs::write(&config, "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n").unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (install containerd and runc: .ci/run does it from Debian's packages)");
        let c = Self { child, socket, _dir: dir };
        let started = Instant::now();
        while c.ctr(&["version"]).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Runs `ctr` against this containerd in namespace `clb-image-test`; its stdout, or why it failed.
    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "clb-image-test"])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(format!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr))),
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", "clb-image"]);
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.ctr(&["task", "delete", "--force", "clb-image"]);
        let _ = self.ctr(&["container", "delete", "clb-image"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.0 GET; the whole answer, if one came.
fn get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.").then_some(answer)
}

/// The image builds, is imported by containerd, and runs the operator as 65532 on a read-only root filesystem.
#[test]
fn the_image_runs_as_nonroot_on_a_read_only_root() {
    let image = common::build_image();
    let tarball = image["tarball"].as_str().unwrap().to_owned();
    println!(
        "image {}: {} bytes compressed, {} bytes uncompressed ({})",
        image["image"], image["layer_bytes"], image["uncompressed_bytes"], image["manifest"]
    );

    let containerd = Containerd::start();
    let imported = containerd.ctr(&["images", "import", &tarball]).unwrap();
    assert!(imported.contains("clb-operator:0.1.0"), "{imported}");
    let name = "docker.io/library/clb-operator:0.1.0";
    let port = common::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    // The image's entrypoint with other arguments: the emulator serves HTTP, so it shows the binary, its
    // libraries and the network all work under the image's user and a read-only root.
    containerd
        .ctr(&[
            "run",
            "-d",
            "--null-io",
            "--read-only",
            "--net-host",
            name,
            "clb-image",
            "/clb-operator",
            "emulator",
            "--listen",
            &listen,
            "--secret-id",
            "AKIDimage",
            "--secret-key",
            "image-test-key",
        ])
        .unwrap();
    let started = Instant::now();
    let state = loop {
        if let Some(body) = get(&listen, "/emulator/state") {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the container does not serve");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(state.contains("loadBalancers"), "{state}");

    let tasks = containerd.ctr(&["task", "ls"]).unwrap();
    let pid: u32 = tasks
        .lines()
        .find(|l| l.starts_with("clb-image"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no task pid in {tasks}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u == "65532"), "runs as 65532: {uid}");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).unwrap();
    let options = root.split_whitespace().nth(5).unwrap_or_default();
    assert!(options.split(',').any(|o| o == "ro"), "read-only root: {root}");
}
