//! The hub's REST API through its real HTTP server, with a real gateway and simulated nodes
//! behind it: roles and tokens, history with exact counts, desired properties that reach the
//! node, alarms with acknowledgement, the streams, the JSON topics, and every documented error
//! code for bad input.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    burst_node, gateway_config, http, hub_config, start_gateway_with, start_hub_with, wait_until,
    within,
};
use hub::auth::{AuthConfig, GameConfig, Role, UserConfig, hash_password};
use hub::twin::TwinKey;
use hub::{Hub, HubConfig};
use simulators::node::run_mqtt_node;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 300;

fn user(name: &str, role: Role, game: Option<&str>) -> anyhow::Result<UserConfig> {
    Ok(UserConfig {
        name: name.into(),
        role,
        password_hash: hash_password(&format!("{name}-secret"))?,
        game: game.map(str::to_owned),
    })
}

async fn start_hub(data: &std::path::Path) -> anyhow::Result<Hub> {
    let config = HubConfig {
        auth: AuthConfig {
            token_ttl_s: 3600,
            users: vec![
                user("olga", Role::Operator, None)?,
                user("sam", Role::Student, Some("g1"))?,
            ],
            games: vec![GameConfig {
                id: "g1".into(),
                name: "Game one".into(),
                labs: vec!["lab-a".parse()?],
            }],
            ..AuthConfig::default()
        },
        ..hub_config(data)
    };
    start_hub_with(config).await
}

async fn json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, text) = http(addr, method, path, token, body).await?;
    let doc = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok((status, doc))
}

/// Asserts a JSON error with this status and code.
async fn expect_error(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
    status: u16,
    code: &str,
) -> anyhow::Result<()> {
    let (got, doc) = json(addr, method, path, token, body).await?;
    assert_eq!(
        (got, doc["error"]["code"].as_str()),
        (status, Some(code)),
        "{method} {path}: {doc}"
    );
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{method} {path}: no message in {doc}"
    );
    Ok(())
}

/// A hub with one lab's gateway on it, both on ephemeral ports in a temporary directory.
struct Lab {
    hub: Hub,
    addr: SocketAddr,
    port: u16,
    cancel: CancellationToken,
    gateway: gateway::GatewayHandle,
    _data: tempfile::TempDir,
}

impl Lab {
    async fn start(lab: &str, gateway: &str, liveness: Option<Duration>) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let hub = start_hub(data.path()).await?;
        let port = hub.mqtt_addr().port();
        let cancel = CancellationToken::new();
        let mut config = gateway_config(port, lab, gateway, &data.path().join("buffer"))?;
        if let Some(liveness) = liveness {
            config.liveness_timeout = liveness;
        }
        let gateway = start_gateway_with(config, &cancel).await?;
        Ok(Self {
            addr: hub.http_addr(),
            hub,
            port,
            cancel,
            gateway,
            _data: data,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.gateway.shutdown().await?;
        self.hub.shutdown().await?;
        Ok(())
    }
}

fn bucket_count(doc: &serde_json::Value) -> u64 {
    doc["buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["count"].as_u64()).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_twins_history_desired_values_and_alarms_by_role() -> anyhow::Result<()> {
    let lab = Lab::start("lab-a", "gw-a", Some(Duration::from_secs(1))).await?;
    let _stop = lab.cancel.clone().drop_guard();
    let (hub, addr, port, cancel) = (&lab.hub, lab.addr, lab.port, lab.cancel.clone());

    // A burst of exactly SAMPLES samples, then a node that keeps running for commands.
    let burst = burst_node(port, 0xa1, "mill-1", 1, SAMPLES)?;
    run_mqtt_node(burst, cancel.clone()).await?;
    let mut live = burst_node(port, 0xa2, "mill-2", 2, 0)?;
    live.max_samples = None;
    live.tick_interval = Duration::from_millis(20);
    let live_node = tokio::spawn(run_mqtt_node(live, cancel.clone()));

    let olga = demolab_tests::login(addr, "olga").await?;
    let sam = demolab_tests::login(addr, "sam").await?;

    // Who is who.
    let (status, me) = json(addr, "GET", "/api/v1/auth/me", Some(&sam), None).await?;
    assert_eq!((status, &me["role"]), (200, &"student".into()));
    assert_eq!(me["labs"], serde_json::json!(["lab-a"]));

    let twins = hub.twins().clone();
    let mill_1 = TwinKey::parse("lab-a/mill-1").context("key")?;
    wait_until(Duration::from_secs(20), "every burst sample", || {
        twins
            .get(&mill_1)
            .is_some_and(|t| t.samples == u64::from(SAMPLES))
    })
    .await?;

    // The twin as the catalogue describes it.
    let (status, twin) = json(addr, "GET", "/api/v1/twins/lab-a/mill-1", Some(&sam), None).await?;
    assert_eq!(status, 200, "{twin}");
    assert_eq!(twin["kind"], "cnc-mill");
    assert_eq!(twin["last_seq"], SAMPLES);
    assert!(
        twin["kpis"]["energy_today_wh"]
            .as_f64()
            .is_some_and(|e| e > 0.0),
        "{twin}"
    );
    let (status, list) = json(
        addr,
        "GET",
        "/api/v1/twins?kind=cnc-mill&online=true",
        Some(&olga),
        None,
    )
    .await?;
    assert_eq!(
        (status, list.as_array().map(Vec::len)),
        (200, Some(2)),
        "{list}"
    );
    let (status, kinds) = json(addr, "GET", "/api/v1/catalogue/cnc-mill", Some(&sam), None).await?;
    assert_eq!((status, &kinds["id"]), (200, &"cnc-mill".into()));
    let (status, labs) = json(addr, "GET", "/api/v1/labs", Some(&sam), None).await?;
    assert_eq!(
        (status, &labs[0]["id"], labs[0]["machines"].as_u64()),
        (200, &"lab-a".into(), Some(2))
    );

    // History: every sample exactly once, once committed.
    let now = hub::ingest::now_ms();
    let history_path = format!(
        "/api/v1/twins/lab-a/mill-1/history?metric=spindle.power_w&from={}&to={}&step=3600000",
        (now / 3_600_000 - 1) * 3_600_000,
        (now / 3_600_000 + 2) * 3_600_000
    );
    let history = within(Duration::from_secs(10), "the committed history", async {
        loop {
            let (status, doc) = json(addr, "GET", &history_path, Some(&sam), None).await?;
            anyhow::ensure!(status == 200, "{doc}");
            if bucket_count(&doc) >= u64::from(SAMPLES) {
                return Ok(doc);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    assert_eq!(bucket_count(&history), u64::from(SAMPLES), "{history}");
    assert_eq!(history["unit"], "W");
    // The default range (the last hour) holds them too.
    let (status, recent) = json(
        addr,
        "GET",
        "/api/v1/twins/lab-a/mill-1/history?metric=spindle.power_w",
        Some(&sam),
        None,
    )
    .await?;
    assert_eq!(
        (status, bucket_count(&recent)),
        (200, u64::from(SAMPLES)),
        "{recent}"
    );

    // A desired value travels hub → DCMD → gateway → node, and the node's answer settles it.
    let body = br#"{"node.period_ms": 500}"#;
    let (status, accepted) = json(
        addr,
        "PATCH",
        "/api/v1/twins/lab-a/mill-2/desired",
        Some(&olga),
        Some(body),
    )
    .await?;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["desired"]["node.period_ms"]["status"], "pending");
    let mill_2 = TwinKey::parse("lab-a/mill-2").context("key")?;
    wait_until(
        Duration::from_secs(10),
        "the node to apply the period",
        || {
            twins.get(&mill_2).is_some_and(|t| {
                t.desired
                    .get("node.period_ms")
                    .is_some_and(|d| d.status == hub::twin::DesiredStatus::Applied)
                    && t.value("node.period_ms") == Some(500.0)
            })
        },
    )
    .await?;
    let twin = twins.get(&mill_2).context("mill-2")?;
    assert_eq!(twin.desired["node.period_ms"].requested_by, "olga");

    // The burst node went quiet: the gateway declares it dead, the hub raises its offline alarm.
    let alarms_path = "/api/v1/alarms?lab=lab-a&machine=mill-1&active=true";
    let alarm = within(Duration::from_secs(10), "the offline alarm", async {
        loop {
            let (_, doc) = json(addr, "GET", alarms_path, Some(&sam), None).await?;
            if let Some(alarm) = doc.as_array().and_then(|a| a.first()) {
                return anyhow::Ok(alarm.clone());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    assert_eq!(
        (&alarm["rule"], &alarm["state"]),
        (&"offline".into(), &"active_unack".into())
    );
    let id = alarm["id"].as_str().context("id")?;
    let ack = format!("/api/v1/alarms/{id}/ack");
    expect_error(addr, "POST", &ack, Some(&sam), None, 403, "forbidden").await?;
    let (status, acked) = json(addr, "POST", &ack, Some(&olga), None).await?;
    assert_eq!(
        (status, &acked["state"]),
        (200, &"active_ack".into()),
        "{acked}"
    );
    assert_eq!(acked["acknowledged_by"], "olga");
    expect_error(
        addr,
        "POST",
        &ack,
        Some(&olga),
        None,
        409,
        "alarm_already_acknowledged",
    )
    .await?;
    let (status, one) = json(
        addr,
        "GET",
        &format!("/api/v1/alarms/{id}"),
        Some(&sam),
        None,
    )
    .await?;
    assert_eq!((status, &one["state"]), (200, &"active_ack".into()));
    let twin = twins.get(&mill_1).context("mill-1")?;
    assert_eq!(twin.alarms.len(), 1);
    assert_eq!(twin.alarms[0].state, "acknowledged");

    cancel.cancel();
    let _ = live_node.await;
    lab.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_bad_input_with_its_documented_code() -> anyhow::Result<()> {
    let lab = Lab::start("lab-b", "gw-b", None).await?;
    let _stop = lab.cancel.clone().drop_guard();
    let (hub, addr, port, cancel) = (&lab.hub, lab.addr, lab.port, lab.cancel.clone());
    run_mqtt_node(burst_node(port, 0xb1, "mill-1", 1, 3)?, cancel.clone()).await?;
    let twins = hub.twins().clone();
    let key = TwinKey::parse("lab-b/mill-1").context("key")?;
    wait_until(Duration::from_secs(10), "the twin", || {
        twins.get(&key).is_some()
    })
    .await?;
    let olga = demolab_tests::login(addr, "olga").await?;
    let sam = demolab_tests::login(addr, "sam").await?;
    let o = Some(olga.as_str());
    let s = Some(sam.as_str());

    // Authentication.
    expect_error(
        addr,
        "GET",
        "/api/v1/twins",
        None,
        None,
        401,
        "unauthenticated",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/twins",
        Some("forged"),
        None,
        401,
        "invalid_token",
    )
    .await?;
    let wrong = br#"{"user": "olga", "password": "guess"}"#;
    expect_error(
        addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(wrong),
        401,
        "bad_credentials",
    )
    .await?;
    let extra = br#"{"user": "olga", "password": "x", "remember": true}"#;
    expect_error(
        addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(extra),
        400,
        "bad_body",
    )
    .await?;

    // Students read their game's labs only, and write nothing.
    expect_error(
        addr,
        "GET",
        "/api/v1/twins/lab-b/mill-1",
        s,
        None,
        403,
        "forbidden",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/twins?lab=lab-b",
        s,
        None,
        403,
        "forbidden",
    )
    .await?;
    let (status, visible) = json(addr, "GET", "/api/v1/twins", s, None).await?;
    assert_eq!(
        (status, visible.as_array().map(Vec::len)),
        (200, Some(0)),
        "{visible}"
    );
    let desired = "/api/v1/twins/lab-b/mill-1/desired";
    let body = br#"{"node.period_ms": 500}"#;
    expect_error(addr, "PATCH", desired, s, Some(body), 403, "forbidden").await?;
    expect_error(
        addr,
        "PATCH",
        desired,
        None,
        Some(body),
        401,
        "unauthenticated",
    )
    .await?;

    // Ids, filters and unknown things.
    expect_error(
        addr,
        "GET",
        "/api/v1/twins/Lab-B/mill-1",
        o,
        None,
        400,
        "invalid_id",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/twins/lab-b/ghost",
        o,
        None,
        404,
        "twin_not_found",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/twins?state=dancing",
        o,
        None,
        400,
        "bad_query",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/twins?online=maybe",
        o,
        None,
        400,
        "bad_query",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/twins?colour=red",
        o,
        None,
        400,
        "bad_query",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/catalogue/toaster",
        o,
        None,
        404,
        "kind_not_found",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/alarms?lab=LAB",
        o,
        None,
        400,
        "invalid_id",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/alarms/lab-b/mill-1/offline/99",
        o,
        None,
        404,
        "alarm_not_found",
    )
    .await?;
    expect_error(
        addr,
        "POST",
        "/api/v1/alarms/lab-b/mill-1/offline/99/ack",
        o,
        None,
        404,
        "alarm_not_found",
    )
    .await?;
    expect_error(addr, "GET", "/api/v1/nothing", o, None, 404, "not_found").await?;
    expect_error(
        addr,
        "DELETE",
        "/api/v1/twins",
        o,
        None,
        405,
        "method_not_allowed",
    )
    .await?;

    // History ranges and steps.
    let history = "/api/v1/twins/lab-b/mill-1/history";
    expect_error(addr, "GET", history, o, None, 400, "missing_parameter").await?;
    let reversed = format!("{history}?metric=spindle.power_w&from=2000&to=1000");
    expect_error(addr, "GET", &reversed, o, None, 400, "bad_time_range").await?;
    let zero = format!("{history}?metric=spindle.power_w&from=0&to=1000&step=0");
    expect_error(addr, "GET", &zero, o, None, 400, "bad_step").await?;
    let tiny = format!("{history}?metric=spindle.power_w&from=0&to=100000000&step=1");
    expect_error(addr, "GET", &tiny, o, None, 400, "bad_step").await?;
    let not_a_time = format!("{history}?metric=spindle.power_w&from=yesterday");
    expect_error(addr, "GET", &not_a_time, o, None, 400, "bad_query").await?;
    let ghost = "/api/v1/twins/lab-b/ghost/history?metric=spindle.power_w";
    expect_error(addr, "GET", ghost, o, None, 404, "twin_not_found").await?;

    // Desired-property bodies.
    let big = format!(
        "{{\"node.period_ms\": 500, \"pad\": \"{}\"}}",
        "x".repeat(20_000)
    );
    expect_error(
        addr,
        "PATCH",
        desired,
        o,
        Some(big.as_bytes()),
        413,
        "body_too_large",
    )
    .await?;
    expect_error(
        addr,
        "PATCH",
        desired,
        o,
        Some(b"{not json"),
        400,
        "bad_body",
    )
    .await?;
    expect_error(addr, "PATCH", desired, o, Some(b"{}"), 400, "bad_body").await?;
    let string_value = br#"{"node.period_ms": "fast"}"#;
    expect_error(
        addr,
        "PATCH",
        desired,
        o,
        Some(string_value),
        400,
        "bad_body",
    )
    .await?;
    let not_writable = br#"{"spindle.power_w": 10}"#;
    expect_error(
        addr,
        "PATCH",
        desired,
        o,
        Some(not_writable),
        422,
        "not_writable",
    )
    .await?;
    let out_of_range = br#"{"node.period_ms": 5}"#;
    expect_error(
        addr,
        "PATCH",
        desired,
        o,
        Some(out_of_range),
        422,
        "out_of_range",
    )
    .await?;
    let ghost = "/api/v1/twins/lab-b/ghost/desired";
    expect_error(addr, "PATCH", ghost, o, Some(body), 404, "twin_not_found").await?;
    // Without a content type the body is not read as JSON.
    let (status, doc) = {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "PATCH {desired} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {olga}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut reader = BufReader::new(stream);
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut text).await?;
        let status: u16 = text.split_whitespace().nth(1).unwrap_or("0").parse()?;
        (status, text)
    };
    assert_eq!(status, 415, "{doc}");
    assert!(doc.contains("unsupported_media_type"), "{doc}");
    // The machine went quiet and then offline: a command cannot reach it.
    let Lab { hub, gateway, .. } = lab;
    gateway.shutdown().await?;
    wait_until(Duration::from_secs(10), "the twin offline", || {
        twins.get(&key).is_some_and(|t| !t.connectivity.online)
    })
    .await?;
    expect_error(
        addr,
        "PATCH",
        desired,
        o,
        Some(body),
        409,
        "machine_offline",
    )
    .await?;

    // Streams refuse what they cannot serve before upgrading.
    expect_error(
        addr,
        "GET",
        "/api/v1/events?lab=lab-b",
        s,
        None,
        403,
        "forbidden",
    )
    .await?;
    expect_error(
        addr,
        "GET",
        "/api/v1/events?metric=Bad",
        o,
        None,
        400,
        "invalid_id",
    )
    .await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_server() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let addr = hub.http_addr();
    let (status, doc) = json(addr, "GET", "/api/v1/openapi.json", None, None).await?;
    assert_eq!(status, 200);
    let olga = demolab_tests::login(addr, "olga").await?;
    // Every documented operation is routed: with made-up parameters it may be refused, but never
    // with "no such endpoint" or "method not allowed".
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("item")?.keys() {
            let concrete = path
                .replace("{lab}", "lab-x")
                .replace("{machine}", "m-1")
                .replace("{kind}", "cnc-mill")
                .replace("{rule}", "offline")
                .replace("{n}", "1")
                .replace(
                    "{aasIdentifier}",
                    &hub::aas::encode_identifier("urn:demolab:aas:lab-x:m-1"),
                )
                .replace(
                    "{submodelIdentifier}",
                    &hub::aas::encode_identifier("urn:demolab:sm:lab-x:m-1:Nameplate"),
                );
            if concrete.ends_with("/stream") || concrete.ends_with("/events") {
                continue; // never-ending responses; the stream tests cover them
            }
            let body = (method != "get").then_some(&b"{}"[..]);
            let (status, text) =
                http(addr, &method.to_uppercase(), &concrete, Some(&olga), body).await?;
            let not_routed = text.contains("\"not_found\"") || text.contains("method_not_allowed");
            assert!(
                !not_routed,
                "{method} {concrete} is documented but not routed: {status} {text}"
            );
        }
    }
    let (status, page) = http(addr, "GET", "/api/docs", None, None).await?;
    assert!(status == 200 && page.contains("openapi.json"));
    hub.shutdown().await?;
    Ok(())
}

/// Reads server-sent events from `path` until `count` `change` events arrived.
async fn read_events(
    addr: SocketAddr,
    path: &str,
    count: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    let mut events = Vec::new();
    let mut kind = String::new();
    while events.len() < count {
        let line = lines.next_line().await?.context("the stream ended")?;
        if let Some(name) = line.strip_prefix("event: ") {
            kind = name.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ")
            && kind == "change"
        {
            events.push(serde_json::from_str(data)?);
        }
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_filter_by_metric_and_json_topics_carry_the_last_values() -> anyhow::Result<()> {
    let lab = Lab::start("lab-a", "gw-a", None).await?;
    let _stop = lab.cancel.clone().drop_guard();
    let (hub, addr, port, cancel) = (&lab.hub, lab.addr, lab.port, lab.cancel.clone());
    let sam = demolab_tests::login(addr, "sam").await?;
    let path =
        format!("/api/v1/events?lab=lab-a&machine=mill-9&metric=spindle.power_w&token={sam}");
    let reader = tokio::spawn(async move { read_events(addr, &path, 20).await });
    // Subscribe before the node runs, so the stream sees its first samples.
    wait_until(Duration::from_secs(5), "the SSE client", || {
        hub.stats()
            .render(0, 0)
            .contains("demolab_hub_stream_clients 1")
    })
    .await?;
    run_mqtt_node(burst_node(port, 0xc9, "mill-9", 9, 40)?, cancel.clone()).await?;
    let events = within(Duration::from_secs(10), "20 events", reader).await???;
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "sample")
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "in order, none missing");
    for event in &events {
        let keys: Vec<&String> = event["values"]
            .as_object()
            .context("values")?
            .keys()
            .collect();
        assert_eq!(keys, ["spindle.power_w"], "only the asked metric: {event}");
    }

    // Retained JSON topics: a late subscriber gets the last value of each metric.
    let (client, mut events) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new("json-reader", "127.0.0.1", port),
        16,
    );
    client
        .subscribe("demolab/lab-a/mill-9/#", rumqttc::QoS::AtMostOnce)
        .await?;
    let twins = hub.twins().clone();
    let key = TwinKey::parse("lab-a/mill-9").context("key")?;
    // A JSON topic carries each metric's newest value (superseded ones are skipped), so the
    // value to wait for is the burst's last.
    wait_until(
        Duration::from_secs(10),
        "the whole burst at the twin",
        || twins.get(&key).is_some_and(|t| t.samples == 40),
    )
    .await?;
    let last = twins.get(&key).and_then(|t| t.value("spindle.power_w"));
    // The retained message, or live ones still on their way, until the twin's last value.
    let power = within(Duration::from_secs(10), "the last power value", async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = events.poll().await?
                && p.topic == "demolab/lab-a/mill-9/spindle.power_w"
            {
                let doc = serde_json::from_slice::<serde_json::Value>(&p.payload)?;
                if doc["value"].as_f64() == last {
                    return anyhow::Ok(doc);
                }
            }
        }
    })
    .await??;
    assert_eq!(power["unit"], "W");
    lab.stop().await
}
