//! API errors: JSON `{ "error": { "code", "message" } }` with a stable code per cause.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::IdError;
use serde::Serialize;

/// An API error with a stable code.
#[derive(Debug)]
pub enum ApiError {
    /// A path or query id is invalid.
    InvalidId(IdError),
    /// A query parameter is malformed or unknown.
    BadQuery(String),
    /// A required query parameter is missing.
    MissingParameter(&'static str),
    /// `from`/`to` do not make a time range.
    BadTimeRange(String),
    /// `step` is unusable.
    BadStep(String),
    /// The body is not the JSON the endpoint takes.
    BadBody(String),
    /// The body is larger than the endpoint accepts.
    BodyTooLarge,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// No token where one is needed.
    Unauthenticated,
    /// A token that is unknown or expired.
    InvalidToken,
    /// Wrong user name or password.
    BadCredentials,
    /// Too many login attempts from this client (or for this name from it).
    RateLimited {
        /// Seconds until an attempt would pass.
        retry_after_s: u64,
    },
    /// Every password check is busy; try again shortly.
    LoginBusy,
    /// The region's shared session store cannot be reached (hub replicas).
    SessionsUnavailable,
    /// The replica owning the twin did not answer a forwarded change (hub replicas).
    OwnerUnavailable(String),
    /// A WebSocket upgrade from a page of another origin.
    ForeignOrigin(String),
    /// The caller's role or game does not allow this.
    Forbidden(String),
    /// No such twin.
    TwinNotFound(String),
    /// An AAS identifier in the path that cannot be decoded.
    BadIdentifier(String),
    /// No such AAS shell.
    ShellNotFound(String),
    /// No such AAS submodel.
    SubmodelNotFound(String),
    /// No such alarm.
    AlarmNotFound(String),
    /// No such machine kind.
    KindNotFound(String),
    /// No such simulator scenario.
    ScenarioNotFound(String),
    /// No scenario runs on the machine.
    ScenarioNotRunning(String),
    /// The machine is not simulated (or not of a kind the scenario runs on).
    NotSimulated(String),
    /// The alarm was already acknowledged.
    AlarmAlreadyAcknowledged(String),
    /// The property is not writable for this kind.
    NotWritable(String),
    /// The value is outside the kind's range.
    OutOfRange(String),
    /// The machine is offline, so a command cannot reach it.
    MachineOffline(String),
    /// The command could not be handed to the broker connection.
    CommandNotSent(String),
    /// No such route.
    RouteNotFound,
    /// The route exists, not with this method.
    MethodNotAllowed,
    /// The hub is starting or its broker connection is down.
    NotReady,
    /// Storage failed.
    Storage(String),
    /// The long-term history store did not answer or refused the query.
    LongTermUnavailable(String),
    /// A game request was refused.
    Game(crate::games::GameError),
    /// No such playbook, or none runs.
    PlaybookNotFound(String),
}

/// The error document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code (see the table in `docs/api.md`).
    pub code: &'static str,
    /// What was wrong, for people.
    pub message: String,
}

impl ApiError {
    /// HTTP status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError as E;
        match self {
            E::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            E::BadQuery(_) => (StatusCode::BAD_REQUEST, "bad_query"),
            E::MissingParameter(_) => (StatusCode::BAD_REQUEST, "missing_parameter"),
            E::BadTimeRange(_) => (StatusCode::BAD_REQUEST, "bad_time_range"),
            E::BadStep(_) => (StatusCode::BAD_REQUEST, "bad_step"),
            E::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            E::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            E::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            E::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            E::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            E::BadCredentials => (StatusCode::UNAUTHORIZED, "bad_credentials"),
            E::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            E::LoginBusy => (StatusCode::SERVICE_UNAVAILABLE, "login_busy"),
            E::SessionsUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "sessions_unavailable"),
            E::OwnerUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "owner_unavailable"),
            E::ForeignOrigin(_) => (StatusCode::FORBIDDEN, "forbidden_origin"),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            E::TwinNotFound(_) => (StatusCode::NOT_FOUND, "twin_not_found"),
            E::BadIdentifier(_) => (StatusCode::BAD_REQUEST, "bad_identifier"),
            E::ShellNotFound(_) => (StatusCode::NOT_FOUND, "shell_not_found"),
            E::SubmodelNotFound(_) => (StatusCode::NOT_FOUND, "submodel_not_found"),
            E::AlarmNotFound(_) => (StatusCode::NOT_FOUND, "alarm_not_found"),
            E::KindNotFound(_) => (StatusCode::NOT_FOUND, "kind_not_found"),
            E::ScenarioNotFound(_) => (StatusCode::NOT_FOUND, "scenario_not_found"),
            E::ScenarioNotRunning(_) => (StatusCode::NOT_FOUND, "scenario_not_running"),
            E::NotSimulated(_) => (StatusCode::CONFLICT, "not_simulated"),
            E::AlarmAlreadyAcknowledged(_) => (StatusCode::CONFLICT, "alarm_already_acknowledged"),
            E::NotWritable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "not_writable"),
            E::OutOfRange(_) => (StatusCode::UNPROCESSABLE_ENTITY, "out_of_range"),
            E::MachineOffline(_) => (StatusCode::CONFLICT, "machine_offline"),
            E::CommandNotSent(_) => (StatusCode::SERVICE_UNAVAILABLE, "command_not_sent"),
            E::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            E::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            E::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            E::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            E::LongTermUnavailable(_) => (StatusCode::BAD_GATEWAY, "long_term_unavailable"),
            E::Game(err) => game_status_and_code(err),
            E::PlaybookNotFound(_) => (StatusCode::NOT_FOUND, "playbook_not_found"),
        }
    }

    fn message(&self) -> String {
        use ApiError as E;
        match self {
            E::InvalidId(err) => err.to_string(),
            E::BadQuery(m)
            | E::BadTimeRange(m)
            | E::BadStep(m)
            | E::BadBody(m)
            | E::Forbidden(m)
            | E::NotWritable(m)
            | E::OutOfRange(m)
            | E::CommandNotSent(m)
            | E::ScenarioNotFound(m)
            | E::ScenarioNotRunning(m)
            | E::NotSimulated(m)
            | E::BadIdentifier(m)
            | E::PlaybookNotFound(m)
            | E::Storage(m)
            | E::LongTermUnavailable(m)
            | E::OwnerUnavailable(m) => m.clone(),
            E::MissingParameter(name) => format!("query parameter `{name}` is required"),
            E::BodyTooLarge => format!("the body is larger than {} bytes", super::BODY_LIMIT),
            E::UnsupportedMediaType => "send the body as application/json".into(),
            E::Unauthenticated => {
                "log in first (POST /api/v1/auth/login) and send `Authorization: Bearer <token>`"
                    .into()
            }
            E::InvalidToken => "the token is unknown or expired; log in again".into(),
            E::BadCredentials => "unknown user or wrong password".into(),
            E::RateLimited { retry_after_s } => {
                format!("too many login attempts; try again in {retry_after_s} s")
            }
            E::LoginBusy => "too many logins at once; try again in a moment".into(),
            E::SessionsUnavailable => {
                "the region's session store cannot be reached; try again in a moment".into()
            }
            E::ForeignOrigin(origin) => format!(
                "a page from {origin} may not open this stream (see [auth] allowed_origins)"
            ),
            E::TwinNotFound(id) => format!("no twin {id}"),
            E::ShellNotFound(id) => format!("no asset administration shell {id:?}"),
            E::SubmodelNotFound(id) => format!("no submodel {id:?}"),
            E::AlarmNotFound(id) => format!("no alarm {id}"),
            E::KindNotFound(id) => format!("no machine kind {id}"),
            E::AlarmAlreadyAcknowledged(id) => format!("alarm {id} is already acknowledged"),
            E::MachineOffline(id) => format!("{id} is offline: a command cannot reach it"),
            E::RouteNotFound => "no such endpoint; see /api/v1/openapi.json".into(),
            E::MethodNotAllowed => "this endpoint does not take that method".into(),
            E::NotReady => "the hub is not connected to its broker yet".into(),
            E::Game(err) => err.to_string(),
        }
    }
}

fn game_status_and_code(err: &crate::games::GameError) -> (StatusCode, &'static str) {
    use crate::games::GameError as G;
    match err {
        G::NotFound(_) => (StatusCode::NOT_FOUND, "game_not_found"),
        G::BadCode(_) => (StatusCode::NOT_FOUND, "bad_join_code"),
        G::TemplateNotFound(..) => (StatusCode::NOT_FOUND, "template_not_found"),
        G::ChallengeNotFound(_) => (StatusCode::NOT_FOUND, "challenge_not_found"),
        G::WrongPhase(_) => (StatusCode::CONFLICT, "wrong_phase"),
        G::AlreadyAnswered(_) => (StatusCode::CONFLICT, "already_answered"),
        G::NoMoreHints(_) => (StatusCode::CONFLICT, "no_more_hints"),
        G::PeriodNotOver(_) => (StatusCode::CONFLICT, "period_not_over"),
        G::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_value"),
        G::NoMachine(_) => (StatusCode::CONFLICT, "not_simulated"),
        G::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        G::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    }
}

impl From<crate::games::GameError> for ApiError {
    fn from(err: crate::games::GameError) -> Self {
        ApiError::Game(err)
    }
}

impl From<IdError> for ApiError {
    fn from(err: IdError) -> Self {
        ApiError::InvalidId(err)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadQuery(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::BodyTooLarge
            }
            other => ApiError::BadBody(other.body_text()),
        }
    }
}

/// The JSON error response for a status, code and message.
pub fn error_response(status: StatusCode, code: &'static str, message: String) -> Response {
    let mut response = (
        status,
        Json(ErrorBody {
            error: ErrorDetail { code, message },
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        // RFC 7235: a 401 names the scheme that would work.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_s } => Some(*retry_after_s),
            ApiError::LoginBusy | ApiError::SessionsUnavailable => Some(1),
            _ => None,
        };
        let mut response = error_response(status, code, self.message());
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
