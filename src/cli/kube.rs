//! The Kubernetes client of the commands that need one.

use anyhow::Context as _;
use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

/// A client from `--kubeconfig`, else `KUBECONFIG`, else the in-cluster service account; its requests are
/// counted and timed in `clb_operator_kube_requests` and `clb_operator_kube_request_duration_seconds`.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await.context("no kubeconfig and not in a cluster")?,
    };
    let builder = kube::client::ClientBuilder::try_from(config).context("building the Kubernetes client")?;
    Ok(builder.with_layer(&crate::kube_requests::CountRequests).build())
}
