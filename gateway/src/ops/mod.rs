//! The operations endpoint of a standalone gateway: `/metrics` (Prometheus), `/healthz` (the
//! process answers) and `/readyz` (503 naming the disk error while the disk buffer fails, so an
//! orchestrator or operator sees that the gateway holds its sources back), and the lab's local
//! status view: `/` (a status page) and `/api/v1/machines` (its JSON).
//!
//! Everything here is read-only and shows machine values and counters, never configuration or
//! credentials: bound to the lab network, it is the lab staff's view of their machines while the
//! region is unreachable.

mod local;

use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use http_guard::{HttpCounters, HttpLimits};
use protocol::{GatewayId, LabId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::stats::{GatewayStats, render_prometheus};
use crate::status::LocalStatus;

#[derive(Debug, Clone)]
struct OpsState {
    lab: LabId,
    gateway: GatewayId,
    stats: Arc<GatewayStats>,
    status: Arc<LocalStatus>,
    http: Arc<HttpCounters>,
}

/// The endpoint's transport limits. Bound to the lab network, it is reachable by every laptop
/// there: these keep a slow or flooding client from taking the gateway's file handles, which its
/// disk buffer and MQTT sessions need. A handful of staff and a Prometheus scraper need far less.
pub const OPS_LIMITS: HttpLimits = HttpLimits {
    max_connections: 64,
    max_connections_per_client: 8,
    header_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(30),
    // The endpoint speaks plain HTTP; the accept loop needs a value all the same.
    tls_handshake_timeout: Duration::from_secs(5),
};

/// Serves the operations endpoint on `listener` under [`OPS_LIMITS`] until `cancel` fires; what
/// the limits refuse or close is counted on its own `/metrics` (`demolab_gateway_http_*`).
pub async fn serve(
    listener: TcpListener,
    lab: LabId,
    gateway: GatewayId,
    stats: Arc<GatewayStats>,
    status: Arc<LocalStatus>,
    cancel: CancellationToken,
) {
    let http = Arc::new(HttpCounters::default());
    let app = router(lab, gateway, stats, status, http.clone());
    http_guard::serve(listener, app, None, OPS_LIMITS, http, cancel).await;
}

/// The routes of the operations endpoint, reading the gateway's counters and its local view
/// (both from [`GatewayHandle`](crate::GatewayHandle)).
pub fn router(
    lab: LabId,
    gateway: GatewayId,
    stats: Arc<GatewayStats>,
    status: Arc<LocalStatus>,
    http: Arc<HttpCounters>,
) -> Router {
    Router::new()
        .route("/", get(local::page))
        .route("/api/v1/machines", get(local::machines))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(
                |axum::extract::State(state): axum::extract::State<OpsState>| async move {
                    readiness(&state.stats)
                },
            ),
        )
        .route(
            "/metrics",
            get(
                |axum::extract::State(state): axum::extract::State<OpsState>| async move {
                    let mut text =
                        render_prometheus(&[(&state.lab, &state.gateway, state.stats.snapshot())]);
                    text.push_str(&state.http.render_prometheus("demolab_gateway_http"));
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                },
            ),
        )
        // After the routes: the 405 answer applies only to routes added before it.
        .method_not_allowed_fallback(local::method_not_allowed)
        .fallback(local::not_found)
        .with_state(OpsState {
            lab,
            gateway,
            stats,
            status,
            http,
        })
}

/// Ready unless the disk buffer is failing; the body says why.
fn readiness(stats: &GatewayStats) -> (StatusCode, String) {
    match stats.snapshot().storage_error {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: disk buffer failing, sources paused: {error}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_the_disk_error_while_storage_fails_and_recovers_with_it() {
        let stats = GatewayStats::default();
        assert_eq!(readiness(&stats), (StatusCode::OK, "ready\n".to_owned()));
        stats.set_storage_error(Some("No space left on device (os error 28)".into()));
        let (status, body) = readiness(&stats);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("No space left on device"), "{body}");
        stats.set_storage_error(None);
        assert_eq!(readiness(&stats).0, StatusCode::OK);
    }
}
