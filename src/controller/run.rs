//! Wiring: the HTTP endpoints, leader election, the watches, the CLB client and kube-runtime's `Controller`.

use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{Controller, controller::Config as ControllerConfig, reflector::ObjectRef, watcher},
};
use tracing::info;

use super::{
    Config, Context, context::Caches, http, leader, polls::PollSchedule, reconcile, settle::SignalClock,
    watch,
};
use crate::{
    api::ClbBackendBinding,
    clb::{
        ClbClient, Credentials,
        cloud::{ClbApi, Clouds},
        v3_client::V3Client,
    },
    metrics::Metrics,
};

/// Runs the operator until SIGINT or SIGTERM.
pub async fn run(config: Config, client: Client) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let ready = http::Readiness::default();
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on --http-addr {}", config.http_addr))?;
    tokio::spawn(http::serve(listener, ready.clone(), metrics.clone()));

    // Held for the life of the controller (losing the lease ends the process), released when it has stopped.
    let lease = match &config.leader {
        Some(settings) => {
            ready.set_standby();
            let guard = leader::lead(client.clone(), settings).await?;
            ready.set_syncing();
            Some(guard)
        }
        None => None,
    };
    metrics.set_leader(true);

    let namespace = config.namespace.as_deref();
    let bindings: Api<ClbBackendBinding> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    bindings.list(&ListParams::default().limit(1)).await.context(
        "cannot list ClbBackendBindings; is the CRD installed? (clb-operator crd | kubectl apply -f -)",
    )?;

    let signals = Arc::new(SignalClock::default());
    let watches = watch::start(&client, namespace, &signals).await;
    let default_credentials = Credentials::from_env().ok();
    let clb = clb_client(&config, default_credentials.clone(), &metrics)?;
    let controller = Controller::new(bindings, watcher::Config::default().any_semantic());
    {
        let (nodes, pods) = (watches.nodes.clone(), watches.pods.clone());
        metrics.count_caches(Box::new(move || vec![("node", nodes.len()), ("pod", pods.len())]));
    }
    let caches = Caches {
        bindings: controller.store(),
        nodes: watches.nodes.clone(),
        pods: watches.pods.clone(),
        pod_scope: watches.pod_scope.clone(),
        secrets: watches.secrets.clone(),
        signals,
    };
    let polls = PollSchedule::new(config.poll);
    let (namespace, concurrency) = (config.namespace.clone(), config.concurrency);
    let endpoint = config.clb.endpoint.clone();
    let ctx = Arc::new(Context::new(client, caches, clb, default_credentials, config, polls, metrics));

    announce_synced(&watches, &ctx, ready);
    let (for_nodes, for_pods, for_secrets, for_services) =
        (ctx.clone(), ctx.clone(), ctx.clone(), ctx.clone());
    info!(?namespace, %endpoint, api = ctx.clb.api().as_str(), "Starting the controller");
    controller
        .watches_stream(watches.node_changes, move |node| for_nodes.index.for_node(&node))
        .watches_stream(watches.pod_changes, move |pod| for_pods.index.for_pod(&pod))
        .watches_stream(watches.secret_changes, move |secret| users_of(&for_secrets, &secret))
        .watches_stream(watches.service_changes, move |service| port_users_of(&for_services, &service))
        .reconcile_all_on(watches.gone)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "Controller event");
            }
        })
        .await;
    info!("Controller stopped");
    if let Some(lease) = lease {
        lease.release().await;
    }
    Ok(())
}

/// The one CLB client of the API spoken (its HTTP connections and rate limiters are shared by all bindings).
fn clb_client(config: &Config, own: Option<Credentials>, metrics: &Arc<Metrics>) -> anyhow::Result<Clouds> {
    if own.is_none() {
        info!("No TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY: bindings need a credentialsSecretRef");
    }
    let own = own.unwrap_or_else(|| Credentials::new("", "", None));
    Ok(match config.api {
        ClbApi::V3 => {
            let region = crate::clb::DEFAULT_REGION;
            let client =
                V3Client::new(config.clb.endpoint.clone(), own, region, config.clb.rate_limit_per_second)
                    .map_err(|e| anyhow::anyhow!("building the CLB API 3.0 client: {e}"))?;
            Clouds::V3(client.with_observer(metrics.clb_v3_observer()))
        }
        ClbApi::V2 => {
            let clb = ClbClient::new(config.clb.clone(), own).context("building the CLB client")?;
            Clouds::V2(clb.with_observer(metrics.clb_observer()))
        }
    })
}

/// Tells reconciles (and /readyz) once the node cache holds a full list.
fn announce_synced(watches: &watch::Watches, ctx: &Context, ready: http::Readiness) {
    // NB: this task is the only waiter on the node store's readiness. kube's Store::wait_until_ready wakes just
    // the most recent of several concurrent waiters (one oneshot waker), so reconciles wait on `caches_synced`,
    // a watch channel that wakes them all. The controller is the one waiter on the bindings' store and
    // reconciles only once it is listed; pods are listed per scope (`PodScope`), and the first pod-targeted
    // reconcile scopes the pod cache from all the bindings at once.
    let (nodes, synced) = (watches.nodes.clone(), ctx.caches_synced.clone());
    tokio::spawn(async move {
        if nodes.wait_until_ready().await.is_ok() {
            synced.send_replace(true);
            ready.set_ready();
            info!(nodes = nodes.len(), "Caches synced");
        }
    });
}

/// The bindings whose listeners take a port from `service`.
fn port_users_of(ctx: &Context, service: &watch::ServiceMeta) -> Vec<ObjectRef<ClbBackendBinding>> {
    let (ns, name) = (service.namespace(), service.name_any());
    (ctx.caches.bindings.state().iter())
        .filter(|b| b.namespace() == ns)
        .filter(|b| b.spec.listeners.iter().any(|l| l.service.as_ref().is_some_and(|s| s.name == name)))
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

/// The bindings whose credentials come from `secret`.
fn users_of(ctx: &Context, secret: &watch::SecretMeta) -> Vec<ObjectRef<ClbBackendBinding>> {
    let (ns, name) = (secret.namespace(), secret.name_any());
    (ctx.caches.bindings.state().iter())
        .filter(|b| b.namespace() == ns)
        .filter(|b| b.spec.credentials_secret_ref.as_ref().is_some_and(|r| r.name == name))
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}
