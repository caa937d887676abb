//! Demo mode: simulator scenarios on simulated machines, started and stopped by operators.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::Role;
use crate::ingest::now_ms;
use crate::scenarios::{RunningScenario, ScenarioError, ScenarioInfo};
use crate::twin::TwinKey;

/// What can run and what runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Scenarios {
    /// Whether this hub runs beside simulated machines at all.
    pub simulated: bool,
    /// Scenarios and the twins they can run on.
    pub available: Vec<ScenarioInfo>,
    /// Scenarios running now.
    pub running: Vec<RunningScenario>,
}

/// The scenarios of the simulated machines (empty where the hub has none).
#[utoipa::path(get, path = "/api/v1/scenarios", tag = "demo",
    responses((status = 200, body = Scenarios), (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Json<Scenarios> {
    let visible = |twin: &str| TwinKey::parse(twin).is_some_and(|key| caller.0.can_read(&key.lab));
    Json(match &state.scenarios {
        Some(control) => Scenarios {
            simulated: true,
            available: control
                .available()
                .into_iter()
                .map(|mut info| {
                    info.machines.retain(|m| visible(m));
                    info
                })
                .collect(),
            running: control
                .running()
                .into_iter()
                .filter(|r| visible(&r.twin))
                .collect(),
        },
        None => Scenarios {
            simulated: false,
            available: Vec::new(),
            running: Vec::new(),
        },
    })
}

/// Which scenario to start.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartScenario {
    /// Scenario name (see `GET /api/v1/scenarios`).
    pub scenario: String,
}

/// The twin's key and the hub's scenario control, if it has one.
fn simulated<'a>(
    state: &'a AppState,
    lab: &str,
    machine: &str,
) -> Result<(TwinKey, &'a dyn crate::scenarios::ScenarioControl), ApiError> {
    let key = TwinKey {
        lab: lab.parse()?,
        machine: machine.parse()?,
    };
    match &state.scenarios {
        Some(control) => Ok((key, control.as_ref())),
        None => Err(ApiError::NotSimulated(format!(
            "{key} is not a simulated machine: this hub runs none"
        ))),
    }
}

fn scenario_error(err: ScenarioError) -> ApiError {
    match err {
        ScenarioError::UnknownScenario(_) => ApiError::ScenarioNotFound(err.to_string()),
        ScenarioError::NotApplicable { .. } => ApiError::NotSimulated(err.to_string()),
        ScenarioError::NotRunning(_) => ApiError::ScenarioNotRunning(err.to_string()),
    }
}

/// Start a scenario on a simulated machine now (operator); it replaces one already running.
#[utoipa::path(post, path = "/api/v1/twins/{lab}/{machine}/scenario", tag = "demo",
    params(("lab" = String, Path), ("machine" = String, Path)),
    request_body = StartScenario,
    responses(
        (status = 200, body = RunningScenario),
        (status = 400, description = "`invalid_id`, `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs operator)", body = ErrorBody),
        (status = 404, description = "`scenario_not_found`", body = ErrorBody),
        (status = 409, description = "`not_simulated`", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path((lab, machine)): Path<(String, String)>,
    body: Result<Json<StartScenario>, JsonRejection>,
) -> Result<Json<RunningScenario>, ApiError> {
    let user = caller.require(Role::Operator)?.user.clone();
    let (key, control) = simulated(&state, &lab, &machine)?;
    let Json(request) = body?;
    control
        .start(&request.scenario, &key, &user, now_ms())
        .map(Json)
        .map_err(scenario_error)
}

/// Stop the machine's scenario and put back what it changed (operator).
#[utoipa::path(delete, path = "/api/v1/twins/{lab}/{machine}/scenario", tag = "demo",
    params(("lab" = String, Path), ("machine" = String, Path)),
    responses(
        (status = 204, description = "Stopped"),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs operator)", body = ErrorBody),
        (status = 404, description = "`scenario_not_running`", body = ErrorBody),
        (status = 409, description = "`not_simulated`", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    Path((lab, machine)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let (key, control) = simulated(&state, &lab, &machine)?;
    control.stop(&key).map_err(scenario_error)?;
    Ok(StatusCode::NO_CONTENT)
}
