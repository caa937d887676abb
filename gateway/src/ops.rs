//! The operations endpoint of a standalone gateway: `/metrics` (Prometheus) and `/healthz`.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use protocol::{GatewayId, LabId};

use crate::stats::{GatewayStats, render_prometheus};

#[derive(Debug, Clone)]
struct OpsState {
    lab: LabId,
    gateway: GatewayId,
    stats: Arc<GatewayStats>,
}

/// The routes of the operations endpoint.
pub fn router(lab: LabId, gateway: GatewayId, stats: Arc<GatewayStats>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(
                |axum::extract::State(state): axum::extract::State<OpsState>| async move {
                    let text =
                        render_prometheus(&[(&state.lab, &state.gateway, state.stats.snapshot())]);
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                },
            ),
        )
        .with_state(OpsState {
            lab,
            gateway,
            stats,
        })
}
