//! REST, WebSocket and SSE API under `/api/v1`, plus `/healthz`, `/readyz` and `/metrics`.
//!
//! Every route is listed once in [`routes`]: the router is built from that list and the
//! OpenAPI document ([`openapi`]) is checked against it by a test. Errors are JSON
//! `{ "error": { "code", "message" } }` with stable codes ([`ApiError`]).

mod aas;
mod access;
mod alarms;
mod backup;
mod demos;
mod error;
mod games;
mod headers;
pub mod openapi;
mod ops;
mod scenarios;
mod session;
mod stream;
mod twins;
mod web;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, patch, post};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::watch;

pub use access::Caller;
pub use demos::SecurityCounters;
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use headers::CONTENT_SECURITY_POLICY;
pub use stream::{CLOSE_SESSION_ENDED, WS_MAX_MESSAGE};

use crate::auth::Auth;
use crate::stats::HubStats;
use crate::store::TwinStore;
use crate::twin::{TwinKey, TwinRegistry};

/// Largest request body accepted, bytes.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Sends Sparkplug commands on the hub's broker connection.
#[derive(Debug, Clone)]
pub struct Commands {
    client: AsyncClient,
}

impl Commands {
    /// Commands through this client.
    pub fn new(client: AsyncClient) -> Self {
        Self { client }
    }

    /// Publishes a DCMD with these metric values to the machine through its gateway.
    pub fn device_command(
        &self,
        key: &TwinKey,
        gateway: &protocol::GatewayId,
        values: &[(String, f64)],
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let (topic, payload) = crate::host::device_command(key, gateway, values, now_ms);
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|err| ApiError::CommandNotSent(format!("cannot send the DCMD: {err}")))
    }
}

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The twins.
    pub twins: Arc<TwinRegistry>,
    /// Counters.
    pub stats: Arc<HubStats>,
    /// Set once ingest is subscribed and the STATE is published.
    pub ready: watch::Receiver<bool>,
    /// More counters for `/metrics`.
    pub extra_metrics: Option<crate::MetricsSource>,
    /// Users and tokens.
    pub auth: Arc<Auth>,
    /// The embedded store (history queries).
    pub store: Arc<TwinStore>,
    /// History older than the embedded retention, when a long-term store is configured.
    pub long_term: Option<Arc<crate::history::long_term::LongTermReader>>,
    /// A replica's history: the region's, in the shared store, instead of the embedded one.
    pub shared_history: Option<Arc<crate::replica::SharedHistory>>,
    /// A replica's way to the owners of the twins it mirrors, for operators' changes.
    pub forwarder: Option<Arc<crate::replica::requests::Forwarder>>,
    /// Device commands.
    pub commands: Commands,
    /// Scenario control of simulated machines (the demo), if any.
    pub scenarios: Option<Arc<dyn crate::scenarios::ScenarioControl>>,
    /// Innovation games.
    pub games: Arc<crate::games::Games>,
    /// Guided demonstrations.
    pub playbooks: Arc<crate::playbooks::Playbooks>,
    /// The refusal counters the security panel shows.
    pub security: SecuritySource,
}

/// Reads the hub's refusal counters (the broker's live in the broker, when it is embedded).
#[derive(Clone)]
pub struct SecuritySource(pub Arc<dyn Fn() -> SecurityCounters + Send + Sync>);

impl std::fmt::Debug for SecuritySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecuritySource(..)")
    }
}

/// One route: method, path (axum syntax, also the OpenAPI path) and handler.
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path.
    pub path: &'static str,
    /// Whether the OpenAPI document describes it (the page, probes and metrics are not API).
    pub documented: bool,
    handler: MethodRouter<AppState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

fn api(method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Route {
    Route {
        method,
        path,
        documented: true,
        handler,
    }
}

fn plain(path: &'static str, handler: MethodRouter<AppState>) -> Route {
    Route {
        method: Method::GET,
        path,
        documented: false,
        handler,
    }
}

/// Every route of the hub.
pub fn routes() -> Vec<Route> {
    vec![
        plain("/", get(web::page)),
        plain("/machine/{lab}/{machine}", get(web::page)),
        plain("/machine/{lab}/{machine}/protocol", get(web::page)),
        plain("/screen", get(web::page)),
        plain("/login", get(web::page)),
        plain("/games", get(web::page)),
        plain("/guide", get(web::page)),
        plain("/team", get(web::page)),
        plain("/leaderboard/{game}", get(web::page)),
        plain("/assets/{file}", get(web::asset)),
        plain("/api/docs", get(openapi::docs_page)),
        plain("/healthz", get(ops::healthz)),
        plain("/readyz", get(ops::readyz)),
        plain("/metrics", get(ops::metrics)),
        api(Method::GET, "/api/v1/openapi.json", get(openapi::document)),
        api(Method::POST, "/api/v1/auth/login", post(session::login)),
        api(Method::POST, "/api/v1/auth/logout", post(session::logout)),
        api(Method::GET, "/api/v1/auth/me", get(session::me)),
        api(Method::GET, "/api/v1/labs", get(twins::list_labs)),
        api(Method::GET, "/api/v1/catalogue", get(twins::list_kinds)),
        api(
            Method::GET,
            "/api/v1/catalogue/{kind}",
            get(twins::get_kind),
        ),
        api(Method::GET, "/api/v1/twins", get(twins::list_twins)),
        api(
            Method::GET,
            "/api/v1/twins/{lab}/{machine}",
            get(twins::get_twin),
        ),
        api(
            Method::DELETE,
            "/api/v1/twins/{lab}/{machine}",
            delete(twins::retire_twin),
        ),
        api(
            Method::GET,
            "/api/v1/twins/{lab}/{machine}/history",
            get(twins::history),
        ),
        api(
            Method::GET,
            "/api/v1/twins/{lab}/{machine}/sparkplug",
            get(twins::sparkplug),
        ),
        api(
            Method::PATCH,
            "/api/v1/twins/{lab}/{machine}/desired",
            patch(twins::write_desired),
        ),
        api(Method::GET, "/api/v1/alarms", get(alarms::list_alarms)),
        api(
            Method::GET,
            "/api/v1/alarms/{lab}/{machine}/{rule}/{n}",
            get(alarms::get_alarm),
        ),
        api(
            Method::POST,
            "/api/v1/alarms/{lab}/{machine}/{rule}/{n}/ack",
            post(alarms::acknowledge),
        ),
        api(Method::GET, "/api/v1/scenarios", get(scenarios::list)),
        api(
            Method::POST,
            "/api/v1/twins/{lab}/{machine}/scenario",
            post(scenarios::start),
        ),
        api(
            Method::DELETE,
            "/api/v1/twins/{lab}/{machine}/scenario",
            delete(scenarios::stop),
        ),
        api(Method::GET, "/api/v1/aas/shells", get(aas::list_shells)),
        api(
            Method::GET,
            "/api/v1/aas/shells/{aasIdentifier}",
            get(aas::get_shell),
        ),
        api(
            Method::GET,
            "/api/v1/aas/shells/{aasIdentifier}/submodel-refs",
            get(aas::submodel_refs),
        ),
        api(
            Method::GET,
            "/api/v1/aas/shells/{aasIdentifier}/aasx",
            get(aas::aasx),
        ),
        api(
            Method::GET,
            "/api/v1/aas/submodels",
            get(aas::list_submodels),
        ),
        api(
            Method::GET,
            "/api/v1/aas/submodels/{submodelIdentifier}",
            get(aas::get_submodel),
        ),
        api(
            Method::GET,
            "/api/v1/aas/submodels/{submodelIdentifier}/$value",
            get(aas::submodel_value),
        ),
        api(
            Method::GET,
            "/api/v1/aas/submodels/{submodelIdentifier}/submodel-elements",
            get(aas::submodel_elements),
        ),
        api(
            Method::GET,
            "/api/v1/games/templates",
            get(games::templates),
        ),
        api(Method::GET, "/api/v1/games", get(games::list)),
        api(Method::POST, "/api/v1/games", post(games::create)),
        api(Method::POST, "/api/v1/games/join", post(games::join)),
        api(Method::GET, "/api/v1/games/{game}", get(games::get)),
        api(
            Method::POST,
            "/api/v1/games/{game}/start",
            post(games::start),
        ),
        api(
            Method::POST,
            "/api/v1/games/{game}/pause",
            post(games::pause),
        ),
        api(
            Method::POST,
            "/api/v1/games/{game}/resume",
            post(games::resume),
        ),
        api(Method::POST, "/api/v1/games/{game}/end", post(games::end)),
        api(
            Method::GET,
            "/api/v1/games/{game}/leaderboard",
            get(games::leaderboard),
        ),
        api(
            Method::GET,
            "/api/v1/games/{game}/results.csv",
            get(games::results_csv),
        ),
        api(Method::GET, "/api/v1/team", get(games::team)),
        api(Method::POST, "/api/v1/team/answers", post(games::answer)),
        api(Method::POST, "/api/v1/team/hints", post(games::hint)),
        api(Method::GET, "/api/v1/playbooks", get(demos::list)),
        api(Method::GET, "/api/v1/playbooks/run", get(demos::current)),
        api(Method::POST, "/api/v1/playbooks/run", post(demos::start)),
        api(
            Method::DELETE,
            "/api/v1/playbooks/run",
            delete(demos::reset),
        ),
        api(
            Method::POST,
            "/api/v1/playbooks/run/next",
            post(demos::next),
        ),
        api(Method::GET, "/api/v1/security", get(demos::security)),
        api(Method::GET, "/api/v1/admin/backup", get(backup::backup)),
        api(Method::GET, "/api/v1/lines", get(demos::lines)),
        api(Method::GET, "/api/v1/stream", get(stream::websocket)),
        api(
            Method::GET,
            "/api/v1/events",
            get(stream::server_sent_events),
        ),
    ]
}

/// The hub's HTTP routes.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    // Axum merges methods of the same path only when they are given together.
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for route in routes() {
        match by_path.iter_mut().find(|(path, _)| *path == route.path) {
            Some((_, handler)) => *handler = std::mem::take(handler).merge(route.handler),
            None => by_path.push((route.path, route.handler)),
        }
    }
    for (path, handler) in by_path {
        router = router.route(path, handler);
    }
    router
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(headers::harden))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use axum::http::StatusCode;

    use super::*;
    use crate::twin::TwinUpdate;

    fn state() -> AppState {
        let stats = Arc::new(HubStats::default());
        let twins = Arc::new(TwinRegistry::new(stats.clone(), Arc::default()));
        twins.apply(TwinUpdate::Birth {
            key: TwinKey {
                lab: "lab-a".parse().expect("valid"),
                machine: "mill-1".parse().expect("valid"),
            },
            boot: Some(1),
            node_seq: None,
            gateway: "gw-a".parse().expect("valid"),
            metrics: vec![],
            timestamp: 1,
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(TwinStore::open(dir.path()).expect("store"));
        // The database stays open after the directory's handle is gone; the OS cleans up.
        std::mem::forget(dir);
        let (client, _events) = AsyncClient::new(rumqttc::MqttOptions::new("t", "localhost", 1), 8);
        let auth = Arc::new(
            Auth::new(crate::auth::AuthConfig {
                public_labs: vec!["*".into()],
                ..crate::auth::AuthConfig::default()
            })
            .expect("auth"),
        );
        AppState {
            twins: twins.clone(),
            stats,
            ready: watch::channel(false).1,
            extra_metrics: None,
            games: Arc::new(
                crate::games::Games::open(auth.clone(), store.clone(), None).expect("games"),
            ),
            playbooks: Arc::new(crate::playbooks::Playbooks::new(
                None,
                twins,
                Arc::new(|| 0),
            )),
            security: SecuritySource(Arc::new(SecurityCounters::default)),
            auth,
            store,
            long_term: None,
            shared_history: None,
            forwarder: None,
            commands: Commands::new(client),
            scenarios: None,
        }
    }

    async fn get(uri: &str) -> (StatusCode, serde_json::Value) {
        let response = router(state())
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn a_twin_is_found_by_lab_and_machine() {
        let (status, body) = get("/api/v1/twins/lab-a/mill-1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["id"], "lab-a/mill-1");
        let (status, body) = get("/api/v1/twins?lab=lab-a").await;
        assert_eq!(
            (status, body.as_array().map(Vec::len)),
            (StatusCode::OK, Some(1))
        );
    }

    #[tokio::test]
    async fn an_alarm_number_that_is_not_a_number_is_a_json_not_found() {
        // Found by the rest_api fuzz target: axum's u64 path rejection answered in plain text.
        for uri in [
            "/api/v1/alarms/lab-a/mill-1/overheat/abc",
            "/api/v1/alarms/lab-a/mill-1/overheat/18446744073709551616",
        ] {
            let (status, body) = get(uri).await;
            assert_eq!(
                (status, &body["error"]["code"]),
                (StatusCode::NOT_FOUND, &"alarm_not_found".into()),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn bad_ids_and_missing_twins_are_json_errors_with_stable_codes() {
        let (status, body) = get("/api/v1/twins/Lab-A/mill-1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_id");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Lab-A"))
        );
        let (status, body) = get("/api/v1/twins/lab-a/ghost").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::NOT_FOUND, &"twin_not_found".into())
        );
        let (status, body) = get("/api/v1/nothing").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::NOT_FOUND, &"not_found".into())
        );
        let (status, body) = get("/readyz").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::SERVICE_UNAVAILABLE, &"not_ready".into())
        );
    }
}
