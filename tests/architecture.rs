//! The module boundaries, checked: the cloud client (`src/clb`) and the emulator know nothing of Kubernetes or of
//! the command line, and the controller never reaches into the emulator. A split into crates stays mechanical.

use std::path::Path;

fn sources(dir: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "rs") {
            out.push((path.display().to_string(), std::fs::read_to_string(&path).unwrap()));
        }
    }
    assert!(!out.is_empty(), "no sources in {dir}");
    out
}

fn offenders(dirs: &[&str], words: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for dir in dirs {
        for (path, text) in sources(dir) {
            for word in words.iter().filter(|w| text.contains(**w)) {
                found.push(format!("{path} names {word}"));
            }
        }
    }
    found
}

/// No Kubernetes types and no clap in the CLB client or the emulator.
#[test]
fn the_cloud_side_knows_no_kubernetes_and_no_command_line() {
    let found = offenders(&["src/clb", "src/emulator"], &["kube::", "k8s_openapi", "clap"]);
    assert!(found.is_empty(), "{found:#?}");
}

/// The controller talks to the CLB through `clb`, never through the emulator, and parses no command line.
#[test]
fn the_controller_does_not_reach_into_the_emulator() {
    let found = offenders(&["src/controller"], &["emulator", "clap"]);
    assert!(found.is_empty(), "{found:#?}");
}
