//! The operator's HTTP endpoints: `/healthz` (the process answers) and `/readyz` (the caches have synced).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tracing::{error, info};

/// Whether the operator is ready to serve: set once the node and pod caches have synced.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the operator ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The router, separate from [`serve`] so that tests can drive it without a socket.
pub fn router(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

async fn readyz(State(ready): State<Readiness>) -> (StatusCode, &'static str) {
    if ready.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

/// Serves the endpoints on `addr` until the process ends; a bind failure is logged (the operator keeps working,
/// but its probes will fail and say why).
pub async fn serve(addr: std::net::SocketAddr, ready: Readiness) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(%addr, error = %e, "Cannot bind the HTTP address");
            return;
        }
    };
    info!(addr = %listener.local_addr().unwrap_or(addr), "Serving /healthz and /readyz");
    if let Err(e) = axum::serve(listener, router(ready)).await {
        error!(error = %e, "HTTP server stopped");
    }
}
