//! Who is calling: the bearer token (header, or `?token=` for browser streams, which cannot set
//! headers), checked against the hub's sessions.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use protocol::LabId;

use super::{ApiError, AppState};
use crate::auth::{Principal, Role};
use crate::ingest::now_ms;

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Refuses callers below `role`.
    pub fn require(&self, role: Role) -> Result<&Principal, ApiError> {
        match self.0.role {
            None => Err(ApiError::Unauthenticated),
            Some(own) if own >= role => Ok(&self.0),
            Some(own) => Err(ApiError::Forbidden(format!(
                "this needs the {role:?} role; {} is {own:?}",
                self.0.user
            ))),
        }
    }

    /// Refuses callers who may not read `lab`.
    pub fn require_lab(&self, lab: &LabId) -> Result<(), ApiError> {
        if self.0.can_read(lab) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{} may not read lab {lab}",
                self.0.user
            )))
        }
    }
}

/// The token of a request, if it has one.
pub fn bearer_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value
            .strip_prefix("Bearer ")
            .map(|token| token.trim().to_owned());
    }
    parts.uri.query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(str::to_owned)
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer_token(parts) {
            Some(token) => state
                .auth
                .session(&token, now_ms())
                .map(Caller)
                .ok_or(ApiError::InvalidToken),
            None if parts.headers.contains_key(header::AUTHORIZATION) => {
                Err(ApiError::InvalidToken)
            }
            None if state.auth.anonymous_read() => Ok(Caller(Principal::anonymous())),
            None => Err(ApiError::Unauthenticated),
        }
    }
}
