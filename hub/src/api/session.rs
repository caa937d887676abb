//! Logging in and out.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::request::Parts;
use serde::Deserialize;

use super::access::bearer_token;
use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::{Login, Principal};
use crate::ingest::now_ms;

/// User name and password.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Log in: a bearer token for the user's role.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = Login),
        (status = 400, description = "`bad_body`", body = ErrorBody),
        (status = 401, description = "`bad_credentials`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Json<Login>, ApiError> {
    let Json(credentials) = body?;
    let auth = state.auth.clone();
    // Argon2 is deliberately slow: keep it off the async workers.
    let login = tokio::task::spawn_blocking(move || {
        auth.login(&credentials.user, &credentials.password, now_ms())
    })
    .await
    .map_err(|err| ApiError::Storage(err.to_string()))?;
    login.map(Json).map_err(|_| ApiError::BadCredentials)
}

/// Log out: the token stops working.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "Logged out"), (status = 401, description = "`invalid_token`", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn logout(
    State(state): State<AppState>,
    _caller: Caller,
    parts: Parts,
) -> axum::http::StatusCode {
    if let Some(token) = bearer_token(&parts) {
        state.auth.logout(&token);
    }
    axum::http::StatusCode::NO_CONTENT
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, description = "The caller", body = Principal), (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn me(caller: Caller) -> Json<Principal> {
    Json(caller.0)
}
