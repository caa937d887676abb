//! Who is calling: the bearer token (header, or `?token=` for browser streams, which cannot set
//! headers), checked against the hub's sessions; and from which address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use protocol::LabId;

use super::{ApiError, AppState};
use crate::auth::{Lifetime, Principal, Role, client_address};
use crate::ingest::now_ms;

/// The caller of a request, and for a token the lifetime its streams end with.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal, pub Option<Lifetime>);

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
        } else if self.0.role.is_none() {
            // Without a token only public labs are open: logging in may help.
            Err(ApiError::Unauthenticated)
        } else {
            Err(ApiError::Forbidden(format!(
                "{} may not read lab {lab}",
                self.0.user
            )))
        }
    }
}

/// The token of a request, if it has one. The scheme is case-insensitive (RFC 7235); `?token=`
/// is for the streams only, where browsers cannot set headers, so that tokens do not end up in
/// the URLs (and logs) of ordinary requests.
pub fn bearer_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?.trim_start();
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
            .filter(|token| !token.is_empty());
    }
    if !STREAM_PATHS.contains(&parts.uri.path()) {
        return None;
    }
    parts.uri.query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(str::to_owned)
    })
}

const STREAM_PATHS: [&str; 2] = ["/api/v1/stream", "/api/v1/events"];

/// The client's address: the peer, or behind a trusted proxy the address it forwarded for. A
/// server run without connection info (tests through `oneshot`) counts as one unknown client.
pub fn client_of(parts: &Parts, state: &AppState) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    let forwarded = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    client_address(peer, forwarded, &state.auth.config().trusted_proxies)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer_token(parts) {
            Some(token) => match state.auth.resolve(&token, now_ms()).await {
                Ok(Some((principal, lifetime))) => Ok(Caller(principal, Some(lifetime))),
                Ok(None) => Err(ApiError::InvalidToken),
                Err(_) => Err(ApiError::SessionsUnavailable),
            },
            None if parts.headers.contains_key(header::AUTHORIZATION) => {
                Err(ApiError::InvalidToken)
            }
            None => state
                .auth
                .anonymous()
                .map(|principal| Caller(principal, None))
                .ok_or(ApiError::Unauthenticated),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts(uri: &str, authorization: Option<&str>) -> Parts {
        let mut request = Request::get(uri);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.body(()).expect("request").into_parts().0
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc ", "BeArEr abc"] {
            assert_eq!(
                bearer_token(&parts("/api/v1/twins", Some(value))).as_deref(),
                Some("abc"),
                "{value:?}"
            );
        }
        assert_eq!(bearer_token(&parts("/", Some("Basic abc"))), None);
        assert_eq!(bearer_token(&parts("/", Some("Bearer "))), None);
    }

    #[test]
    fn a_query_token_counts_on_the_streams_only() {
        assert_eq!(
            bearer_token(&parts("/api/v1/events?lab=a&token=abc", None)).as_deref(),
            Some("abc")
        );
        assert_eq!(bearer_token(&parts("/api/v1/twins?token=abc", None)), None);
    }
}
