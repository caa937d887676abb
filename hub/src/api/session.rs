//! Logging in and out.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::request::Parts;
use serde::Deserialize;

use super::access::{bearer_token, client_of};
use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::{AuthError, Login, Principal};
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

/// Log in: a bearer token for the user's role. Attempts are limited per client address and,
/// for failures, per address and user name; password checks run a few at a time.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = Login),
        (status = 400, description = "`bad_body`", body = ErrorBody),
        (status = 401, description = "`bad_credentials`", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (see `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`login_busy`, `sessions_unavailable` (see `Retry-After`)", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Json<Login>, ApiError> {
    let Json(credentials) = body?;
    let client = client_of(&parts, &state);
    state
        .auth
        .login(client, &credentials.user, credentials.password, now_ms())
        .await
        .map(Json)
        .map_err(|err| match err {
            AuthError::RateLimited(limited) => ApiError::RateLimited {
                retry_after_s: limited.retry_after_s,
            },
            AuthError::Busy => ApiError::LoginBusy,
            AuthError::Shared(_) => ApiError::SessionsUnavailable,
            _ => ApiError::BadCredentials,
        })
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
        state.auth.logout(&token).await;
    }
    axum::http::StatusCode::NO_CONTENT
}

/// Who the token belongs to (`401 unauthenticated` without one).
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, description = "The caller", body = Principal), (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn me(caller: Caller) -> Result<Json<Principal>, ApiError> {
    if caller.0.role.is_none() {
        return Err(ApiError::Unauthenticated);
    }
    Ok(Json(caller.0))
}
