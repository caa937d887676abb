//! The lab's local status view: `GET /api/v1/machines` (the last value of every metric of every
//! machine, the link to the region and the backlog) and `GET /` (a page that polls it).
//!
//! Errors are JSON `{ "error": { "code", "message" } }`, as the hub's API answers them.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::{GatewayId, LabId, MachineId, MetricName};
use serde::{Deserialize, Serialize};

use super::OpsState;
use crate::stats::StatsSnapshot;
use crate::status::{LastValue, Link, LinkState, LocalStatus};

/// The status page: one file, no external assets, so it works in a lab cut off from everything.
const PAGE: &str = include_str!("page.html");

/// What the page may do: run its own inline script and style, and fetch from this origin only.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ApiError {
    /// The query string is malformed or names an unknown parameter.
    BadQuery(String),
    /// `machine=` is not a valid machine id.
    BadMachine(String),
    /// No values of that machine are known.
    UnknownMachine(MachineId),
    /// No such path.
    NotFound,
    /// The path exists but takes only GET.
    MethodNotAllowed,
}

impl ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadQuery(_) | ApiError::BadMachine(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownMachine(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadQuery(_) => "bad_query",
            ApiError::BadMachine(_) => "bad_machine",
            ApiError::UnknownMachine(_) => "unknown_machine",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadQuery(why) => format!("bad query string: {why}"),
            ApiError::BadMachine(why) => format!("bad machine id: {why}"),
            ApiError::UnknownMachine(machine) => {
                format!("no values of machine {machine} since this gateway started")
            }
            ApiError::NotFound => "no such resource; try / or /api/v1/machines".to_owned(),
            ApiError::MethodNotAllowed => "this endpoint is read-only: use GET".to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.message() }
        });
        (self.status_code(), axum::Json(body)).into_response()
    }
}

/// The query of `/api/v1/machines`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MachinesQuery {
    /// Only this machine.
    machine: Option<String>,
}

/// `GET /api/v1/machines`.
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct MachinesView {
    lab: LabId,
    gateway: GatewayId,
    /// The gateway's clock when it answered, ms since the epoch (ages are against it).
    now_ms: u64,
    uplink: UplinkView,
    /// Samples in the disk buffer the region's broker has not acknowledged yet.
    buffered: u64,
    /// Samples held in memory while the disk buffer fails.
    held_in_memory: u64,
    /// Values not shown because the view's caps were reached.
    values_not_kept: u64,
    machines: Vec<MachineView>,
}

#[derive(Debug, Serialize, PartialEq)]
struct UplinkView {
    state: LinkState,
    /// True when samples go to the region live; otherwise they are buffered and sent flagged
    /// historical when the link returns.
    connected: bool,
    since_ms: u64,
}

#[derive(Debug, Serialize, PartialEq)]
struct MachineView {
    machine: MachineId,
    /// Of the newest sample.
    timestamp_ms: u64,
    age_ms: u64,
    metrics: Vec<MetricView>,
}

#[derive(Debug, Serialize, PartialEq)]
struct MetricView {
    metric: MetricName,
    value: f32,
    unit: &'static str,
    timestamp_ms: u64,
    age_ms: u64,
    received_ms: u64,
    boot: Option<u32>,
    seq: u32,
}

/// The view of the whole gateway, or of one machine, at `now_ms`.
pub(super) fn view(
    state: &OpsState,
    stats: &StatsSnapshot,
    machine: Option<&MachineId>,
    now_ms: u64,
) -> Result<MachinesView, ApiError> {
    let machines = collect(&state.status, machine, now_ms)?;
    let link: Link = state.status.link();
    Ok(MachinesView {
        lab: state.lab.clone(),
        gateway: state.gateway.clone(),
        now_ms,
        uplink: UplinkView {
            state: link.state,
            connected: link.state == LinkState::Connected,
            since_ms: link.since_ms,
        },
        buffered: stats.buffer_depth,
        held_in_memory: stats.storage_held,
        values_not_kept: state.status.with_values(|v| v.not_kept()),
        machines,
    })
}

/// Copies the values out under the lock; serialising happens after it is released.
fn collect(
    status: &LocalStatus,
    only: Option<&MachineId>,
    now_ms: u64,
) -> Result<Vec<MachineView>, ApiError> {
    status.with_values(|values| match only {
        Some(machine) => values
            .machine(machine)
            .map(|metrics| vec![machine_view(machine, metrics.iter(), now_ms)])
            .ok_or_else(|| ApiError::UnknownMachine(machine.clone())),
        None => Ok(values
            .machines()
            .map(|(machine, metrics)| machine_view(machine, metrics.iter(), now_ms))
            .collect()),
    })
}

fn machine_view<'a>(
    machine: &MachineId,
    metrics: impl Iterator<Item = (&'a MetricName, &'a LastValue)>,
    now_ms: u64,
) -> MachineView {
    let metrics: Vec<MetricView> = metrics
        .map(|(metric, last)| MetricView {
            metric: metric.clone(),
            value: last.value,
            unit: last.unit.symbol(),
            timestamp_ms: last.timestamp_ms,
            // A sample dated after `now` (a clock step) is shown as fresh, not as negative age.
            age_ms: now_ms.saturating_sub(last.timestamp_ms),
            received_ms: last.received_ms,
            boot: last.boot,
            seq: last.seq,
        })
        .collect();
    let timestamp_ms = metrics.iter().map(|m| m.timestamp_ms).max().unwrap_or(0);
    MachineView {
        machine: machine.clone(),
        timestamp_ms,
        age_ms: now_ms.saturating_sub(timestamp_ms),
        metrics,
    }
}

/// `GET /api/v1/machines[?machine=ID]`.
pub(super) async fn machines(
    State(state): State<OpsState>,
    query: Result<Query<MachinesQuery>, QueryRejection>,
) -> Response {
    let answer = parse_machine(query).and_then(|machine| {
        view(
            &state,
            &state.stats.snapshot(),
            machine.as_ref(),
            crate::now_ms(),
        )
    });
    match answer {
        // A status must never be served from a cache: it would show a stale link state.
        Ok(view) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(view)).into_response(),
        Err(err) => err.into_response(),
    }
}

fn parse_machine(
    query: Result<Query<MachinesQuery>, QueryRejection>,
) -> Result<Option<MachineId>, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::BadQuery(err.body_text()))?;
    query
        .machine
        .map(|machine| {
            MachineId::new(&machine).map_err(|err| ApiError::BadMachine(err.to_string()))
        })
        .transpose()
}

/// `GET /`.
pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use protocol::Unit;
    use tower::ServiceExt;

    use super::*;
    use crate::record::BufferedSample;
    use crate::stats::GatewayStats;

    fn status_with_one_sample() -> Arc<LocalStatus> {
        let status = Arc::new(LocalStatus::new(1_000));
        let sample = BufferedSample {
            machine: "mill-1".parse().expect("valid"),
            boot: Some(7),
            node_seq: 42,
            received_at_ms: 10_000,
            historical: false,
            values: vec![
                (
                    "spindle.power_w".parse().expect("valid"),
                    Unit::Watt,
                    5321.5,
                ),
                (
                    "coolant.temperature_c".parse().expect("valid"),
                    Unit::Celsius,
                    24.5,
                ),
            ],
        };
        status.record(&sample, 10_005);
        status
    }

    fn state(status: Arc<LocalStatus>) -> OpsState {
        OpsState {
            lab: "lab-a".parse().expect("valid"),
            gateway: "gw-a".parse().expect("valid"),
            stats: Arc::new(GatewayStats::default()),
            status,
            http: Arc::default(),
        }
    }

    #[test]
    fn the_view_renders_link_backlog_and_every_metric_with_its_age() {
        let state = state(status_with_one_sample());
        let stats = StatsSnapshot {
            buffer_depth: 17,
            ..StatsSnapshot::default()
        };
        let rendered = view(&state, &stats, None, 12_000).expect("view");
        let json = serde_json::to_value(&rendered).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "lab": "lab-a",
                "gateway": "gw-a",
                "now_ms": 12_000,
                "uplink": { "state": "disconnected", "connected": false, "since_ms": 1_000 },
                "buffered": 17,
                "held_in_memory": 0,
                "values_not_kept": 0,
                "machines": [{
                    "machine": "mill-1",
                    "timestamp_ms": 10_000,
                    "age_ms": 2_000,
                    "metrics": [
                        { "metric": "coolant.temperature_c", "value": 24.5, "unit": "degC",
                          "timestamp_ms": 10_000, "age_ms": 2_000, "received_ms": 10_005,
                          "boot": 7, "seq": 42 },
                        { "metric": "spindle.power_w", "value": 5321.5, "unit": "W",
                          "timestamp_ms": 10_000, "age_ms": 2_000, "received_ms": 10_005,
                          "boot": 7, "seq": 42 },
                    ]
                }]
            })
        );
        state.status.set_link(LinkState::Connected, 11_000);
        let rendered = view(&state, &stats, None, 12_000).expect("view");
        assert_eq!(
            rendered.uplink,
            UplinkView {
                state: LinkState::Connected,
                connected: true,
                since_ms: 11_000
            }
        );
    }

    async fn get(
        uri: &str,
        method: &str,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let app = super::super::router(
            "lab-a".parse().expect("valid"),
            "gw-a".parse().expect("valid"),
            Arc::new(GatewayStats::default()),
            status_with_one_sample(),
            Arc::default(),
        );
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    #[tokio::test]
    async fn one_machine_can_be_asked_for_and_bad_requests_get_json_errors() {
        let (status, headers, json) = get("/api/v1/machines?machine=mill-1", "GET").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(json["machines"][0]["machine"], "mill-1");
        let (_, headers, _) = get("/api/v1/machines", "PUT").await;
        assert_eq!(
            headers[header::ALLOW],
            "GET,HEAD",
            "405 names what is allowed"
        );

        for (uri, method, expected, code) in [
            (
                "/api/v1/machines?machine=mill-2",
                "GET",
                404,
                "unknown_machine",
            ),
            (
                "/api/v1/machines?machine=Mill%201",
                "GET",
                400,
                "bad_machine",
            ),
            ("/api/v1/machines?lab=lab-a", "GET", 400, "bad_query"),
            (
                "/api/v1/machines?machine=a&machine=b",
                "GET",
                400,
                "bad_query",
            ),
            ("/api/v1/machine", "GET", 404, "not_found"),
            ("/api/v1/machines", "POST", 405, "method_not_allowed"),
            ("/", "DELETE", 405, "method_not_allowed"),
        ] {
            let (status, _, json) = get(uri, method).await;
            assert_eq!(status.as_u16(), expected, "{method} {uri}: {json}");
            assert_eq!(json["error"]["code"], code, "{method} {uri}: {json}");
            assert!(
                json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{json}"
            );
        }
    }

    #[tokio::test]
    async fn the_page_is_self_contained_html_under_a_strict_policy() {
        let app = super::super::router(
            "lab-a".parse().expect("valid"),
            "gw-a".parse().expect("valid"),
            Arc::new(GatewayStats::default()),
            Arc::new(LocalStatus::new(0)),
            Arc::default(),
        );
        let request = Request::builder()
            .uri("/")
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|p| p.contains("default-src 'none'") && p.contains("connect-src 'self'"))
        );
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let html = String::from_utf8_lossy(&bytes);
        assert!(html.contains("api/v1/machines"), "the page polls the API");
        assert!(html.contains("cut off from the region since"));
        for external in ["http://", "https://", "src=\"", "href=\""] {
            assert!(!html.contains(external), "external asset: {external}");
        }
    }
}
