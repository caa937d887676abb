//! Live twin changes over WebSocket and Server-Sent Events, filtered by lab, machine and metric.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, Stream};
use protocol::{LabId, MachineId, MetricName};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite;
use tracing::warn;

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::{
    AccessEvent, Lifetime, LogThrottle, Principal, Role, SessionEnd, origin_allowed,
};
use crate::ingest::now_ms;
use crate::stats::IngestDrop;
use crate::twin::{SharedChange, TwinChange, View, redacted};

/// Which changes a stream carries.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamFilter {
    /// Only this lab.
    pub lab: Option<String>,
    /// Only this machine.
    pub machine: Option<String>,
    /// Only changes carrying this metric (its value alone is sent).
    pub metric: Option<String>,
    /// Bearer token, for browsers that cannot set headers on a WebSocket or EventSource.
    #[expect(
        dead_code,
        reason = "declared so the query is accepted; `Caller` reads the token"
    )]
    pub token: Option<String>,
}

struct Filter {
    lab: Option<LabId>,
    machine: Option<MachineId>,
    metric: Option<MetricName>,
    principal: Principal,
    /// The token's lifetime; `None` for anonymous readers, whose access does not expire.
    lifetime: Option<Lifetime>,
}

impl Filter {
    fn new(query: StreamFilter, caller: Caller) -> Result<Self, ApiError> {
        if let Some(lab) = &query.lab {
            caller.require_lab(&lab.parse()?)?;
        }
        Ok(Self {
            lab: query.lab.as_deref().map(str::parse).transpose()?,
            machine: query.machine.as_deref().map(str::parse).transpose()?,
            metric: query.metric.as_deref().map(str::parse).transpose()?,
            principal: caller.0,
            lifetime: caller.1,
        })
    }

    /// Resolves when the caller's token ends; never for anonymous readers.
    async fn ended(&self) -> SessionEnd {
        match &self.lifetime {
            Some(lifetime) => lifetime.ended().await,
            None => std::future::pending().await,
        }
    }

    /// The change as this client should see it, as JSON, if at all.
    fn text(&self, change: &SharedChange) -> Option<Bytes> {
        if self.lab.as_ref().is_some_and(|l| l.as_str() != change.lab)
            || self
                .machine
                .as_ref()
                .is_some_and(|m| m.as_str() != change.machine)
            || !change
                .lab
                .parse()
                .is_ok_and(|lab: LabId| self.principal.can_read(&lab))
        {
            return None;
        }
        let view = if self.principal.has(Role::Operator) {
            View::Whole
        } else {
            View::Reader
        };
        match &self.metric {
            // The common case: the same text as every other client with this view.
            None => Some(change.json(view)),
            Some(metric) => {
                let value = *change.values.get(metric.as_str())?;
                let mut own = redacted(TwinChange::clone(change), view);
                own.values = [(metric.to_string(), value)].into();
                Some(Bytes::from(serde_json::to_vec(&own).unwrap_or_default()))
            }
        }
    }
}

/// Receives the next change this client should see, as JSON; `Err(missed)` when it fell
/// behind.
async fn next(
    changes: &mut broadcast::Receiver<Arc<SharedChange>>,
    filter: &Filter,
    state: &AppState,
) -> Option<Result<Bytes, u64>> {
    loop {
        match changes.recv().await {
            Ok(change) => {
                if let Some(text) = filter.text(&change) {
                    return Some(Ok(text));
                }
            }
            Err(RecvError::Lagged(missed)) => {
                for _ in 0..missed {
                    state.stats.ingest_dropped(IngestDrop::StreamLagged);
                }
                return Some(Err(missed));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

/// A stream message's text: serde_json writes UTF-8, so this never falls back.
fn utf8(text: Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(text).unwrap_or_default()
}

/// Changes written to a WebSocket before it is flushed.
const MAX_CHANGES_PER_WRITE: usize = 256;

fn lagged(missed: u64) -> String {
    format!("{{\"kind\":\"lagged\",\"missed\":{missed}}}")
}

/// Largest message or frame a WebSocket client may send, bytes. Clients only listen; this
/// leaves room for pings and close frames (at most 125 bytes each) and little else.
pub const WS_MAX_MESSAGE: usize = 1024;

/// Bytes a WebSocket reads at a time. tungstenite zero-fills this much of its buffer on every
/// poll of the socket, and the stream polls it once per burst of changes it sends: its default
/// of 128 KiB cost 2.4 % of the hub's CPU at 10,000 msg/s with one client. Clients send at most
/// [`WS_MAX_MESSAGE`] bytes, so this is room enough, and a class of browsers holds 4 KiB each
/// instead of 128.
const WS_READ_BUFFER: usize = 4 * 1024;

/// Close code when the token ended (logout or expiry): a private-use code (4000–4999), with
/// the reason `token_expired` or `logged_out`.
pub const CLOSE_SESSION_ENDED: u16 = 4001;

/// Twin changes as WebSocket text messages (one JSON `TwinChange` each, in order). A client that
/// falls too far behind gets `{"kind":"lagged","missed":N}` and continues. When the token ends
/// the socket closes with code 4001 and reason `token_expired` or `logged_out`. Browsers may
/// connect from the hub's own pages or `[auth] allowed_origins` only; clients send nothing but
/// pings and close frames (a message over 1 KiB closes the socket with 1009).
#[utoipa::path(get, path = "/api/v1/stream", tag = "streams",
    params(StreamFilter),
    responses(
        (status = 101, description = "WebSocket of TwinChange messages", body = TwinChange),
        (status = 400, description = "`invalid_id`, `bad_query`, `bad_request` (not a WebSocket handshake)", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden`, `forbidden_origin`", body = ErrorBody),
    ))]
pub async fn websocket(
    State(state): State<AppState>,
    headers: HeaderMap,
    caller: Caller,
    query: Result<Query<StreamFilter>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("?"));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, host, &state.auth.config().allowed_origins) {
        state.auth.counters().count(AccessEvent::ForeignOrigin);
        let origin: String = origin.unwrap_or_default().chars().take(100).collect();
        if let Some(held_back) = ORIGIN_LOG.admit(now_ms()) {
            warn!(%origin, held_back, "WebSocket from a foreign origin refused");
        }
        return Err(ApiError::ForeignOrigin(origin));
    }
    let Query(query) = query?;
    let filter = Filter::new(query, caller)?;
    // Checked after the scope, so that a refused lab says so even without a handshake.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    Ok(upgrade
        .max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| forward(socket, state, filter)))
}

static ORIGIN_LOG: LogThrottle = LogThrottle::new(10_000);

async fn forward(mut socket: WebSocket, state: AppState, filter: Filter) {
    let mut changes = state.twins.subscribe();
    state.stats.stream_client(1);
    let close = loop {
        let text = tokio::select! {
            change = next(&mut changes, &filter, &state) => match change {
                Some(Ok(text)) => utf8(text),
                Some(Err(missed)) => lagged(missed).into(),
                None => break None,
            },
            end = filter.ended() => {
                state.auth.counters().count(end_event(end));
                break Some((CLOSE_SESSION_ENDED, end.code()));
            }
            incoming = socket.recv() => match incoming {
                Some(Err(err)) if is_too_big(&err) => {
                    state.auth.counters().count(AccessEvent::MessageTooBig);
                    break Some((close_code::SIZE, "message_too_big"));
                }
                // Clients only listen; anything but a close is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => continue,
            },
        };
        // Whatever else is already waiting goes out in the same write: one syscall and one
        // wake-up of the client per burst rather than per change.
        if socket.feed(Message::Text(text)).await.is_err() {
            break None;
        }
        let mut fed = 1;
        while fed < MAX_CHANGES_PER_WRITE {
            let Some(more) = next(&mut changes, &filter, &state).now_or_never() else {
                break;
            };
            let text = match more {
                Some(Ok(text)) => utf8(text),
                Some(Err(missed)) => lagged(missed).into(),
                None => break,
            };
            if socket.feed(Message::Text(text)).await.is_err() {
                break;
            }
            fed += 1;
        }
        if socket.flush().await.is_err() {
            break None;
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }
    state.stats.stream_client(-1);
}

fn end_event(end: SessionEnd) -> AccessEvent {
    match end {
        SessionEnd::Expired => AccessEvent::StreamTokenExpired,
        SessionEnd::LoggedOut => AccessEvent::StreamLoggedOut,
    }
}

/// Whether the client's message broke the size limit (tungstenite's capacity error).
fn is_too_big(err: &axum::Error) -> bool {
    use std::error::Error as _;
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(tungstenite::Error::Capacity(_)) = cause.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Twin changes as Server-Sent Events (`event: change`, or `event: lagged`). When the token
/// ends, a last `event: end` with `{"kind":"end","reason":"token_expired"|"logged_out"}` closes
/// the stream.
#[utoipa::path(get, path = "/api/v1/events", tag = "streams",
    params(StreamFilter),
    responses(
        (status = 200, description = "text/event-stream of TwinChange", body = TwinChange, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_id`, `bad_query`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
    ))]
pub async fn server_sent_events(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<StreamFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let filter = Filter::new(query, caller)?;
    Ok(Sse::new(events(state, filter))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn events(state: AppState, filter: Filter) -> impl Stream<Item = Result<Event, Infallible>> {
    let changes = state.twins.subscribe();
    state.stats.stream_client(1);
    let guard = StreamGuard(state.clone());
    futures_util::stream::unfold(Some((changes, filter, state, guard)), |open| async move {
        let (mut changes, filter, state, guard) = open?;
        let event = tokio::select! {
            next = next(&mut changes, &filter, &state) => match next? {
                Ok(text) => Event::default()
                    .event("change")
                    .data(std::str::from_utf8(&text).unwrap_or_default()),
                Err(missed) => Event::default().event("lagged").data(lagged(missed)),
            },
            end = filter.ended() => {
                state.auth.counters().count(end_event(end));
                let last = Event::default().event("end").data(format!(
                    "{{\"kind\":\"end\",\"reason\":\"{}\"}}",
                    end.code()
                ));
                // The stream ends after this event (the guard counts the client out).
                return Some((Ok(last), None));
            }
        };
        Some((Ok(event), Some((changes, filter, state, guard))))
    })
}

/// Counts an SSE client down when its stream is dropped (the client went away).
struct StreamGuard(AppState);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.stats.stream_client(-1);
    }
}
