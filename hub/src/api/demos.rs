//! Guided demonstrations (playbooks), the security counters the projector shows, and the
//! virtual production lines with their flow.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::Role;
use crate::ingest::now_ms;
use crate::playbooks::{Playbook, PlaybookError, RunView};
use crate::twin::TwinKey;

fn playbook_error(err: PlaybookError) -> ApiError {
    match err {
        PlaybookError::NotFound(_) | PlaybookError::NotRunning => {
            ApiError::PlaybookNotFound(err.to_string())
        }
        PlaybookError::NeedsMachine(_) => ApiError::NotSimulated(err.to_string()),
        PlaybookError::Invalid { .. } => ApiError::BadBody(err.to_string()),
    }
}

/// The guided demonstrations.
#[utoipa::path(get, path = "/api/v1/playbooks", tag = "demo",
    responses((status = 200, body = Vec<Playbook>),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Json<Vec<Playbook>> {
    Json(state.playbooks.list().to_vec())
}

/// The demonstration running now (`null` when none), for the projector.
#[utoipa::path(get, path = "/api/v1/playbooks/run", tag = "demo",
    responses((status = 200, body = Option<RunView>),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody)))]
pub async fn current(State(state): State<AppState>, _caller: Caller) -> Json<Option<RunView>> {
    Json(state.playbooks.current())
}

/// Which demonstration to run, and on which machine.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartPlaybook {
    /// Playbook id.
    pub playbook: String,
    /// `lab/machine`; by default the first machine of the playbook's kind.
    #[serde(default)]
    pub twin: Option<String>,
}

/// Start a demonstration (operator); it replaces one running.
#[utoipa::path(post, path = "/api/v1/playbooks/run", tag = "demo",
    request_body = StartPlaybook,
    responses((status = 200, body = RunView),
        (status = 400, description = "`bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs operator)", body = ErrorBody),
        (status = 404, description = "`playbook_not_found`", body = ErrorBody),
        (status = 409, description = "`not_simulated` (no machine of its kind)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<StartPlaybook>, JsonRejection>,
) -> Result<Json<RunView>, ApiError> {
    let user = caller.require(Role::Operator)?.user.clone();
    let Json(request) = body?;
    if let Some(twin) = &request.twin {
        let key = TwinKey::parse(twin)
            .ok_or_else(|| ApiError::BadBody(format!("twin: {twin:?} is not lab/machine")))?;
        caller.require_lab(&key.lab)?;
    }
    state
        .playbooks
        .start(&request.playbook, request.twin.as_deref(), &user, now_ms())
        .map(Json)
        .map_err(playbook_error)
}

/// Go to the next step now (operator).
#[utoipa::path(post, path = "/api/v1/playbooks/run/next", tag = "demo",
    responses((status = 200, body = RunView),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs operator)", body = ErrorBody),
        (status = 404, description = "`playbook_not_found` (none runs)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn next(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RunView>, ApiError> {
    caller.require(Role::Operator)?;
    state
        .playbooks
        .next(now_ms())
        .map(Json)
        .map_err(playbook_error)
}

/// End the demonstration and take back its scenario: ready for the next visitors (operator).
#[utoipa::path(delete, path = "/api/v1/playbooks/run", tag = "demo",
    responses((status = 204, description = "Reset"),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs operator)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reset(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    state.playbooks.reset();
    Ok(StatusCode::NO_CONTENT)
}

/// Refused attempts, as the projector's security panel shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SecurityCounters {
    /// MQTT logins refused (anonymous, unknown user, wrong password).
    pub mqtt_logins_refused: u64,
    /// MQTT messages refused (a topic the login may not publish to).
    pub mqtt_publishes_refused: u64,
    /// MQTT subscriptions refused.
    pub mqtt_subscriptions_refused: u64,
    /// Web logins refused (wrong password, rate limits).
    pub web_logins_refused: u64,
    /// Sparkplug messages the hub refused from the wire (unlisted gateway, lab or machine,
    /// sequence jumps, a death that is not the gateway's own).
    pub wire_refused: u64,
}

impl SecurityCounters {
    /// All refusals.
    pub fn total(&self) -> u64 {
        self.mqtt_logins_refused
            + self.mqtt_publishes_refused
            + self.mqtt_subscriptions_refused
            + self.web_logins_refused
            + self.wire_refused
    }
}

/// What the hub refused so far: MQTT logins, messages and subscriptions, web logins, and
/// Sparkplug messages from the wire.
#[utoipa::path(get, path = "/api/v1/security", tag = "demo",
    responses((status = 200, body = SecurityCounters),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody)))]
pub async fn security(State(state): State<AppState>, _caller: Caller) -> Json<SecurityCounters> {
    Json((state.security.0)())
}

/// One machine of a line.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LineStation {
    /// `lab/machine`.
    pub twin: String,
    /// Display name.
    pub name: Option<String>,
    /// Whether it reports.
    pub online: bool,
    /// Its state (`running`, `idle`, …).
    pub state: String,
    /// Parts made (its counter), if it counts.
    pub parts: Option<f64>,
}

/// A virtual production line: its machines in flow order and where it stalls.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LineView {
    /// Line id.
    pub line: String,
    /// Machines, upstream first.
    pub stations: Vec<LineStation>,
    /// The first machine that is offline or not running: where parts stop.
    pub stalled_at: Option<String>,
}

/// The virtual production lines the caller may see whole.
#[utoipa::path(get, path = "/api/v1/lines", tag = "twins",
    responses((status = 200, body = Vec<LineView>),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody)))]
pub async fn lines(State(state): State<AppState>, caller: Caller) -> Json<Vec<LineView>> {
    let links = state.twins.directory().links();
    let mut names: Vec<&str> = links.iter().map(|l| l.line.as_str()).collect();
    names.dedup();
    let mut out = Vec::new();
    for line in names {
        // Flow order: start at a machine nothing feeds, follow the links.
        let of_line: Vec<_> = links.iter().filter(|l| l.line == line).collect();
        let Some(first) = of_line
            .iter()
            .find(|l| !of_line.iter().any(|other| other.to == l.from))
        else {
            continue;
        };
        let mut order = vec![first.from.clone()];
        while let Some(link) = of_line.iter().find(|l| Some(&l.from) == order.last()) {
            if order.contains(&link.to) {
                break;
            }
            order.push(link.to.clone());
        }
        let keys: Vec<TwinKey> = order.iter().filter_map(|t| TwinKey::parse(t)).collect();
        if keys.len() != order.len() || !keys.iter().all(|k| caller.0.can_read(&k.lab)) {
            continue;
        }
        let stations: Vec<LineStation> = keys
            .iter()
            .map(|key| {
                let twin = state.twins.get(key);
                LineStation {
                    twin: key.to_string(),
                    name: twin.as_ref().and_then(|t| t.name.clone()),
                    online: twin.as_ref().is_some_and(|t| t.connectivity.online),
                    state: twin
                        .as_ref()
                        .map_or_else(|| "unknown".to_owned(), |t| t.state.value.clone()),
                    parts: twin.as_ref().and_then(|t| {
                        t.features
                            .get("production")?
                            .properties
                            .get("parts")?
                            .reported
                    }),
                }
            })
            .collect();
        let stalled_at = stations
            .iter()
            .find(|s| !s.online || s.state != "running")
            .map(|s| s.twin.clone());
        out.push(LineView {
            line: line.to_owned(),
            stations,
            stalled_at,
        });
    }
    Json(out)
}
