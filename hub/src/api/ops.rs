//! Probes and metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::{ApiError, AppState};

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if *state.ready.borrow() {
        Ok("ready\n")
    } else {
        Err(ApiError::NotReady)
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (twins, online) = state.twins.counts();
    let mut text = state.stats.render(twins, online);
    text.push_str(&state.auth.counters().render());
    if let Some(extra) = &state.extra_metrics {
        text.push_str(&(extra.0)());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
