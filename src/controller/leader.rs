//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): only the holder reconciles, and a
//! replica that loses the lease exits at once, so two replicas never write at the same time.

use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::api::MANAGER;

/// Where the lease lives and how long it holds.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// How long a lease holds without renewal; a standby takes over this long after the leader dies.
    pub duration: Duration,
}

impl Default for LeaseSettings {
    /// Lease `clb-operator` in namespace `default`, held for 15 s.
    fn default() -> Self {
        Self { namespace: "default".into(), name: MANAGER.into(), duration: Duration::from_secs(15) }
    }
}

/// This replica's identity in the lease: the pod name when running in a cluster.
pub fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| format!("{MANAGER}-{:08x}", rand::random::<u32>()))
}

/// This replica's hold on the lease, watched in the background: losing it ends the process. Given back with
/// [`Leadership::release`] when the controller has stopped, so that a standby takes over at once instead of a
/// lease duration later (a rolling upgrade or a deleted pod then hands over within a second).
pub struct Leadership {
    stop: oneshot::Sender<()>,
    watcher: JoinHandle<()>,
}

impl Leadership {
    /// Releases the lease (clears its holder) and waits until that is written. Call only after the last write.
    pub async fn release(self) {
        let _ = self.stop.send(());
        let _ = self.watcher.await;
    }
}

/// Waits until this replica holds the lease, then watches it in the background: losing it (or the lease task
/// failing) ends the process, since a replica without the lease must not write anything.
pub async fn lead(client: Client, settings: &LeaseSettings) -> anyhow::Result<Leadership> {
    let secs = settings.duration.as_secs().max(3);
    let identity = identity();
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&identity)
        .with_duration(secs)
        // Renew a third of the duration early; this is also the clock skew between nodes that is tolerated.
        .with_grace(secs / 3)
        .with_field_manager(format!("{MANAGER}-lease"))
        .build()
        .await
        .context("setting up the leader lease")?;
    let (mut leading, task) = manager.watch().await;
    info!(lease = %settings.name, namespace = %settings.namespace, %identity, "Waiting for the leader lease");
    leading.wait_for(|l| *l).await.context("the leader lease task stopped")?;
    info!(%identity, "Acquired the leader lease");
    let (stop, stopped) = oneshot::channel();
    Ok(Leadership { stop, watcher: tokio::spawn(watch_loss(leading, task, stopped)) })
}

async fn watch_loss(
    mut leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    stopped: oneshot::Receiver<()>,
) {
    // NB: the guard `wait_for` returns must not live across the next await. `None`: asked to release.
    let lost = tokio::select! {
        lost = leading.wait_for(|l| !*l) => Some(lost.is_ok()),
        _ = stopped => None,
    };
    let Some(lost) = lost else {
        // The lease manager releases the lease once its last receiver is gone.
        drop(leading);
        match task.await {
            Ok(Ok(_)) => info!("Released the leader lease"),
            Ok(Err(e)) => warn!(error = %e, "Could not release the leader lease; it expires on its own"),
            Err(e) => warn!(error = %e, "The leader lease task ended abnormally"),
        }
        return;
    };
    let reason = match lost {
        true => "lost the leader lease".to_owned(),
        false => match task.await {
            Ok(Err(e)) => format!("the leader lease task failed: {e}"),
            _ => "the leader lease task stopped".to_owned(),
        },
    };
    error!(reason, "Exiting so that no write happens without the lease");
    std::process::exit(1);
}
