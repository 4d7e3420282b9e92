//! `clb-operator wait-drained NODE`: blocks a drain script or lifecycle hook until no binding owns the node's CVM.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use k8s_openapi::api::core::v1::Node;
use kube::{Api, ResourceExt, api::ListParams};

use crate::api::{ClbBackendBinding, DEREGISTERED_AT_ANNOTATION};

/// Options of `wait-drained`.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitDrainedArgs {
    /// The node whose CVM must be off every load balancer.
    pub node: String,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Kubeconfig file; without it, KUBECONFIG, then the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// Bindings that still own an instance on `node`, as `namespace/name (instance: state)`.
fn owners(bindings: &[ClbBackendBinding], node: &str) -> Vec<String> {
    bindings
        .iter()
        .flat_map(|b| {
            let name = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
            b.status
                .iter()
                .flat_map(|s| s.backends.iter())
                .filter(|x| x.node.as_deref() == Some(node))
                .map(move |x| format!("{name} ({}: {:?})", x.instance_id, x.state))
        })
        .collect()
}

/// Polls every 250 ms until no binding lists a backend on the node (exit 0, at once if none ever did), or the
/// timeout passes (exit 1, naming what still owns it).
pub async fn run(args: WaitDrainedArgs) -> ExitCode {
    let client = match super::kube::client(args.kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let bindings: Api<ClbBackendBinding> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let owned = match bindings.list(&ListParams::default()).await {
            Ok(list) => owners(&list.items, &args.node),
            Err(e) => {
                eprintln!("error: listing ClbBackendBindings: {e}");
                return ExitCode::FAILURE;
            }
        };
        if owned.is_empty() {
            let mark = nodes
                .get_opt(&args.node)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.annotations().get(DEREGISTERED_AT_ANNOTATION).cloned());
            match mark {
                Some(at) => println!("{}: deregistered from every load balancer at {at}", args.node),
                None => println!("{}: no binding owns its CVM", args.node),
            }
            return ExitCode::SUCCESS;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "{}: still on a load balancer after {:?}: {}",
                args.node,
                args.timeout,
                owned.join(", ")
            );
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackendState, ClbBackendBindingStatus};

    /// Only backends on the asked node count, with their binding and state.
    #[test]
    fn owners_lists_backends_on_the_node() {
        let mut b: ClbBackendBinding = serde_json::from_value(serde_json::json!({
            "apiVersion": "clb.tke.dev/v1alpha1", "kind": "ClbBackendBinding",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"loadBalancerId": "lb-a1", "region": "gz", "targets": {"nodeSelector": {}}},
        }))
        .unwrap();
        use crate::controller::fixtures::backend;
        b.status = Some(ClbBackendBindingStatus {
            backends: vec![
                backend("ins-a", "node-a", BackendState::Deregistering),
                backend("ins-b", "node-b", BackendState::Registered),
            ],
            ..Default::default()
        });
        assert_eq!(owners(std::slice::from_ref(&b), "node-a"), ["shop/web (ins-a: Deregistering)"]);
        assert!(owners(&[b], "node-c").is_empty());
    }
}
