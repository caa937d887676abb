//! REST and WebSocket API under `/api/v1`, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Errors are JSON `{ "error": { "code", "message" } }` with stable codes.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use protocol::{IdError, LabId, MachineId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::stats::{HubStats, IngestDrop};
use crate::twin::{Twin, TwinKey, TwinRegistry};

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The twins.
    pub twins: Arc<TwinRegistry>,
    /// Counters.
    pub stats: Arc<HubStats>,
    /// Set once ingest is subscribed and the STATE is published.
    pub ready: watch::Receiver<bool>,
    /// More counters for `/metrics`.
    pub extra_metrics: Option<crate::MetricsSource>,
}

/// An API error with a stable code.
#[derive(Debug)]
pub enum ApiError {
    /// A path or query id is invalid.
    InvalidId(IdError),
    /// No such twin.
    TwinNotFound(String),
    /// No such route.
    RouteNotFound,
    /// The hub is starting or its broker connection is down.
    NotReady,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            ApiError::TwinNotFound(_) => (StatusCode::NOT_FOUND, "twin_not_found"),
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::InvalidId(err) => err.to_string(),
            ApiError::TwinNotFound(id) => format!("no twin {id}"),
            ApiError::RouteNotFound => "no such endpoint; see /api/v1/twins".into(),
            ApiError::NotReady => "the hub is not connected to its broker yet".into(),
        }
    }
}

impl From<IdError> for ApiError {
    fn from(err: IdError) -> Self {
        ApiError::InvalidId(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        (
            status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code,
                    message: self.message(),
                },
            }),
        )
            .into_response()
    }
}

/// The hub's HTTP routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/v1/labs", get(list_labs))
        .route("/api/v1/twins", get(list_twins))
        .route("/api/v1/twins/{lab}/{machine}", get(get_twin))
        .route("/api/v1/stream", get(stream))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::RouteNotFound })
        .with_state(state)
}

/// Query of the twin list and the stream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only this lab.
    pub lab: Option<String>,
    /// Only this machine.
    pub machine: Option<String>,
}

struct ParsedFilter {
    lab: Option<LabId>,
    machine: Option<MachineId>,
}

impl Filter {
    fn parse(&self) -> Result<ParsedFilter, ApiError> {
        Ok(ParsedFilter {
            lab: self.lab.as_deref().map(str::parse).transpose()?,
            machine: self.machine.as_deref().map(str::parse).transpose()?,
        })
    }
}

impl ParsedFilter {
    fn matches(&self, lab: &str, machine: &str) -> bool {
        self.lab.as_ref().is_none_or(|l| l.as_str() == lab)
            && self.machine.as_ref().is_none_or(|m| m.as_str() == machine)
    }
}

async fn list_labs(State(state): State<AppState>) -> Json<Vec<String>> {
    let labs: BTreeSet<String> = state.twins.list(None).into_iter().map(|t| t.lab).collect();
    Json(labs.into_iter().collect())
}

async fn list_twins(
    State(state): State<AppState>,
    Query(filter): Query<Filter>,
) -> Result<Json<Vec<Twin>>, ApiError> {
    let filter = filter.parse()?;
    let twins = state.twins.list(filter.lab.as_ref());
    Ok(Json(
        twins
            .into_iter()
            .filter(|t| filter.matches(&t.lab, &t.machine))
            .collect(),
    ))
}

async fn get_twin(
    State(state): State<AppState>,
    Path((lab, machine)): Path<(String, String)>,
) -> Result<Json<Twin>, ApiError> {
    let key = TwinKey {
        lab: lab.parse()?,
        machine: machine.parse()?,
    };
    state
        .twins
        .get(&key)
        .map(Json)
        .ok_or_else(|| ApiError::TwinNotFound(key.to_string()))
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if *state.ready.borrow() {
        Ok("ready\n")
    } else {
        Err(ApiError::NotReady)
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let twins = state.twins.list(None);
    let online = twins.iter().filter(|t| t.connectivity.online).count();
    let mut text = state.stats.render(twins.len(), online);
    if let Some(extra) = &state.extra_metrics {
        text.push_str(&(extra.0)());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn stream(
    State(state): State<AppState>,
    Query(filter): Query<Filter>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let filter = filter.parse()?;
    Ok(upgrade.on_upgrade(move |socket| forward_changes(socket, state, filter)))
}

/// Sends every matching twin change as one JSON text message, in order. A client that falls
/// more than the change buffer behind gets `{"kind":"lagged","missed":N}` and continues.
async fn forward_changes(mut socket: WebSocket, state: AppState, filter: ParsedFilter) {
    let mut changes = state.twins.subscribe();
    state.stats.stream_client(1);
    loop {
        let text = tokio::select! {
            change = changes.recv() => match change {
                Ok(change) if filter.matches(&change.lab, &change.machine) => {
                    serde_json::to_string(&*change).unwrap_or_default()
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    for _ in 0..missed {
                        state.stats.ingest_dropped(IngestDrop::StreamLagged);
                    }
                    format!("{{\"kind\":\"lagged\",\"missed\":{missed}}}")
                }
                Err(RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                // Clients only listen; anything but a close is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            },
        };
        if socket.send(Message::Text(text.into())).await.is_err() {
            break;
        }
    }
    state.stats.stream_client(-1);
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::twin::TwinUpdate;

    fn state() -> AppState {
        let stats = Arc::new(HubStats::default());
        let twins = Arc::new(TwinRegistry::new(stats.clone()));
        twins.apply(TwinUpdate::Birth {
            key: TwinKey {
                lab: "lab-a".parse().expect("valid"),
                machine: "mill-1".parse().expect("valid"),
            },
            boot: Some(1),
            gateway: "gw-a".parse().expect("valid"),
            metrics: vec![],
            timestamp: 1,
        });
        AppState {
            twins,
            stats,
            ready: watch::channel(false).1,
            extra_metrics: None,
        }
    }

    async fn get(uri: &str) -> (StatusCode, serde_json::Value) {
        let response = router(state())
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn a_twin_is_found_by_lab_and_machine() {
        let (status, body) = get("/api/v1/twins/lab-a/mill-1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["id"], "lab-a/mill-1");
        let (status, body) = get("/api/v1/twins?lab=lab-a").await;
        assert_eq!(
            (status, body.as_array().map(Vec::len)),
            (StatusCode::OK, Some(1))
        );
    }

    #[tokio::test]
    async fn bad_ids_and_missing_twins_are_json_errors_with_stable_codes() {
        let (status, body) = get("/api/v1/twins/Lab-A/mill-1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_id");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Lab-A"))
        );
        let (status, body) = get("/api/v1/twins/lab-a/ghost").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::NOT_FOUND, &"twin_not_found".into())
        );
        let (status, body) = get("/api/v1/nothing").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::NOT_FOUND, &"not_found".into())
        );
        let (status, body) = get("/readyz").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::SERVICE_UNAVAILABLE, &"not_ready".into())
        );
    }
}
