//! The operator's HTTP endpoints: `/healthz` (the process answers), `/readyz` (the caches have synced, or this
//! replica is a standby) and `/metrics` (OpenMetrics text).

use std::sync::{
    Arc,
    atomic::{AtomicU8, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use tracing::{error, info};

use crate::metrics::Metrics;

const SYNCING: u8 = 0;
const READY: u8 = 1;
const STANDBY: u8 = 2;

/// Whether the operator is ready: a leader once its node and pod caches have synced, a standby replica always
/// (it has nothing to sync, and must not hold up a rollout).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// Marks the caches synced.
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::Release);
    }

    /// Marks this replica a standby waiting for the leader lease.
    pub fn set_standby(&self) {
        self.0.store(STANDBY, Ordering::Release);
    }

    /// Marks the caches as syncing (a new leader starting its watches).
    pub fn set_syncing(&self) {
        self.0.store(SYNCING, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire) != SYNCING
    }
}

#[derive(Clone)]
struct AppState {
    ready: Readiness,
    metrics: Arc<Metrics>,
}

/// The router, separate from [`serve`] so that tests can drive it without a socket.
pub fn router(ready: Readiness, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { ready, metrics })
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    match s.ready.0.load(Ordering::Acquire) {
        READY => (StatusCode::OK, "ok"),
        STANDBY => (StatusCode::OK, "standby"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "caches not synced"),
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.encode(),
    )
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, ready: Readiness, metrics: Arc<Metrics>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Serving /healthz, /readyz and /metrics");
    }
    if let Err(e) = axum::serve(listener, router(ready, metrics)).await {
        error!(error = %e, "HTTP server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/readyz` fails while the caches sync, and passes once synced or while standing by.
    #[test]
    fn readiness_follows_the_sync_state() {
        let r = Readiness::default();
        assert!(!r.is_ready(), "a fresh operator has not synced");
        r.set_standby();
        assert!(r.is_ready());
        r.set_syncing();
        assert!(!r.is_ready());
        r.set_ready();
        assert!(r.is_ready());
    }
}
