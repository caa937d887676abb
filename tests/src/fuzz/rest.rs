//! The hub's HTTP API: generated requests (method, path, query, credentials, body) through the
//! real axum router with `tower::ServiceExt::oneshot`, against one hub state that lives for the
//! whole fuzzing run.

use std::sync::{Arc, OnceLock};

use arbitrary::{Result, Unstructured};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use demolab_demo::scenarios::SimulatedScenarios;
use hub::api::{AppState, Commands, router};
use hub::auth::{Auth, AuthConfig, GameConfig, Role, UserConfig};
use hub::catalogue::Catalogue;
use hub::config::HubFile;
use hub::directory::Directory;
use hub::stats::HubStats;
use hub::store::TwinStore;
use hub::twin::{TwinKey, TwinRegistry, TwinUpdate};
use protocol::{MetricName, Unit};
use simulators::machines::MachineKind;
use tokio::sync::watch;
use tower::ServiceExt;

/// The password of every user of the fuzzed hub.
const PASSWORD: &str = "fuzz-password";

/// The hub state, its runtime, and a live token per role.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    state: AppState,
    /// The router over `state`, built once (building it per request would dominate a run).
    router: axum::Router,
    /// admin, operator, student; a fuzzed logout revokes one, so each is renewed when dead.
    tokens: std::sync::Mutex<Vec<String>>,
    /// Keeps the command channel open (nothing drains it: once full, writes answer 503).
    _events: std::sync::Mutex<rumqttc::EventLoop>,
    _data: tempfile::TempDir,
}

const LABS_TOML: &str = r#"
[[labs]]
id = "lab-a"
gateways = ["gw-a"]
machines = [{ id = "mill-1", kind = "cnc-mill" }]

[[labs]]
id = "lab-b"
"#;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let labs = HubFile::parse("fuzz-labs.toml".as_ref(), LABS_TOML).expect("valid labs");
        let directory =
            Directory::new(Catalogue::builtin(), labs.labs, labs.links).expect("a directory");
        let stats = Arc::new(HubStats::default());
        let twins = Arc::new(TwinRegistry::new(stats.clone(), Arc::new(directory)));
        let name = |n: &str| n.parse::<MetricName>().expect("valid metric name");
        for (lab, machine) in [("lab-a", "mill-1"), ("lab-b", "lathe-2")] {
            let key = TwinKey {
                lab: lab.parse().expect("valid lab"),
                machine: machine.parse().expect("valid machine"),
            };
            twins.apply(TwinUpdate::Birth {
                key: key.clone(),
                gateway: "gw-a".parse().expect("valid gateway"),
                boot: Some(1),
                node_seq: None,
                metrics: vec![
                    (name("spindle.power_w"), Unit::Watt),
                    (name("node.period_ms"), Unit::Dimensionless),
                ],
                timestamp: 1,
            });
            twins.apply(TwinUpdate::Sample {
                key,
                seq: 1,
                timestamp: 2,
                values: vec![(name("spindle.power_w"), 1200.0)],
                historical: false,
            });
        }
        let hash = crate::cheap_password_hash(PASSWORD).expect("a hash");
        let user = |name: &str, role, game: Option<&str>| UserConfig {
            name: name.into(),
            role,
            password_hash: hash.clone(),
            game: game.map(Into::into),
        };
        let auth = Auth::new(AuthConfig {
            // Every request here comes from one (unknown) address: with the default buckets the
            // fuzzed logins would soon refuse the fixture's own logins. The limiter has tests of
            // its own; here it must only never let a request through wrongly.
            login: hub::auth::LoginLimits {
                address_burst: 1_000_000,
                user_failures: 1_000_000,
                ..hub::auth::LoginLimits::default()
            },
            users: vec![
                user("admin", Role::Admin, None),
                user("operator", Role::Operator, None),
                user("teacher", Role::Teacher, None),
                user("student", Role::Student, Some("game-b")),
            ],
            games: vec![GameConfig {
                id: "game-b".into(),
                name: "Game B".into(),
                labs: vec!["lab-b".parse().expect("valid lab")],
            }],
            ..AuthConfig::default()
        })
        .expect("valid auth");
        let data = tempfile::tempdir().expect("a temp dir");
        let store = Arc::new(TwinStore::open(data.path()).expect("a store"));
        let (client, events) =
            rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("fuzz", "localhost", 1), 8);
        let mut scenarios = SimulatedScenarios::default();
        scenarios.add_machine(
            &TwinKey::parse("lab-a/mill-1").expect("valid key"),
            MachineKind::CncMill,
        );
        let auth = Arc::new(auth);
        let scenarios: Arc<dyn hub::scenarios::ScenarioControl> = Arc::new(scenarios);
        let games = Arc::new(
            hub::games::Games::open(auth.clone(), store.clone(), Some(scenarios.clone()))
                .expect("games"),
        );
        let playbooks = Arc::new(hub::playbooks::Playbooks::new(
            Some(scenarios.clone()),
            twins.clone(),
            Arc::new(|| 0),
        ));
        let state = AppState {
            playbooks,
            security: hub::api::SecuritySource(Arc::new(hub::api::SecurityCounters::default)),
            twins,
            stats,
            ready: watch::channel(true).1,
            extra_metrics: None,
            auth,
            store,
            long_term: None,
            shared_history: None,
            forwarder: None,
            commands: Commands::new(client),
            scenarios: Some(scenarios),
            games,
        };
        let router = router(state.clone());
        let tokens = USERS
            .iter()
            .map(|user| runtime.block_on(login(&router, user)))
            .collect();
        Fixture {
            runtime,
            state,
            router,
            tokens: std::sync::Mutex::new(tokens),
            _events: std::sync::Mutex::new(events),
            _data: data,
        }
    })
}

const USERS: [&str; 4] = ["admin", "operator", "teacher", "student"];

/// A token for `user`, through the login route.
async fn login(router: &axum::Router, user: &str) -> String {
    let body = serde_json::json!({ "user": user, "password": PASSWORD }).to_string();
    let request = Request::post("/api/v1/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a request");
    let (status, json) = send(router, request).await;
    assert_eq!(status, StatusCode::OK, "login of {user}: {json}");
    json["token"].as_str().expect("a token").to_owned()
}

/// The live tokens, renewing any a fuzzed logout revoked.
fn live_tokens(fixture: &Fixture) -> Vec<String> {
    let mut tokens = fixture.tokens.lock().expect("not poisoned");
    let now = hub::ingest::now_ms();
    for (token, user) in tokens.iter_mut().zip(USERS) {
        if fixture.state.auth.session(token, now).is_none() {
            *token = fixture.runtime.block_on(login(&fixture.router, user));
        }
    }
    tokens.clone()
}

async fn send(router: &axum::Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    // A HEAD response has the GET's headers and no body.
    let head = request.method() == axum::http::Method::HEAD;
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("a finite body");
    let json = if head {
        serde_json::Value::Null
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(&bytes).expect("a JSON content type has a JSON body")
    } else {
        serde_json::Value::Null
    };
    (status, json)
}

/// Percent-encodes everything but unreserved characters, so any string can be a path segment.
fn segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn pick(u: &mut Unstructured<'_>, known: &[&str]) -> Result<String> {
    if u.ratio(1, 6)? {
        return Ok(segment(u.arbitrary()?));
    }
    Ok((*u.choose(known)?).to_owned())
}

/// Path templates of the API; `{l}`, `{m}`, `{x}` become generated segments, `{a}` and `{s}` a
/// shell's and a submodel's base64url identifier (known ones, bent ones, or junk). The streams
/// (`/api/v1/stream`, `/api/v1/events`) are left out: they never end.
const PATHS: &[&str] = &[
    "/api/v1/auth/login",
    "/api/v1/auth/logout",
    "/api/v1/auth/me",
    "/api/v1/labs",
    "/api/v1/catalogue",
    "/api/v1/catalogue/{x}",
    "/api/v1/twins",
    "/api/v1/twins/{l}/{m}",
    "/api/v1/twins/{l}/{m}/history",
    "/api/v1/twins/{l}/{m}/sparkplug",
    "/api/v1/twins/{l}/{m}/desired",
    "/api/v1/twins/{l}/{m}/scenario",
    "/api/v1/alarms",
    "/api/v1/alarms/{l}/{m}/{x}/{x}",
    "/api/v1/alarms/{l}/{m}/{x}/{x}/ack",
    "/api/v1/scenarios",
    "/api/v1/aas/shells",
    "/api/v1/aas/shells/{a}",
    "/api/v1/aas/shells/{a}/submodel-refs",
    "/api/v1/aas/shells/{a}/aasx",
    "/api/v1/aas/submodels",
    "/api/v1/aas/submodels/{s}",
    "/api/v1/aas/submodels/{s}/$value",
    "/api/v1/aas/submodels/{s}/submodel-elements",
    "/api/v1/openapi.json",
    "/api/v1/games",
    "/api/v1/games/templates",
    "/api/v1/games/join",
    "/api/v1/games/{x}",
    "/api/v1/games/{x}/start",
    "/api/v1/games/{x}/pause",
    "/api/v1/games/{x}/resume",
    "/api/v1/games/{x}/end",
    "/api/v1/games/{x}/leaderboard",
    "/api/v1/games/{x}/results.csv",
    "/api/v1/team",
    "/api/v1/team/answers",
    "/api/v1/team/hints",
    "/api/v1/playbooks",
    "/api/v1/playbooks/run",
    "/api/v1/playbooks/run/next",
    "/api/v1/security",
    "/api/v1/lines",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// JSON bodies the handlers take, as starting points for mutation.
const BODIES: &[&str] = &[
    r#"{"user":"operator","password":"fuzz-password"}"#,
    r#"{"user":"admin","password":"wrong"}"#,
    r#"{"node.period_ms":500}"#,
    r#"{"node.period_ms":1e308,"spindle.power_w":-1}"#,
    r#"{"scenario":"tool-wear"}"#,
    r#"{"template":"predictive-maintenance","duration_min":1,"speed":30}"#,
    r#"{"template":"energy-waste","labs":["lab-b"],"duration_min":1e308}"#,
    r#"{"code":"ABCDEF","team":"Fuzzers"}"#,
    r#"{"playbook":"predictive-maintenance","twin":"lab-a/mill-1"}"#,
    r#"{"playbook":"cybersecurity"}"#,
    r#"{"challenge":"when","value":1e308}"#,
    r#"{"challenge":"which-machine","value":"lab-a/mill-1"}"#,
    r#"{}"#,
];

fn request(u: &mut Unstructured<'_>, tokens: &[String]) -> Result<Option<Request<Body>>> {
    let method = *u.choose(&["GET", "POST", "PATCH", "DELETE", "PUT", "HEAD"])?;
    let mut path = if u.ratio(1, 16)? {
        u.arbitrary::<String>()?
    } else {
        let mut path = (*u.choose(PATHS)?).to_owned();
        let shells: Vec<String> = [
            "urn:demolab:aas:lab-a:mill-1",
            "urn:demolab:aas:lab-b:lathe-2",
            "urn:demolab:aas:lab-a",
            "urn:demolab:sm:lab-a:mill-1:Nameplate",
        ]
        .iter()
        .map(|id| hub::aas::encode_identifier(id))
        .collect();
        let submodels: Vec<String> = [
            "urn:demolab:sm:lab-a:mill-1:Nameplate",
            "urn:demolab:sm:lab-a:mill-1:OperationalData",
            "urn:demolab:sm:lab-b:lathe-2:TimeSeries",
            "urn:demolab:sm:lab-a:mill-1:Nope",
            "urn:demolab:aas:lab-a:mill-1",
        ]
        .iter()
        .map(|id| hub::aas::encode_identifier(id))
        .collect();
        let shells: Vec<&str> = shells.iter().map(String::as_str).collect();
        let submodels: Vec<&str> = submodels.iter().map(String::as_str).collect();
        for (hole, known) in [
            ("{a}", &shells[..]),
            ("{s}", &submodels[..]),
            ("{l}", &["lab-a", "lab-b", "Lab-A"][..]),
            ("{m}", &["mill-1", "lathe-2", "ghost"][..]),
            (
                "{x}",
                &["0", "1", "spindle-overload", "18446744073709551616"][..],
            ),
        ] {
            while path.contains(hole) {
                path = path.replacen(hole, &pick(u, known)?, 1);
            }
        }
        path
    };
    if u.ratio(1, 3)? {
        let query = match u.int_in_range(0..=3u8)? {
            0 => format!("lab={}", pick(u, &["lab-a", "lab-b", ""])?),
            3 => format!(
                "limit={}&cursor={}",
                pick(u, &["1", "0", "-1", "18446744073709551616"])?,
                pick(u, &["1", "0", "999", "Zm9v"])?,
            ),
            1 => format!(
                "metric={}&from={}&to={}&step={}",
                pick(u, &["spindle.power_w", "x"])?,
                pick(u, &["0", "-1", "now-1h"])?,
                pick(u, &["9999999999999", "0"])?,
                pick(u, &["1s", "0s", "1000000h"])?,
            ),
            _ => u.arbitrary::<String>()?,
        };
        path.push('?');
        path.push_str(&query);
    }
    let mut builder = Request::builder().method(method).uri(path);
    match u.int_in_range(0..=4u8)? {
        0 => {}
        1 => builder = builder.header(header::AUTHORIZATION, u.arbitrary::<String>()?),
        _ => {
            let token = u.choose(tokens)?;
            let scheme = *u.choose(&["Bearer", "bearer", "BEARER", "Basic"])?;
            builder = builder.header(header::AUTHORIZATION, format!("{scheme} {token}"));
        }
    }
    if u.ratio(7, 8)? {
        let content_type = pick(u, &["application/json", "application/json; charset=utf-8"])?;
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    let body: Vec<u8> = if u.ratio(1, 2)? {
        u.choose(BODIES)?.as_bytes().to_vec()
    } else {
        u.arbitrary()?
    };
    // Headers and URIs the HTTP layer itself would refuse never reach the router.
    Ok(builder.body(Body::from(body)).ok())
}

/// The hub's HTTP API. Checks: no panic, no 500, and every error (4xx/5xx) is a JSON body with an
/// `error.code`.
pub fn rest_api(data: &[u8]) {
    let fixture = fixture();
    let mut u = Unstructured::new(data);
    let tokens = live_tokens(fixture);
    let Ok(Some(request)) = request(&mut u, &tokens) else {
        return;
    };
    let path = request.uri().path();
    if path.contains("/api/v1/events") || path.contains("/api/v1/stream") {
        // Live streams never end; their handshake is not a body parser.
        return;
    }
    let what = format!("{} {}", request.method(), request.uri());
    let (status, json) = fixture.runtime.block_on(send(&fixture.router, request));
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {json}");
    if (status.is_client_error() || status.is_server_error()) && !what.starts_with("HEAD ") {
        assert!(
            json["error"]["code"].is_string(),
            "{what}: {status} without a JSON error code: {json}"
        );
    }
}
