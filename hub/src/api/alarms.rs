//! Alarms across the labs, and acknowledging them.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::alarm::{Alarm, AlarmError, AlarmFilter};
use crate::auth::Role;
use crate::ingest::now_ms;

/// Filters of the alarm list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlarmQuery {
    /// Only this lab.
    pub lab: Option<String>,
    /// Only this machine.
    pub machine: Option<String>,
    /// Only alarms whose condition still holds.
    pub active: Option<bool>,
    /// Only alarms nobody acknowledged yet (including cleared ones).
    pub unacknowledged: Option<bool>,
}

/// Alarms the caller may read, newest first.
#[utoipa::path(get, path = "/api/v1/alarms", tag = "alarms",
    params(AlarmQuery),
    responses(
        (status = 200, body = Vec<Alarm>),
        (status = 400, description = "`invalid_id`, `bad_query`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
    ))]
pub async fn list_alarms(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AlarmQuery>, QueryRejection>,
) -> Result<Json<Vec<Alarm>>, ApiError> {
    let Query(query) = query?;
    let lab: Option<protocol::LabId> = query.lab.as_deref().map(str::parse).transpose()?;
    if let Some(lab) = &lab {
        caller.require_lab(lab)?;
    }
    let machine: Option<protocol::MachineId> =
        query.machine.as_deref().map(str::parse).transpose()?;
    let filter = AlarmFilter {
        lab: lab.map(|l| l.to_string()),
        machine: machine.map(|m| m.to_string()),
        active_only: query.active.unwrap_or(false),
        unacknowledged_only: query.unacknowledged.unwrap_or(false),
    };
    let alarms = state
        .twins
        .alarms(&filter)
        .into_iter()
        .filter(|a| a.lab.parse().is_ok_and(|lab| caller.0.can_read(&lab)))
        .collect();
    Ok(Json(alarms))
}

fn alarm_id(
    caller: &Caller,
    (lab, machine, rule, n): &(String, String, String, String),
) -> Result<String, ApiError> {
    let lab: protocol::LabId = lab.parse()?;
    let machine: protocol::MachineId = machine.parse()?;
    caller.require_lab(&lab)?;
    // `n` is taken as text: axum's own rejection of a non-number is a plain-text 400, and no
    // alarm is numbered "x" (found by the rest_api fuzz target).
    let n: u64 = n
        .parse()
        .map_err(|_| ApiError::AlarmNotFound(format!("{lab}/{machine}/{rule}/{n}")))?;
    Ok(format!("{lab}/{machine}/{rule}/{n}"))
}

/// One alarm; its id is `{lab}/{machine}/{rule}/{n}`.
#[utoipa::path(get, path = "/api/v1/alarms/{lab}/{machine}/{rule}/{n}", tag = "alarms",
    params(("lab" = String, Path), ("machine" = String, Path), ("rule" = String, Path), ("n" = u64, Path, description = "Per-machine alarm number")),
    responses(
        (status = 200, body = Alarm),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`alarm_not_found`", body = ErrorBody),
    ))]
pub async fn get_alarm(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<(String, String, String, String)>,
) -> Result<Json<Alarm>, ApiError> {
    let id = alarm_id(&caller, &path)?;
    state
        .twins
        .alarms(&AlarmFilter {
            lab: Some(path.0),
            machine: Some(path.1),
            ..AlarmFilter::default()
        })
        .into_iter()
        .find(|a| a.id == id)
        .map(Json)
        .ok_or(ApiError::AlarmNotFound(id))
}

/// Acknowledge an alarm (operator): who and when are recorded on it.
#[utoipa::path(post, path = "/api/v1/alarms/{lab}/{machine}/{rule}/{n}/ack", tag = "alarms",
    params(("lab" = String, Path), ("machine" = String, Path), ("rule" = String, Path), ("n" = u64, Path, description = "Per-machine alarm number")),
    responses(
        (status = 200, body = Alarm),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs operator)", body = ErrorBody),
        (status = 404, description = "`alarm_not_found`", body = ErrorBody),
        (status = 409, description = "`alarm_already_acknowledged`", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn acknowledge(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<(String, String, String, String)>,
) -> Result<Json<Alarm>, ApiError> {
    let user = caller.require(Role::Operator)?.user.clone();
    let id = alarm_id(&caller, &path)?;
    state
        .twins
        .acknowledge(&id, &user, now_ms())
        .map(Json)
        .map_err(|err| match err {
            AlarmError::AlreadyAcknowledged { id } => ApiError::AlarmAlreadyAcknowledged(id),
            AlarmError::UnknownAlarm { id } => ApiError::AlarmNotFound(id),
            other => ApiError::Storage(other.to_string()),
        })
}
