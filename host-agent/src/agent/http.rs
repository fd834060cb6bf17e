//! Status (`/status`, JSON) and metrics (`/metrics`, Prometheus text) over
//! HTTP. Drift is checked when either is asked for, so an idle node with nobody
//! looking does no work at all.

use super::drift_check::DriftChecker;
use super::metrics::Metrics;
use super::status::AgentStatus;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::{Arc, Mutex};

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    /// The agent's status.
    pub status: Arc<Mutex<AgentStatus>>,
    /// Its metrics.
    pub metrics: Metrics,
    /// Drift detection.
    pub drift: Arc<DriftChecker>,
}

async fn refresh_drift(state: &AppState) {
    let drift = Arc::clone(&state.drift);
    let views = tokio::task::spawn_blocking(move || drift.scan_and_log())
        .await
        .unwrap_or_default();
    if let Ok(mut s) = state.status.lock() {
        s.drift = views;
    }
}

async fn status(State(state): State<AppState>) -> Response {
    refresh_drift(&state).await;
    let body = match state.status.lock() {
        Ok(s) => serde_json::to_string_pretty(&*s),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    match body {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    refresh_drift(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let ready = state.status.lock().map(|s| s.ready).unwrap_or(false);
    if ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Serves until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) {
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("status server stopped: {e}");
    }
}
