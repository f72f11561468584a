//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process serves) and
//! `/readyz` (the controllers' caches are synced, or this replica is a standby waiting for
//! the leader Lease, which is as ready as a standby gets).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What `/readyz` reports.
#[derive(Default)]
pub struct Health {
    state: AtomicU8,
}

// 0: starting, caches not synced yet.
const STANDBY: u8 = 1;
const READY: u8 = 2;

impl Health {
    pub fn set_standby(&self) {
        self.state.store(STANDBY, Ordering::Release);
    }

    pub fn set_ready(&self) {
        self.state.store(READY, Ordering::Release);
    }

    fn describe(&self) -> (StatusCode, &'static str) {
        match self.state.load(Ordering::Acquire) {
            READY => (StatusCode::OK, "ready\n"),
            STANDBY => (StatusCode::OK, "standby: waiting for the leader lease\n"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "starting: caches not synced\n"),
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "Serving /metrics, /healthz and /readyz");
    }
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    state.health.describe()
}
