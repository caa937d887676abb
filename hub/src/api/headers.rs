//! One layer over every response: security headers for the pages and the API, `no-store` for
//! API answers (they carry tokens and live data), and a JSON error body for the errors that
//! axum's own extractors produce as plain text, so that every error has a stable code.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::error::error_response;

/// The pages are self-contained: scripts, styles, images and the stream all come from the hub.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'none'; \
     object-src 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds the headers and turns plain-text errors into JSON ones.
pub(super) async fn harden(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/v1/");
    let response = next.run(request).await;
    let mut response = if response.status().is_client_error() || response.status().is_server_error()
    {
        as_json_error(response).await
    } else {
        response
    };
    secure(response.headers_mut(), api);
    response
}

fn secure(headers: &mut HeaderMap, api: bool) {
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    for (name, value) in set {
        headers.insert(name, value);
    }
    if api && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Stable codes for the statuses axum answers by itself.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Longest plain-text message carried over into the JSON error, characters.
const MESSAGE_LIMIT: usize = 300;

async fn as_json_error(response: Response) -> Response {
    if is_json(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
        .map(|text| text.trim().chars().take(MESSAGE_LIMIT).collect::<String>())
        .filter(|text| !text.is_empty());
    let message = text.unwrap_or_else(|| {
        parts
            .status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned()
    });
    let mut json = error_response(parts.status, code_for(parts.status), message);
    // Keep what the original answer said about retrying or allowed methods.
    for name in [header::RETRY_AFTER, header::ALLOW] {
        if let Some(value) = parts.headers.get(&name) {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn call(router: Router, uri: &str) -> Response {
        router
            .layer(axum::middleware::from_fn(harden))
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("infallible")
    }

    #[tokio::test]
    async fn plain_text_rejections_become_json_errors_with_a_code() {
        let router = Router::new().route(
            "/api/v1/n/{n}",
            get(|axum::extract::Path(n): axum::extract::Path<u64>| async move { n.to_string() }),
        );
        let response = call(router, "/api/v1/n/seven").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(doc["error"]["code"], "bad_request");
        assert!(
            doc["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("parse")),
            "{doc}"
        );
    }

    #[tokio::test]
    async fn a_path_segment_that_is_not_utf8_is_a_json_error() {
        // The twin routes take `Path<(String, String)>`; axum refuses a percent-escape that
        // decodes to invalid UTF-8 before the handler runs, in plain text.
        let router = Router::new().route(
            "/api/v1/twins/{lab}/{machine}",
            get(
                |axum::extract::Path((lab, machine)): axum::extract::Path<(String, String)>| async move {
                    format!("{lab}/{machine}")
                },
            ),
        );
        let response = call(router, "/api/v1/twins/%FF%FE/mill-1").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(doc["error"]["code"], "bad_request", "{doc}");
    }

    #[tokio::test]
    async fn pages_get_the_security_headers_and_keep_their_caching() {
        let router = Router::new().route("/", get(|| async { "page" }));
        let response = call(router, "/").await;
        let headers = response.headers();
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|csp| csp.starts_with("default-src 'self'"))
        );
        assert!(!headers.contains_key(header::CACHE_CONTROL));
    }
}
