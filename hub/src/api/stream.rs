//! Live twin changes over WebSocket and Server-Sent Events, filtered by lab, machine and metric.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use protocol::{LabId, MachineId, MetricName};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::Principal;
use crate::stats::IngestDrop;
use crate::twin::TwinChange;

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
}

impl Filter {
    fn new(query: StreamFilter, caller: Caller) -> Result<Self, ApiError> {
        let filter = Self {
            lab: query.lab.as_deref().map(str::parse).transpose()?,
            machine: query.machine.as_deref().map(str::parse).transpose()?,
            metric: query.metric.as_deref().map(str::parse).transpose()?,
            principal: caller.0,
        };
        if let Some(lab) = &filter.lab {
            Caller(filter.principal.clone()).require_lab(lab)?;
        }
        Ok(filter)
    }

    /// The change as this client should see it, if at all.
    fn apply(&self, change: &TwinChange) -> Option<TwinChange> {
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
        match &self.metric {
            None => Some(change.clone()),
            Some(metric) => {
                let value = *change.values.get(metric.as_str())?;
                let mut change = change.clone();
                change.values = [(metric.to_string(), value)].into();
                Some(change)
            }
        }
    }
}

/// Receives the next change this client should see; `Err(missed)` when it fell behind.
async fn next(
    changes: &mut broadcast::Receiver<Arc<TwinChange>>,
    filter: &Filter,
    state: &AppState,
) -> Option<Result<TwinChange, u64>> {
    loop {
        match changes.recv().await {
            Ok(change) => {
                if let Some(change) = filter.apply(&change) {
                    return Some(Ok(change));
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

fn lagged(missed: u64) -> String {
    format!("{{\"kind\":\"lagged\",\"missed\":{missed}}}")
}

/// Twin changes as WebSocket text messages (one JSON `TwinChange` each, in order). A client that
/// falls too far behind gets `{"kind":"lagged","missed":N}` and continues.
#[utoipa::path(get, path = "/api/v1/stream", tag = "streams",
    params(StreamFilter),
    responses(
        (status = 101, description = "WebSocket of TwinChange messages", body = TwinChange),
        (status = 400, description = "`invalid_id`, `bad_query`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
    ))]
pub async fn websocket(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<StreamFilter>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let filter = Filter::new(query, caller)?;
    Ok(upgrade.on_upgrade(move |socket| forward(socket, state, filter)))
}

async fn forward(mut socket: WebSocket, state: AppState, filter: Filter) {
    let mut changes = state.twins.subscribe();
    state.stats.stream_client(1);
    loop {
        let text = tokio::select! {
            change = next(&mut changes, &filter, &state) => match change {
                Some(Ok(change)) => serde_json::to_string(&change).unwrap_or_default(),
                Some(Err(missed)) => lagged(missed),
                None => break,
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

/// Twin changes as Server-Sent Events (`event: change`, or `event: lagged`).
#[utoipa::path(get, path = "/api/v1/events", tag = "streams",
    params(StreamFilter),
    responses(
        (status = 200, description = "text/event-stream of TwinChange", body = TwinChange, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_id`, `bad_query`", body = ErrorBody),
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
    futures_util::stream::unfold(
        (changes, filter, state, guard),
        |(mut changes, filter, state, guard)| async move {
            let event = match next(&mut changes, &filter, &state).await? {
                Ok(change) => Event::default()
                    .event("change")
                    .data(serde_json::to_string(&change).unwrap_or_default()),
                Err(missed) => Event::default().event("lagged").data(lagged(missed)),
            };
            Some((Ok(event), (changes, filter, state, guard)))
        },
    )
}

/// Counts an SSE client down when its stream is dropped (the client went away).
struct StreamGuard(AppState);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.stats.stream_client(-1);
    }
}
