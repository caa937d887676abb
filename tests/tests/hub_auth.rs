//! The hub's API under attack, through its real HTTP server: login rate limits per client
//! address (real source addresses on 127.0.0.0/8, and `X-Forwarded-For` from a trusted proxy)
//! that never lock a real user out, unknown names as slow as known ones, lab scopes on every
//! endpoint and stream, streams that end with their token, WebSocket origin and size limits,
//! security headers, and JSON errors everywhere.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use demolab_tests::{
    burst_node, cheap_password_hash, gateway_config, hub_config, start_gateway_with,
    start_hub_with, wait_until, within,
};
use futures_util::{SinkExt, StreamExt};
use hub::auth::{AuthConfig, GameConfig, LoginLimits, Role, UserConfig, hash_password};
use hub::twin::TwinKey;
use hub::{Hub, HubConfig};
use protocol::NodeId;
use simulators::node::run_mqtt_node;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn user(name: &str, role: Role, game: Option<&str>, hash: String) -> UserConfig {
    UserConfig {
        name: name.into(),
        role,
        password_hash: hash,
        game: game.map(str::to_owned),
    }
}

/// Operator `olga`, students `sam` (game g1: lab-a) and `bo` (game g2: lab-b); `lab-p` is
/// public. Passwords are `{name}-secret`.
fn auth_config() -> anyhow::Result<AuthConfig> {
    let hash = |name: &str| cheap_password_hash(&format!("{name}-secret"));
    Ok(AuthConfig {
        public_labs: vec!["lab-p".into()],
        token_ttl_s: 3600,
        trusted_proxies: vec!["127.0.0.1".parse().map_err(anyhow::Error::msg)?],
        users: vec![
            user("olga", Role::Operator, None, hash("olga")?),
            user("sam", Role::Student, Some("g1"), hash("sam")?),
            user("bo", Role::Student, Some("g2"), hash("bo")?),
        ],
        games: vec![
            GameConfig {
                id: "g1".into(),
                name: "Game one".into(),
                labs: vec!["lab-a".parse()?],
            },
            GameConfig {
                id: "g2".into(),
                name: "Game two".into(),
                labs: vec!["lab-b".parse()?],
            },
        ],
        ..AuthConfig::default()
    })
}

async fn start(data: &std::path::Path, auth: AuthConfig) -> anyhow::Result<Hub> {
    start_hub_with(HubConfig {
        auth,
        ..hub_config(data)
    })
    .await
}

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A request from the local address `from` (any of 127.0.0.0/8 works on Linux loopback).
async fn request(
    from: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json_body: Option<&[u8]>,
) -> anyhow::Result<Answer> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut stream = socket.connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = json_body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(json_body.unwrap_or_default()).await?;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("status")?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    anyhow::ensure!(
        !headers.contains_key("transfer-encoding"),
        "chunked answers are not expected here: {head}"
    );
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<Answer> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    request(ip("127.0.0.1"), addr, "GET", path, &headers, None).await
}

async fn login_from(
    from: IpAddr,
    addr: SocketAddr,
    name: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let body = serde_json::json!({"user": name, "password": password}).to_string();
    request(
        from,
        addr,
        "POST",
        "/api/v1/auth/login",
        headers,
        Some(body.as_bytes()),
    )
    .await
}

async fn login(addr: SocketAddr, name: &str) -> anyhow::Result<String> {
    let answer = login_from(ip("127.0.0.1"), addr, name, &format!("{name}-secret"), &[]).await?;
    anyhow::ensure!(answer.status == 200, "login {name}: {answer:?}");
    Ok(answer.json()["token"].as_str().context("token")?.to_owned())
}

async fn metric(addr: SocketAddr, series: &str) -> anyhow::Result<u64> {
    let answer = get(addr, "/metrics", None).await?;
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {series} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_limited_per_address_and_never_lock_the_real_user_out() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    // Refills far slower than the test runs, so that every count below is exact.
    let mut auth = auth_config()?;
    auth.login = LoginLimits {
        address_refill_ms: 600_000,
        user_refill_ms: 120_000,
        ..LoginLimits::default()
    };
    let hub = start(data.path(), auth).await?;
    let addr = hub.http_addr();
    let attacker = ip("127.0.0.66");

    // Five wrong guesses for olga, then the attacker's address is refused for that name only.
    for _ in 0..5 {
        let answer = login_from(attacker, addr, "olga", "guess", &[]).await?;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "bad_credentials".into())
        );
    }
    let refused = login_from(attacker, addr, "olga", "olga-secret", &[]).await?;
    assert_eq!(
        (refused.status, refused.code()),
        (429, "rate_limited".into())
    );
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|s| s.parse().ok())
        .context("Retry-After")?;
    assert!((1..=120).contains(&retry), "{retry}");
    // Olga from her own machine is not locked out.
    let real = login_from(ip("127.0.0.7"), addr, "olga", "olga-secret", &[]).await?;
    assert_eq!(real.status, 200, "{real:?}");
    assert_eq!(real.header("cache-control"), Some("no-store"));

    // A spoofed X-Forwarded-For from an untrusted address changes nothing.
    let spoofed = login_from(
        attacker,
        addr,
        "olga",
        "olga-secret",
        &[("X-Forwarded-For", "10.9.9.9")],
    )
    .await?;
    assert_eq!(spoofed.status, 429);
    // Behind the trusted proxy (127.0.0.1) each forwarded client has its own limits.
    let proxy = ip("127.0.0.1");
    for _ in 0..5 {
        let answer = login_from(
            proxy,
            addr,
            "sam",
            "guess",
            &[("X-Forwarded-For", "10.1.1.1")],
        )
        .await?;
        assert_eq!(answer.status, 401);
    }
    let blocked = login_from(
        proxy,
        addr,
        "sam",
        "sam-secret",
        &[("X-Forwarded-For", "10.1.1.1")],
    )
    .await?;
    assert_eq!(blocked.status, 429);
    let other = login_from(
        proxy,
        addr,
        "sam",
        "sam-secret",
        &[("X-Forwarded-For", "10.1.1.2")],
    )
    .await?;
    assert_eq!(other.status, 200, "{other:?}");

    // The attacker's address runs out of attempts altogether (burst 20, 5 used: refusals
    // before a password check cost nothing).
    let mut statuses = Vec::new();
    for i in 0..17 {
        let answer = login_from(attacker, addr, &format!("user-{i}"), "x", &[]).await?;
        statuses.push(answer.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 15);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2);

    let refused = "demolab_hub_login_refused_total";
    assert_eq!(
        metric(addr, &format!("{refused}{{reason=\"rate_limited_user\"}}")).await?,
        3
    );
    assert_eq!(
        metric(
            addr,
            &format!("{refused}{{reason=\"rate_limited_address\"}}")
        )
        .await?,
        2
    );
    assert_eq!(
        metric(addr, &format!("{refused}{{reason=\"bad_credentials\"}}")).await?,
        5 + 5 + 15
    );
    assert_eq!(metric(addr, "demolab_hub_logins_total").await?, 2);
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_name_answers_as_slowly_as_a_wrong_password() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    // argon2's recommended parameters, as `demolab-hub hash-password` writes them.
    let auth = AuthConfig {
        users: vec![user(
            "olga",
            Role::Operator,
            None,
            hash_password("olga-secret")?,
        )],
        ..AuthConfig::default()
    };
    let hub = start(data.path(), auth).await?;
    let addr = hub.http_addr();
    // Interleaved, and the fastest of each kept: other work on a shared machine only ever adds
    // time, so the minimum is the cost of the check itself.
    let mut known = Duration::MAX;
    let mut unknown = Duration::MAX;
    for _ in 0..5 {
        for (name, from, fastest) in [
            ("olga", "127.0.0.21", &mut known),
            ("nobody", "127.0.0.22", &mut unknown),
        ] {
            let started = Instant::now();
            let answer = login_from(ip(from), addr, name, "wrong", &[]).await?;
            *fastest = (*fastest).min(started.elapsed());
            anyhow::ensure!(answer.code() == "bad_credentials", "{answer:?}");
        }
    }
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "known {known:?}, unknown {unknown:?}"
    );
    hub.shutdown().await?;
    Ok(())
}

/// Reads server-sent events until `event: end`, returning the change events before it and the
/// end's reason.
async fn read_until_end(
    stream: tokio::net::TcpStream,
) -> anyhow::Result<(Vec<serde_json::Value>, String)> {
    let mut lines = BufReader::new(stream).lines();
    let mut kind = String::new();
    let mut changes = Vec::new();
    while let Some(line) = lines.next_line().await? {
        if let Some(name) = line.strip_prefix("event: ") {
            kind = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            let doc: serde_json::Value = serde_json::from_str(data)?;
            match kind.as_str() {
                "end" => return Ok((changes, doc["reason"].as_str().unwrap_or("").to_owned())),
                "change" => changes.push(doc),
                _ => {}
            }
        }
    }
    anyhow::bail!("the stream closed without an end event")
}

async fn open_events(addr: SocketAddr, query: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET /api/v1/events?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_socket(
    addr: SocketAddr,
    query: &str,
    origin: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let mut request = format!("ws://{addr}/api/v1/stream?{query}").into_client_request()?;
    if let Some(origin) = origin {
        request.headers_mut().insert(
            "Origin",
            tungstenite::http::HeaderValue::from_str(origin)
                .map_err(|err| tungstenite::Error::HttpFormat(err.into()))?,
        );
    }
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

/// Reads until the server's close frame; its code and reason.
async fn close_of(socket: &mut Socket) -> anyhow::Result<(CloseCode, String)> {
    while let Some(message) = socket.next().await {
        if let Message::Close(frame) = message? {
            let frame = frame.context("a close frame with a reason")?;
            return Ok((frame.code, frame.reason.to_string()));
        }
    }
    anyhow::bail!("the socket ended without a close frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_their_token_is_logged_out_or_expires() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start(
        data.path(),
        AuthConfig {
            token_ttl_s: 2,
            ..auth_config()?
        },
    )
    .await?;
    let addr = hub.http_addr();
    // Both tokens expire no earlier than two seconds after this.
    let expires = Instant::now() + Duration::from_secs(2);
    let leaving = login(addr, "olga").await?;
    let staying = login(addr, "olga").await?;

    let mut ws_leaving = open_socket(addr, &format!("token={leaving}"), None).await?;
    let mut ws_staying = open_socket(addr, &format!("token={staying}"), None).await?;
    let sse_leaving = open_events(addr, &format!("token={leaving}")).await?;
    let sse_staying = open_events(addr, &format!("token={staying}")).await?;
    wait_until(Duration::from_secs(5), "four stream clients", || {
        hub.stats()
            .render(0, 0)
            .contains("demolab_hub_stream_clients 4")
    })
    .await?;

    // A logout ends its token's streams at once, and leaves the other token's alone.
    let answer = request(
        ip("127.0.0.1"),
        addr,
        "POST",
        "/api/v1/auth/logout",
        &[("authorization", &format!("bearer {leaving}"))],
        None,
    )
    .await?;
    assert_eq!(answer.status, 204);
    let (code, reason) = within(
        Duration::from_secs(1),
        "the logout close",
        close_of(&mut ws_leaving),
    )
    .await??;
    assert_eq!((u16::from(code), reason.as_str()), (4001, "logged_out"));
    let (_, reason) = within(
        Duration::from_secs(1),
        "the logout end event",
        read_until_end(sse_leaving),
    )
    .await??;
    assert_eq!(reason, "logged_out");
    assert!(
        Instant::now() < expires,
        "ended by the logout, not the expiry"
    );

    // The other token's streams end when it expires, not before.
    let (code, reason) = within(
        Duration::from_secs(5),
        "the expiry close",
        close_of(&mut ws_staying),
    )
    .await??;
    assert_eq!((u16::from(code), reason.as_str()), (4001, "token_expired"));
    assert!(Instant::now() >= expires, "not before the expiry");
    let (_, reason) = within(
        Duration::from_secs(2),
        "the expiry end event",
        read_until_end(sse_staying),
    )
    .await??;
    assert_eq!(reason, "token_expired");
    let expired = get(addr, "/api/v1/auth/me", Some(&staying)).await?;
    assert_eq!(
        (expired.status, expired.code()),
        (401, "invalid_token".into())
    );

    let ended = "demolab_hub_streams_ended_total";
    assert_eq!(
        metric(addr, &format!("{ended}{{reason=\"logged_out\"}}")).await?,
        2
    );
    assert_eq!(
        metric(addr, &format!("{ended}{{reason=\"token_expired\"}}")).await?,
        2
    );
    wait_until(Duration::from_secs(5), "no stream clients", || {
        hub.stats()
            .render(0, 0)
            .contains("demolab_hub_stream_clients 0")
    })
    .await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_refuse_foreign_origins_and_oversized_messages() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start(
        data.path(),
        AuthConfig {
            allowed_origins: vec!["https://screen.example.org".into()],
            ..auth_config()?
        },
    )
    .await?;
    let addr = hub.http_addr();
    match open_socket(addr, "", Some("http://evil.example")).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())?;
            assert_eq!(body["error"]["code"], "forbidden_origin");
        }
        other => anyhow::bail!("a foreign origin was not refused: {:?}", other.map(|_| ())),
    }
    open_socket(addr, "", Some(&format!("http://{addr}"))).await?;
    open_socket(addr, "", Some("https://screen.example.org")).await?;
    let mut socket = open_socket(addr, "", None).await?;
    socket.send(Message::text("x".repeat(64 * 1024))).await?;
    let (code, reason) =
        within(Duration::from_secs(5), "the close", close_of(&mut socket)).await??;
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Size, "message_too_big")
    );
    let refused = "demolab_hub_websocket_refused_total";
    assert_eq!(
        metric(addr, &format!("{refused}{{reason=\"foreign_origin\"}}")).await?,
        1
    );
    assert_eq!(
        metric(addr, &format!("{refused}{{reason=\"message_too_big\"}}")).await?,
        1
    );
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_security_headers_and_every_error_is_json() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start(data.path(), auth_config()?).await?;
    let addr = hub.http_addr();
    let local = ip("127.0.0.1");
    for path in ["/", "/api/docs", "/assets/app.js", "/api/v1/labs"] {
        let answer = get(addr, path, None).await?;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            answer.header("referrer-policy"),
            Some("no-referrer"),
            "{path}"
        );
        let csp = answer.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.starts_with("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
    }
    assert_eq!(
        get(addr, "/api/v1/labs", None)
            .await?
            .header("cache-control"),
        Some("no-store")
    );

    // /auth/me is for tokens only; the scheme may be written in any case.
    let me = get(addr, "/api/v1/auth/me", None).await?;
    assert_eq!((me.status, me.code()), (401, "unauthenticated".into()));
    assert_eq!(me.header("www-authenticate"), Some("Bearer"));
    let token = login(addr, "sam").await?;
    let lower = format!("bearer {token}");
    let me = request(
        local,
        addr,
        "GET",
        "/api/v1/auth/me",
        &[("authorization", &lower)],
        None,
    )
    .await?;
    assert_eq!(
        (me.status, &me.json()["user"]),
        (200, &"sam".into()),
        "{me:?}"
    );

    // Errors from every layer carry a JSON code.
    let big = format!(
        "{{\"user\": \"{}\", \"password\": \"x\"}}",
        "u".repeat(20_000)
    );
    let cases: Vec<ErrorCase> = vec![
        ("GET", "/api/v1/nothing", vec![], None, 404, "not_found"),
        ("GET", "/nothing", vec![], None, 404, "not_found"),
        (
            "DELETE",
            "/api/v1/labs",
            vec![],
            None,
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/api/v1/auth/login",
            vec![],
            Some(big.as_bytes()),
            413,
            "body_too_large",
        ),
        (
            "GET",
            "/api/v1/alarms/lab-p/m-1/offline/seven",
            vec![],
            None,
            404,
            "alarm_not_found",
        ),
        ("GET", "/api/v1/stream", vec![], None, 400, "bad_request"),
        (
            "GET",
            "/api/v1/twins",
            vec![("Authorization", "Basic b2xnYTp4")],
            None,
            401,
            "invalid_token",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let answer = request(local, addr, method, path, &headers, body).await?;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code.to_owned()),
            "{method} {path}: {answer:?}"
        );
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // A body without a JSON content type.
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = br#"{"user":"sam","password":"x"}"#;
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    assert!(
        text.starts_with("HTTP/1.1 415") && text.contains("\"unsupported_media_type\""),
        "{text}"
    );
    hub.shutdown().await?;
    Ok(())
}

/// The changes a WebSocket carries up to and including the first alarm change of `lab`.
async fn changes_until(socket: &mut Socket, lab: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut seen = Vec::new();
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message? {
            let change: serde_json::Value = serde_json::from_str(&text)?;
            let done = change["lab"] == lab && change["kind"] == "alarm";
            seen.push(change);
            if done {
                return Ok(seen);
            }
        }
    }
    anyhow::bail!("the stream ended")
}

/// Method, path, headers, body, and the status and code expected.
type ErrorCase<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Option<&'a [u8]>,
    u16,
    &'a str,
);

/// A lab's gateway with one burst node of `samples` samples; the gateway declares the node dead
/// a second after it stops (an `offline` alarm).
async fn lab_with_node(
    hub: &Hub,
    lab: &str,
    node: u64,
    samples: u32,
    dir: &std::path::Path,
    cancel: &CancellationToken,
) -> anyhow::Result<gateway::GatewayHandle> {
    let port = hub.mqtt_addr().port();
    let mut config = gateway_config(port, lab, &format!("gw-{lab}"), &dir.join(lab))?;
    // Both labs share the hub's broker: each gateway takes only its own node.
    config.nodes = [(NodeId(node), "mill-1".parse()?)].into();
    config.accept_unconfigured_nodes = false;
    config.liveness_timeout = Duration::from_secs(1);
    let gateway = start_gateway_with(config, cancel).await?;
    run_mqtt_node(
        burst_node(port, node, "mill-1", node, samples)?,
        cancel.clone(),
    )
    .await?;
    Ok(gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn students_and_anonymous_read_only_their_labs_through_every_endpoint() -> anyhow::Result<()>
{
    let data = tempfile::tempdir()?;
    // Both mills are simulated (the demo's scenario control), so that scenarios have a scope.
    let mut simulated = demolab_demo::scenarios::SimulatedScenarios::default();
    for twin in ["lab-b/mill-1", "lab-p/mill-1"] {
        let key = TwinKey::parse(twin).context("key")?;
        simulated.add_machine(&key, simulators::machines::MachineKind::CncMill);
    }
    let hub = start_hub_with(HubConfig {
        auth: auth_config()?,
        scenarios: Some(std::sync::Arc::new(simulated)),
        ..hub_config(data.path())
    })
    .await?;
    let addr = hub.http_addr();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let sam = login(addr, "sam").await?;
    let olga = login(addr, "olga").await?;
    // Unfiltered streams opened before any data: what reaches each reader is what they may see.
    let sse_sam = open_events(addr, &format!("token={sam}")).await?;
    let sse_anonymous = open_events(addr, "").await?;
    let mut ws_sam = open_socket(addr, &format!("token={sam}"), None).await?;
    let mut ws_olga = open_socket(addr, &format!("token={olga}"), None).await?;
    wait_until(Duration::from_secs(5), "four stream clients", || {
        hub.stats()
            .render(0, 0)
            .contains("demolab_hub_stream_clients 4")
    })
    .await?;

    let gw_b = lab_with_node(&hub, "lab-b", 0xb1, 5, data.path(), &cancel).await?;
    let gw_p = lab_with_node(&hub, "lab-p", 0xe1, 5, data.path(), &cancel).await?;
    let twins = hub.twins().clone();
    let (key_b, key_p) = (
        TwinKey::parse("lab-b/mill-1").context("key")?,
        TwinKey::parse("lab-p/mill-1").context("key")?,
    );
    wait_until(
        Duration::from_secs(10),
        "both twins with every sample",
        || {
            [&key_b, &key_p]
                .iter()
                .all(|k| twins.get(k).is_some_and(|t| t.samples == 5))
        },
    )
    .await?;
    wait_until(Duration::from_secs(10), "the offline alarms", || {
        twins.alarms(&hub::alarm::AlarmFilter::default()).len() == 2
    })
    .await?;

    let s = Some(sam.as_str());
    // Lab-b belongs to another game: refused to sam (403) and to anonymous readers (401).
    let lab_b_paths = [
        "/api/v1/twins/lab-b/mill-1",
        "/api/v1/twins?lab=lab-b",
        "/api/v1/twins/lab-b/mill-1/history?metric=spindle.power_w",
        "/api/v1/twins/lab-b/mill-1/sparkplug",
        "/api/v1/alarms?lab=lab-b",
        "/api/v1/alarms/lab-b/mill-1/offline/1",
        "/api/v1/events?lab=lab-b",
        "/api/v1/stream?lab=lab-b",
    ];
    for path in lab_b_paths {
        let answer = get(addr, path, s).await?;
        assert_eq!(
            (answer.status, answer.code()),
            (403, "forbidden".into()),
            "sam {path}"
        );
        let answer = get(addr, path, None).await?;
        assert_eq!(
            (answer.status, answer.code()),
            (401, "unauthenticated".into()),
            "anonymous {path}"
        );
    }
    // Lists hold only what each may read.
    // Labs are listed once they have twins or a configuration: lab-a has neither here.
    for (who, token, labs) in [("sam", s, ["lab-p"]), ("anonymous", None, ["lab-p"])] {
        let answer = get(addr, "/api/v1/labs", token).await?;
        let listed = answer.json();
        let ids: Vec<&str> = listed
            .as_array()
            .context("labs")?
            .iter()
            .filter_map(|l| l["id"].as_str())
            .collect();
        assert_eq!(ids, labs, "{who}");
        let twins_seen = get(addr, "/api/v1/twins", token).await?.json();
        let ids: Vec<&str> = twins_seen
            .as_array()
            .context("twins")?
            .iter()
            .filter_map(|t| t["id"].as_str())
            .collect();
        assert_eq!(ids, ["lab-p/mill-1"], "{who}");
        let alarms = get(addr, "/api/v1/alarms", token).await?.json();
        let labs_of: Vec<&str> = alarms
            .as_array()
            .context("alarms")?
            .iter()
            .filter_map(|a| a["lab"].as_str())
            .collect();
        assert_eq!(labs_of, ["lab-p"], "{who}");
        let twin = get(addr, "/api/v1/twins/lab-p/mill-1", token).await?;
        assert_eq!(twin.status, 200, "{who}");
        // The bdSeq (enough to forge the gateway's NDEATH) is for operators.
        let path = get(addr, "/api/v1/twins/lab-p/mill-1/sparkplug", token)
            .await?
            .json();
        assert!(
            path["gateway"].is_string()
                && path["bd_seq"].is_null()
                && path["last"]["bd_seq"].is_null(),
            "{who}: {path}"
        );
    }
    // Scenarios: a running one on lab-b is the operator's to see.
    let start = request(
        ip("127.0.0.1"),
        addr,
        "POST",
        "/api/v1/twins/lab-b/mill-1/scenario",
        &[("Authorization", &format!("Bearer {olga}"))],
        Some(br#"{"scenario": "predictive-maintenance"}"#),
    )
    .await?;
    assert_eq!(start.status, 200, "{start:?}");
    for (who, token) in [
        ("sam", s),
        ("anonymous", None),
        ("olga", Some(olga.as_str())),
    ] {
        let doc = get(addr, "/api/v1/scenarios", token).await?.json();
        let mut machines: Vec<&str> = doc["available"]
            .as_array()
            .context("available")?
            .iter()
            .flat_map(|a| a["machines"].as_array().into_iter().flatten())
            .filter_map(|m| m.as_str())
            .collect();
        machines.dedup();
        let running = doc["running"].as_array().map(Vec::len);
        if who == "olga" {
            assert_eq!(
                (machines, running),
                (vec!["lab-b/mill-1", "lab-p/mill-1"], Some(1)),
                "{doc}"
            );
        } else {
            assert_eq!(
                (machines, running),
                (vec!["lab-p/mill-1"], Some(0)),
                "{who}: {doc}"
            );
        }
    }
    let path = get(addr, "/api/v1/twins/lab-p/mill-1/sparkplug", Some(&olga))
        .await?
        .json();
    assert!(path["bd_seq"].is_u64(), "{path}");
    let all = get(addr, "/api/v1/twins", Some(&olga)).await?.json();
    assert_eq!(all.as_array().map(Vec::len), Some(2));

    // The streams carried lab-p's changes to sam and anonymous, never lab-b's; the operator saw
    // both, with bdSeq.
    let seen = within(
        Duration::from_secs(5),
        "sam's stream",
        changes_until(&mut ws_sam, "lab-p"),
    )
    .await??;
    assert!(seen.iter().all(|c| c["lab"] == "lab-p"), "{seen:?}");
    assert!(seen.iter().filter(|c| c["kind"] == "sample").count() == 5);
    assert!(seen.iter().all(|c| c["sparkplug"]["bd_seq"].is_null()));
    let seen = within(
        Duration::from_secs(5),
        "olga's stream",
        changes_until(&mut ws_olga, "lab-p"),
    )
    .await??;
    assert!(seen.iter().any(|c| c["lab"] == "lab-b"));
    assert!(seen.iter().any(|c| c["sparkplug"]["bd_seq"].is_u64()));

    // The SSE streams: end them by logging sam out; anonymous ones do not end, so read a while.
    request(
        ip("127.0.0.1"),
        addr,
        "POST",
        "/api/v1/auth/logout",
        &[("Authorization", &format!("Bearer {sam}"))],
        None,
    )
    .await?;
    let (seen, reason) = within(
        Duration::from_secs(5),
        "sam's events",
        read_until_end(sse_sam),
    )
    .await??;
    assert_eq!(reason, "logged_out");
    assert!(
        !seen.is_empty() && seen.iter().all(|c| c["lab"] == "lab-p"),
        "{seen:?}"
    );
    let mut lines = BufReader::new(sse_anonymous).lines();
    let mut samples = 0;
    within(Duration::from_secs(5), "anonymous events", async {
        while samples < 5 {
            let line = lines.next_line().await?.context("ended")?;
            if let Some(data) = line.strip_prefix("data: ") {
                let change: serde_json::Value = serde_json::from_str(data)?;
                anyhow::ensure!(change["lab"] == "lab-p", "{change}");
                if change["kind"] == "sample" {
                    samples += 1;
                }
            }
        }
        anyhow::Ok(())
    })
    .await??;

    // A graceful shutdown waits for open connections: close the streams first.
    drop((lines, ws_sam, ws_olga));
    cancel.cancel();
    gw_b.shutdown().await?;
    gw_p.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
