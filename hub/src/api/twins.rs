//! Labs, the catalogue, twins, their history and desired properties.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::Role;
use crate::catalogue::MachineKind;
use crate::history::long_term::Split;
use crate::history::{self, Bucket, HistoryError, TimeRange};
use crate::ingest::now_ms;
use crate::replica::requests::{ForwardError, Forwarder, RequestOutcome, TwinRequest};
use crate::twin::{Desired, DesiredError, DesiredStatus, SparkplugPath, Twin, TwinKey};

/// A lab with a summary of its machines.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LabSummary {
    /// Lab id (Sparkplug group).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Where it is.
    pub location: String,
    /// Twins in the lab.
    pub machines: usize,
    /// Of those, online.
    pub online: usize,
    /// Active alarms in the lab.
    pub active_alarms: usize,
}

/// The labs the caller may read.
#[utoipa::path(get, path = "/api/v1/labs", tag = "twins",
    responses((status = 200, body = Vec<LabSummary>), (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody)))]
pub async fn list_labs(State(state): State<AppState>, caller: Caller) -> Json<Vec<LabSummary>> {
    let directory = state.twins.directory();
    let counts = state.twins.lab_counts();
    let mut ids: BTreeSet<String> = counts.keys().cloned().collect();
    ids.extend(directory.labs().map(|lab| lab.id.to_string()));
    let labs = ids
        .into_iter()
        .filter_map(|id| {
            let lab_id = id.parse().ok()?;
            caller.0.can_read(&lab_id).then_some(())?;
            let config = directory.lab(&lab_id);
            let in_lab = counts.get(&id).copied().unwrap_or_default();
            Some(LabSummary {
                name: config.map_or_else(|| id.clone(), |c| c.name.clone()),
                location: config.map(|c| c.location.clone()).unwrap_or_default(),
                machines: in_lab.machines,
                online: in_lab.online,
                active_alarms: in_lab.active_alarms,
                id,
            })
        })
        .collect();
    Json(labs)
}

/// Every machine kind in the catalogue.
#[utoipa::path(get, path = "/api/v1/catalogue", tag = "catalogue",
    responses((status = 200, body = Vec<MachineKind>)))]
pub async fn list_kinds(State(state): State<AppState>) -> Json<Vec<MachineKind>> {
    let catalogue = state.twins.directory().catalogue();
    Json(catalogue.kinds().map(|k| MachineKind::clone(k)).collect())
}

/// One machine kind.
#[utoipa::path(get, path = "/api/v1/catalogue/{kind}", tag = "catalogue",
    params(("kind" = String, Path, description = "Kind id, e.g. `cnc-mill`")),
    responses((status = 200, body = MachineKind), (status = 404, description = "`kind_not_found`", body = ErrorBody)))]
pub async fn get_kind(
    State(state): State<AppState>,
    Path(kind): Path<String>,
) -> Result<Json<MachineKind>, ApiError> {
    let catalogue = state.twins.directory().catalogue();
    catalogue
        .get(&kind)
        .map(|k| Json(MachineKind::clone(k)))
        .ok_or(ApiError::KindNotFound(kind))
}

/// Filters of the twin list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TwinFilter {
    /// Only this lab.
    pub lab: Option<String>,
    /// Only this machine id.
    pub machine: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this state (`off`, `idle`, `warming`, `running`, `fault`, `unknown`).
    pub state: Option<String>,
    /// Only online (`true`) or offline (`false`) twins.
    pub online: Option<bool>,
    /// Only twins with (`true`) or without (`false`) active alarms.
    pub alarm: Option<bool>,
}

const STATES: [&str; 6] = ["off", "idle", "warming", "running", "fault", "unknown"];

/// The twins the caller may read, filtered.
#[utoipa::path(get, path = "/api/v1/twins", tag = "twins",
    params(TwinFilter),
    responses(
        (status = 200, body = Vec<Twin>),
        (status = 400, description = "`invalid_id`, `bad_query`", body = ErrorBody),
        (status = 403, description = "`forbidden` (a lab outside the student's game)", body = ErrorBody),
    ))]
pub async fn list_twins(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<TwinFilter>, QueryRejection>,
) -> Result<Json<Vec<Twin>>, ApiError> {
    let Query(filter) = query?;
    let lab = filter.lab.as_deref().map(str::parse).transpose()?;
    if let Some(lab) = &lab {
        caller.require_lab(lab)?;
    }
    let machine: Option<protocol::MachineId> =
        filter.machine.as_deref().map(str::parse).transpose()?;
    if let Some(wanted) = &filter.state
        && !STATES.contains(&wanted.as_str())
    {
        return Err(ApiError::BadQuery(format!(
            "state must be one of {}, not {wanted:?}",
            STATES.join(", ")
        )));
    }
    let twins = state
        .twins
        .list(lab.as_ref())
        .into_iter()
        .filter(|t| t.lab.parse().is_ok_and(|l| caller.0.can_read(&l)))
        .filter(|t| machine.as_ref().is_none_or(|m| m.as_str() == t.machine))
        .filter(|t| filter.kind.as_ref().is_none_or(|k| k == &t.kind))
        .filter(|t| filter.state.as_ref().is_none_or(|s| s == &t.state.value))
        .filter(|t| filter.online.is_none_or(|o| o == t.connectivity.online))
        .filter(|t| filter.alarm.is_none_or(|with| with != t.alarms.is_empty()))
        .collect();
    Ok(Json(twins))
}

fn twin_key(caller: &Caller, lab: &str, machine: &str) -> Result<TwinKey, ApiError> {
    let key = TwinKey {
        lab: lab.parse()?,
        machine: machine.parse()?,
    };
    caller.require_lab(&key.lab)?;
    Ok(key)
}

/// One twin.
#[utoipa::path(get, path = "/api/v1/twins/{lab}/{machine}", tag = "twins",
    params(("lab" = String, Path), ("machine" = String, Path)),
    responses(
        (status = 200, body = Twin),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`twin_not_found`", body = ErrorBody),
    ))]
pub async fn get_twin(
    State(state): State<AppState>,
    caller: Caller,
    Path((lab, machine)): Path<(String, String)>,
) -> Result<Json<Twin>, ApiError> {
    let key = twin_key(&caller, &lab, &machine)?;
    state
        .twins
        .get(&key)
        .map(Json)
        .ok_or_else(|| ApiError::TwinNotFound(key.to_string()))
}

/// Retire a twin (a machine that left the lab, or one born by mistake): it leaves the twin list,
/// the store and the streams (which get a `retired` change) at once. Its history stays until the
/// retention ages it out. It comes back only if its gateway births it again and the hub admits
/// it (listed in the lab, or the lab or hub accepts new machines). Needs the operator role.
#[utoipa::path(delete, path = "/api/v1/twins/{lab}/{machine}", tag = "twins",
    params(("lab" = String, Path), ("machine" = String, Path)),
    responses(
        (status = 204, description = "Retired"),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs operator)", body = ErrorBody),
        (status = 404, description = "`twin_not_found`", body = ErrorBody),
        (status = 503, description = "`owner_unavailable`: the hub replica owning the twin did not answer", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn retire_twin(
    State(state): State<AppState>,
    caller: Caller,
    Path((lab, machine)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let user = caller.require(Role::Operator)?.user.clone();
    let key = twin_key(&caller, &lab, &machine)?;
    if let Some(forwarder) = owned_elsewhere(&state, &key) {
        let request = TwinRequest::Retire { user: user.clone() };
        forwarder
            .forward(&key, &request)
            .await
            .map_err(|err| forward_error(&key, err))?;
        return Ok(StatusCode::NO_CONTENT);
    }
    state
        .twins
        .retire(&key, now_ms())
        .ok_or_else(|| ApiError::TwinNotFound(key.to_string()))?;
    tracing::info!(lab = %key.lab, machine = %key.machine, %user, "twin retired");
    Ok(StatusCode::NO_CONTENT)
}

/// How the machine's values reach the hub over Sparkplug: its gateway's session (`bdSeq`, for
/// operators only), the metric aliases of its DBIRTH, and the last message with its `seq` and
/// receive time. Empty until a message about the machine arrives after the hub started.
#[utoipa::path(get, path = "/api/v1/twins/{lab}/{machine}/sparkplug", tag = "twins",
    params(("lab" = String, Path), ("machine" = String, Path)),
    responses(
        (status = 200, body = SparkplugPath),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`twin_not_found`", body = ErrorBody),
    ))]
pub async fn sparkplug(
    State(state): State<AppState>,
    caller: Caller,
    Path((lab, machine)): Path<(String, String)>,
) -> Result<Json<SparkplugPath>, ApiError> {
    let key = twin_key(&caller, &lab, &machine)?;
    if state.twins.get(&key).is_none() {
        return Err(ApiError::TwinNotFound(key.to_string()));
    }
    let mut path = state.twins.sparkplug_path(&key).unwrap_or_default();
    // With the bdSeq anyone on the broker could forge the gateway's NDEATH and take the lab
    // offline: operators only.
    if !caller.0.has(Role::Operator) {
        path.bd_seq = None;
        if let Some(last) = &mut path.last {
            last.bd_seq = None;
        }
    }
    Ok(Json(path))
}

/// Parameters of a history query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The metric, e.g. `spindle.power_w`.
    pub metric: Option<String>,
    /// Start, ms since the epoch (default: an hour before `to`).
    pub from: Option<u64>,
    /// End, ms since the epoch (default: now).
    pub to: Option<u64>,
    /// Bucket width in ms (default: about 500 buckets over the range; `0` is an error).
    pub step: Option<u64>,
}

/// A metric's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    /// `lab/machine`.
    pub twin: String,
    /// The metric.
    pub metric: String,
    /// Its unit symbol.
    pub unit: String,
    /// Start, ms.
    pub from: u64,
    /// End, ms.
    pub to: u64,
    /// Bucket width, ms.
    pub step: u64,
    /// Buckets in time order (empty ones left out).
    pub buckets: Vec<Bucket>,
    /// The buckets before this instant (ms) were read from the long-term store, because the
    /// embedded history no longer holds them; absent when every bucket came from the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_term_until: Option<u64>,
}

const HOUR_MS: u64 = 3_600_000;

/// A metric's history, downsampled into buckets (min, max, mean, last, count). With a
/// long-term store configured (`[influx] query_url`), the part of the range older than the
/// embedded retention is read from it; `long_term_until` says up to where.
#[utoipa::path(get, path = "/api/v1/twins/{lab}/{machine}/history", tag = "twins",
    params(("lab" = String, Path), ("machine" = String, Path), HistoryQuery),
    responses(
        (status = 200, body = History),
        (status = 400, description = "`invalid_id`, `bad_query`, `missing_parameter`, `bad_time_range`, `bad_step`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`twin_not_found`", body = ErrorBody),
        (status = 502, description = "`long_term_unavailable`: the range reaches past the embedded history and the long-term store did not answer", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path((lab, machine)): Path<(String, String)>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let key = twin_key(&caller, &lab, &machine)?;
    let Query(query) = query?;
    let metric: protocol::MetricName = query
        .metric
        .as_deref()
        .ok_or(ApiError::MissingParameter("metric"))?
        .parse()?;
    let twin = state
        .twins
        .get(&key)
        .ok_or_else(|| ApiError::TwinNotFound(key.to_string()))?;
    let to = query.to.unwrap_or_else(now_ms);
    let from = query.from.unwrap_or(to.saturating_sub(HOUR_MS));
    let range = TimeRange {
        from_ms: from,
        to_ms: to,
    };
    range.validate().map_err(history_error)?;
    let step = query.step.unwrap_or_else(|| history::default_step(range));
    history::check_step(range, step).map_err(history_error)?;
    let split = match &state.long_term {
        Some(reader) => reader.split(range, step, now_ms()),
        None => Split {
            long_term: None,
            embedded: Some(range),
        },
    };
    let mut buckets = match (&state.long_term, split.long_term) {
        (Some(reader), Some(older)) => reader
            .buckets(&key, &metric, older, step)
            .await
            .map_err(|err| ApiError::LongTermUnavailable(err.to_string()))?,
        _ => Vec::new(),
    };
    if let (Some(recent), Some(shared)) = (split.embedded, &state.shared_history) {
        let from_replicas = shared
            .buckets(&key, metric.as_str(), recent, step)
            .await
            .map_err(|err| ApiError::Storage(err.to_string()))?;
        buckets.extend(from_replicas);
    } else if let Some(recent) = split.embedded {
        let store = state.store.clone();
        let (query_key, query_metric) = (key.clone(), metric.clone());
        let embedded = tokio::task::spawn_blocking(move || {
            let txn = store
                .database()
                .begin_read()
                .map_err(|e| ApiError::Storage(e.to_string()))?;
            history::query(&txn, &query_key, &query_metric, recent, Some(step))
                .map_err(history_error)
        })
        .await
        .map_err(|e| ApiError::Storage(e.to_string()))??;
        buckets.extend(embedded);
    }
    let unit = twin
        .features
        .get(metric.feature())
        .and_then(|f| f.properties.get(metric.property()))
        .map(|p| p.unit.clone())
        .unwrap_or_default();
    Ok(Json(History {
        twin: key.to_string(),
        metric: metric.to_string(),
        unit,
        from,
        to,
        step,
        buckets,
        long_term_until: split.long_term.map(|part| part.to_ms),
    }))
}

/// The way to the replica that owns `key`, when this one only mirrors it.
fn owned_elsewhere<'a>(state: &'a AppState, key: &TwinKey) -> Option<&'a Arc<Forwarder>> {
    state
        .forwarder
        .as_ref()
        .filter(|_| state.twins.is_mirrored(key))
}

fn forward_error(key: &TwinKey, err: ForwardError) -> ApiError {
    match err {
        ForwardError::Refused(RequestOutcome::NotFound) => ApiError::TwinNotFound(key.to_string()),
        ForwardError::Refused(RequestOutcome::Offline) => ApiError::MachineOffline(key.to_string()),
        ForwardError::Refused(RequestOutcome::Refused { message }) => {
            ApiError::NotWritable(message)
        }
        ForwardError::Refused(RequestOutcome::NotSent { message }) => {
            ApiError::CommandNotSent(message)
        }
        ForwardError::Refused(RequestOutcome::Done) | ForwardError::Unanswered(..) => {
            ApiError::OwnerUnavailable(err.to_string())
        }
        ForwardError::Shared(err) => {
            ApiError::OwnerUnavailable(format!("cannot reach the region's store: {err}"))
        }
    }
}

fn desired_error(err: DesiredError) -> ApiError {
    match err {
        DesiredError::UnknownTwin(id) => ApiError::TwinNotFound(id),
        DesiredError::NotWritable { .. } => ApiError::NotWritable(err.to_string()),
        DesiredError::OutOfRange { .. } => ApiError::OutOfRange(err.to_string()),
        DesiredError::Offline(id) => ApiError::MachineOffline(id),
    }
}

fn history_error(err: HistoryError) -> ApiError {
    match err.api_code() {
        Some("bad_time_range") => ApiError::BadTimeRange(err.to_string()),
        Some(_) => ApiError::BadStep(err.to_string()),
        None => ApiError::Storage(err.to_string()),
    }
}

/// What a desired-property write started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DesiredAccepted {
    /// `lab/machine`.
    pub twin: String,
    /// The desired values now pending, by metric. Watch the twin (or the stream, `kind:
    /// "desired"`) for their outcome.
    pub desired: BTreeMap<String, Desired>,
}

/// Set writable properties: the values go to the machine as a Sparkplug DCMD through its
/// gateway; each desired entry turns `applied` (or `invalid`, `unsupported`, `failed`,
/// `no_answer`) when the machine answers. Needs the operator role.
#[utoipa::path(patch, path = "/api/v1/twins/{lab}/{machine}/desired", tag = "twins",
    params(("lab" = String, Path), ("machine" = String, Path)),
    request_body(content = BTreeMap<String, f64>, description = "Metric → value, e.g. `{\"node.period_ms\": 500}`"),
    responses(
        (status = 202, body = DesiredAccepted),
        (status = 400, description = "`invalid_id`, `bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs operator)", body = ErrorBody),
        (status = 404, description = "`twin_not_found`", body = ErrorBody),
        (status = 409, description = "`machine_offline`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`not_writable`, `out_of_range`", body = ErrorBody),
        (status = 503, description = "`command_not_sent`, `owner_unavailable`: the hub replica owning the twin did not answer", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn write_desired(
    State(state): State<AppState>,
    caller: Caller,
    Path((lab, machine)): Path<(String, String)>,
    body: Result<Json<BTreeMap<String, f64>>, JsonRejection>,
) -> Result<(StatusCode, Json<DesiredAccepted>), ApiError> {
    let principal = caller.require(Role::Operator)?.clone();
    let key = twin_key(&caller, &lab, &machine)?;
    let Json(values) = body?;
    if values.is_empty() {
        return Err(ApiError::BadBody(
            "name at least one property, e.g. {\"node.period_ms\": 500}".into(),
        ));
    }
    let twin = state
        .twins
        .get(&key)
        .ok_or_else(|| ApiError::TwinNotFound(key.to_string()))?;
    let kind: Arc<MachineKind> = state
        .twins
        .kind(&key)
        .ok_or_else(|| ApiError::TwinNotFound(key.to_string()))?;
    // Check every value before recording any, so a request is applied whole or not at all.
    for (metric, value) in &values {
        crate::twin::check_writable(&kind, metric, *value).map_err(desired_error)?;
    }
    let gateway = twin
        .connectivity
        .gateway
        .as_deref()
        .and_then(|g| g.parse().ok())
        .filter(|_| twin.connectivity.online)
        .ok_or_else(|| ApiError::MachineOffline(key.to_string()))?;
    let now = now_ms();
    if let Some(forwarder) = owned_elsewhere(&state, &key) {
        let request = TwinRequest::Desired {
            values: values.clone(),
            user: principal.user.clone(),
        };
        forwarder
            .forward(&key, &request)
            .await
            .map_err(|err| forward_error(&key, err))?;
        // This replica sees the owner's pending values with its next commit; the answer says
        // what was asked now.
        let desired = values
            .iter()
            .map(|(metric, value)| {
                let pending = Desired {
                    value: *value,
                    status: DesiredStatus::Pending,
                    requested_by: principal.user.clone(),
                    requested_at: now,
                    completed_at: None,
                    resent_at: None,
                };
                (metric.clone(), pending)
            })
            .collect();
        return Ok((
            StatusCode::ACCEPTED,
            Json(DesiredAccepted {
                twin: key.to_string(),
                desired,
            }),
        ));
    }
    for (metric, value) in &values {
        state
            .twins
            .request_desired(&key, metric, *value, &principal.user, now)
            .map_err(desired_error)?;
    }
    let pairs: Vec<(String, f64)> = values.iter().map(|(k, v)| (k.clone(), *v)).collect();
    state.commands.device_command(&key, &gateway, &pairs, now)?;
    let twin = state
        .twins
        .get(&key)
        .ok_or_else(|| ApiError::TwinNotFound(key.to_string()))?;
    let desired = twin
        .desired
        .into_iter()
        .filter(|(metric, _)| values.contains_key(metric))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(DesiredAccepted {
            twin: key.to_string(),
            desired,
        }),
    ))
}
