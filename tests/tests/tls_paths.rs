//! TLS end to end, with a certificate authority made at test time: a gateway's uplink and the
//! hub's own MQTT clients reach the embedded broker over TLS, every sample arrives exactly once
//! and in order, and the API and the WebSocket stream are served over HTTPS. Clients that trust
//! another CA, and plain TCP on the TLS ports, are refused and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use broker::tls::ClientTlsFiles;
use broker::{BrokerConfig, BrokerTls};
use demolab_tests::pki::TestPki;
use demolab_tests::{burst_node, gateway_config, start_gateway_with, wait_until, within};
use futures_util::StreamExt;
use hub::{BrokerSetting, Hub, HubConfig};
use rustls::pki_types::ServerName;
use simulators::node::run_mqtt_node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 200;

/// A hub whose embedded broker listens plain on loopback and over TLS, whose own clients use
/// the TLS listener, and which serves HTTPS.
async fn start_tls_hub(data: &std::path::Path, pki: &TestPki) -> anyhow::Result<Hub> {
    let hub = Hub::start(HubConfig {
        http_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        broker: BrokerSetting::Embedded(BrokerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: Some(BrokerTls::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                pki.server_files(),
            )),
            ..BrokerConfig::default()
        }),
        data_dir: data.to_owned(),
        https: Some(pki.server_files()),
        http: hub::http::HttpLimits {
            // Short, so the refusal test sees a silent client cut off quickly.
            tls_handshake_timeout: Duration::from_millis(300),
            ..hub::http::HttpLimits::default()
        },
        mqtt_tls: Some(pki.client_files().load("broker.tls")?),
        // The test's gateway births a lab no directory lists, which it reads without a login.
        accept_unknown: true,
        auth: hub::auth::AuthConfig {
            public_labs: vec!["*".into()],
            ..hub::auth::AuthConfig::default()
        },
        ..HubConfig::default()
    })
    .await?;
    within(
        Duration::from_secs(10),
        "the hub ready over TLS",
        hub.ready(),
    )
    .await?;
    Ok(hub)
}

async fn tls_connect(
    addr: SocketAddr,
    trust: &ClientTlsFiles,
    alpn: &[u8],
) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut config = (*trust.load("test")?.rustls_config()).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    Ok(TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

/// GET over HTTPS with `Connection: close`; the status and the body.
async fn https_get(
    addr: SocketAddr,
    trust: &ClientTlsFiles,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = tls_connect(addr, trust, b"http/1.1").await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    // rustls reports a peer that closes without close_notify as an error after the data.
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8(response)?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP response: {text:?}")
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The samples of `count` stream changes of kind `sample`, as node sequence numbers.
async fn collect_seqs<S>(stream: &mut S, count: usize) -> anyhow::Result<Vec<u64>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut seqs = Vec::new();
    within(
        Duration::from_secs(30),
        "every sample on the stream",
        async {
            while seqs.len() < count {
                let Some(message) = stream.next().await else {
                    bail!("the stream closed")
                };
                let Message::Text(text) = message? else {
                    continue;
                };
                let change: serde_json::Value = serde_json::from_str(text.as_str())?;
                anyhow::ensure!(change["kind"] != "lagged", "the stream lagged");
                if let (Some("sample"), Some(seq)) =
                    (change["kind"].as_str(), change["seq"].as_u64())
                {
                    seqs.push(seq);
                }
            }
            Ok(())
        },
    )
    .await??;
    Ok(seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_cross_tls_to_the_hub_exactly_and_are_served_over_https() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let pki = TestPki::generate(data.path(), "lab")?;
    let hub = start_tls_hub(data.path(), &pki).await?;
    assert!(hub.https());
    let http = hub.http_addr();
    let tls_mqtt = hub.mqtt_tls_addr().context("the broker's TLS listener")?;

    // The stream over TLS, opened before the node runs so it sees every sample.
    let tls = tls_connect(http, &pki.client_files(), b"http/1.1").await?;
    let (mut stream, _) =
        tokio_tungstenite::client_async("wss://localhost/api/v1/stream?lab=lab-tls", tls)
            .await
            .context("the WebSocket handshake over TLS")?;

    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    // The nodes speak plain MQTT on the lab side (the broker's loopback listener); the
    // gateway's uplink crosses TLS.
    let plain_port = hub.mqtt_addr().port();
    let mut config = gateway_config(plain_port, "lab-tls", "gw-tls", &data.path().join("buffer"))?;
    config.uplink = gateway::MqttEndpoint {
        host: "127.0.0.1".into(),
        port: tls_mqtt.port(),
    };
    config.uplink_tls = Some(pki.client_files().load("uplink.tls")?);
    config.primary_host = Some("demolab-hub".parse()?);
    let gateway = start_gateway_with(config, &cancel).await?;
    let report = within(
        Duration::from_secs(30),
        "the node",
        run_mqtt_node(
            burst_node(plain_port, 0x7151, "mill-tls", 3, SAMPLES)?,
            cancel.clone(),
        ),
    )
    .await??;
    assert_eq!(report.sent, SAMPLES);

    let seqs = collect_seqs(&mut stream, SAMPLES as usize).await?;
    assert_eq!(
        seqs,
        (1..=u64::from(SAMPLES)).collect::<Vec<_>>(),
        "every sample once, in order"
    );

    let (status, body) =
        https_get(http, &pki.client_files(), "/api/v1/twins/lab-tls/mill-tls").await?;
    assert_eq!(status, 200, "{body}");
    let twin: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(twin["samples"], u64::from(SAMPLES), "{twin}");
    let (status, metrics) = https_get(http, &pki.client_files(), "/metrics").await?;
    assert_eq!(status, 200);
    // One TLS session each for the gateway's uplink and the hub's ingest and JSON-topic
    // clients: none was abandoned mid-handshake and retried.
    assert!(
        metrics.contains("demolab_broker_tls_connections_total 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("demolab_broker_tls_refused_total{reason=\"handshake_failed\"} 0\n"),
        "{metrics}"
    );

    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_trust_another_ca_or_speak_plain_tcp_are_refused() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let pki = TestPki::generate(data.path(), "lab")?;
    let stranger = TestPki::generate(data.path(), "stranger")?;
    let hub = start_tls_hub(data.path(), &pki).await?;
    let http = hub.http_addr();

    // A broker of its own for the MQTT half, so that only this test's clients reach it.
    let broker = broker::EmbeddedBroker::start(BrokerConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: Some(BrokerTls {
            handshake_timeout: Duration::from_millis(300),
            ..BrokerTls::new(SocketAddr::from(([127, 0, 0, 1], 0)), pki.server_files())
        }),
        ..BrokerConfig::default()
    })
    .await?;
    let tls_mqtt = broker
        .tls_local_addr()
        .context("the broker's TLS listener")?;

    // MQTT: a client that trusts another CA never gets a session.
    let mut options = rumqttc::MqttOptions::new("stranger", "127.0.0.1", tls_mqtt.port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(stranger.client_files().load("tls")?.rustls_config()),
    ));
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 8);
    let refused = within(
        Duration::from_secs(10),
        "the stranger's outcome",
        events.poll(),
    )
    .await?;
    let err = refused
        .err()
        .context("a client trusting another CA connected")?;
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // MQTT: plain CONNECT bytes on the TLS port are no TLS handshake.
    let mut plain = TcpStream::connect(tls_mqtt).await?;
    plain
        .write_all(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test")
        .await?;
    let mut answer = Vec::new();
    within(
        Duration::from_secs(10),
        "the plain client closed",
        plain.read_to_end(&mut answer),
    )
    .await??;
    assert_ne!(
        answer.first(),
        Some(&0x20),
        "a CONNACK on the TLS port: {answer:?}"
    );

    // HTTPS: the same two.
    let err = https_get(http, &stranger.client_files(), "/healthz")
        .await
        .err()
        .context("an HTTPS client trusting another CA got an answer")?;
    assert!(
        format!("{err:#}").to_lowercase().contains("certificate"),
        "{err:#}"
    );
    let mut plain = TcpStream::connect(http).await?;
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    let _ = within(
        Duration::from_secs(10),
        "the plain client closed",
        plain.read_to_end(&mut answer),
    )
    .await?;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP answered: {answer:?}"
    );

    // A client that opens the TLS ports and says nothing is cut off at the handshake deadline.
    for port in [tls_mqtt, http] {
        let mut silent = TcpStream::connect(port).await?;
        let mut answer = Vec::new();
        within(
            Duration::from_secs(10),
            "the silent client cut off",
            silent.read_to_end(&mut answer),
        )
        .await??;
        assert!(answer.is_empty(), "{answer:?}");
    }
    let (broker_counters, hub_stats) = (broker.tls_counters(), hub.stats().clone());
    wait_until(
        Duration::from_secs(10),
        "both handshake timeouts counted",
        || {
            broker_counters.handshake_timeouts() == 1
                && hub_stats.http_timeouts(hub::stats::HttpTimeout::TlsHandshake) == 1
        },
    )
    .await?;

    let counters = broker.tls_counters();
    wait_until(
        Duration::from_secs(10),
        "both MQTT refusals counted",
        || counters.handshake_failures() == 2,
    )
    .await?;
    assert_eq!(counters.accepted(), 0);
    let stats = hub.stats().clone();
    wait_until(
        Duration::from_secs(10),
        "both HTTPS refusals counted",
        || stats.http_tls_failures() == 2,
    )
    .await?;
    broker.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

/// The first CONNACK, or the connection error, of an MQTT client over TLS with `files`.
async fn mqtt_tls_outcome(
    addr: SocketAddr,
    id: &str,
    files: &ClientTlsFiles,
) -> anyhow::Result<Result<(), String>> {
    let mut options = rumqttc::MqttOptions::new(id, "127.0.0.1", addr.port());
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(files.load("tls")?.rustls_config()),
    ));
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 8);
    within(Duration::from_secs(10), "the TLS client's outcome", async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(err) => return Err(err.to_string()),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_requires_client_certificates_admits_only_clients_with_one()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let pki = TestPki::generate(data.path(), "mtls")?;
    let stranger = TestPki::generate(data.path(), "stranger")?;
    let mut files = pki.server_files();
    files.client_ca_file = Some(pki.ca.clone());
    files.require_client_cert = true;
    let broker = broker::EmbeddedBroker::start(BrokerConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: Some(BrokerTls::new(SocketAddr::from(([127, 0, 0, 1], 0)), files)),
        ..BrokerConfig::default()
    })
    .await?;
    let addr = broker.tls_local_addr().context("TLS listener")?;

    let with_cert = ClientTlsFiles {
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
        ..pki.client_files()
    };
    mqtt_tls_outcome(addr, "with-cert", &with_cert)
        .await?
        .map_err(|err| anyhow::anyhow!("a client with a certificate was refused: {err}"))?;
    let without = mqtt_tls_outcome(addr, "without-cert", &pki.client_files()).await?;
    assert!(without.is_err(), "a client without a certificate connected");
    let foreign = ClientTlsFiles {
        cert_file: Some(stranger.client_cert.clone()),
        key_file: Some(stranger.client_key.clone()),
        ..pki.client_files()
    };
    let foreign = mqtt_tls_outcome(addr, "foreign-cert", &foreign).await?;
    assert!(
        foreign.is_err(),
        "a certificate from another CA was accepted"
    );

    let counters = broker.tls_counters();
    wait_until(Duration::from_secs(10), "both refusals counted", || {
        counters.handshake_failures() == 2
    })
    .await?;
    assert_eq!(counters.accepted(), 1);
    broker.shutdown().await?;
    Ok(())
}
