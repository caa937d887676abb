//! A connection flood against the hub's HTTP port: 1,000 idle and half-sent connections from
//! one address and more from a second neither exhaust the process nor stop the service.
//! Beyond the caps connections are refused (a 503) and counted exactly; the ones let in are
//! closed by the header-read timeout; a normal API request from another address succeeds
//! meanwhile; and the lab's gateway keeps delivering every sample to its twin.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    burst_node, http_get, hub_config, start_gateway_with, start_hub_with, wait_until, within,
};
use hub::http::HttpLimits;
use hub::stats::{HttpRefusal, HttpTimeout};
use hub::twin::TwinKey;
use simulators::node::run_mqtt_node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

const FLOOD: usize = 1000;
const PER_CLIENT: usize = 100;
const MAX: usize = 150;
const SECOND_FLOOD: usize = 100;
const SAMPLES: u32 = 1500;

/// The flood holds about 1,100 sockets at once; make sure the soft limit allows it.
#[allow(unsafe_code)] // getrlimit/setrlimit on a local struct: no pointer outlives the call.
fn raise_open_file_limit(wanted: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, exclusively borrowed rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        anyhow::bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(());
    }
    anyhow::ensure!(
        limit.rlim_max >= wanted,
        "the hard open-file limit {} is below the {wanted} this test needs",
        limit.rlim_max
    );
    limit.rlim_cur = wanted;
    // SAFETY: as above; the struct is only read.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        anyhow::bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP connection to `to` from the loopback address `from` (Linux routes all of 127/8).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    Ok(socket.connect(to).await?)
}

/// GET with `Connection: close` from `from`; the status and the body.
async fn get_from(from: Ipv4Addr, to: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = connect_from(from, to).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_timed_out_and_counted_while_the_hub_keeps_serving()
-> anyhow::Result<()> {
    raise_open_file_limit(4096)?;
    let data = tempfile::tempdir()?;
    let mut config = hub_config(data.path());
    config.http = HttpLimits {
        max_connections: MAX,
        max_connections_per_client: PER_CLIENT,
        header_timeout: Duration::from_secs(4),
        idle_timeout: Duration::from_secs(5),
        tls_handshake_timeout: Duration::from_secs(4),
    };
    let hub = start_hub_with(config).await?;
    let http = hub.http_addr();
    let stats = hub.stats().clone();

    // The lab keeps producing through the whole flood.
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let port = hub.mqtt_addr().port();
    let gateway = start_gateway_with(
        demolab_tests::gateway_config(port, "lab-flood", "gw-flood", &data.path().join("buffer"))?,
        &cancel,
    )
    .await?;
    let mut node = burst_node(port, 0xf100d, "mill-flood", 5, SAMPLES)?;
    node.tick_interval = Duration::from_millis(3);
    let sender = tokio::spawn(run_mqtt_node(node, cancel.clone()));
    let twins = hub.twins().clone();
    let key = TwinKey::parse("lab-flood/mill-flood").context("key")?;
    let samples = || twins.get(&key).map_or(0, |t| t.samples);
    wait_until(Duration::from_secs(20), "the first samples", || {
        samples() >= 20
    })
    .await?;

    // 1,000 connections from 127.0.0.1: every other one sends half a request header.
    let attacker = Ipv4Addr::LOCALHOST;
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let mut stream = connect_from(attacker, http).await?;
        if i % 2 == 1 {
            stream
                .write_all(b"GET /api/v1/twins HTTP/1.1\r\nHost: x\r\n")
                .await?;
        }
        flood.push(stream);
    }
    wait_until(
        Duration::from_secs(10),
        "the flood beyond the per-client cap refused",
        || stats.http_refusals(HttpRefusal::ClientLimit) == (FLOOD - PER_CLIENT) as u64,
    )
    .await?;
    assert_eq!(stats.http_connections_open(), PER_CLIENT as u64);

    // Another client is served meanwhile.
    let before = samples();
    let (status, body) = get_from(
        Ipv4Addr::new(127, 0, 0, 2),
        http,
        "/api/v1/twins/lab-flood/mill-flood",
    )
    .await?;
    assert_eq!(status, 200, "{body}");

    // A second address fills the server to its overall cap.
    let mut second = Vec::with_capacity(SECOND_FLOOD);
    for _ in 0..SECOND_FLOOD {
        second.push(connect_from(Ipv4Addr::new(127, 0, 0, 3), http).await?);
    }
    let admitted = MAX - PER_CLIENT;
    wait_until(
        Duration::from_secs(10),
        "the second flood beyond the cap refused",
        || stats.http_refusals(HttpRefusal::Limit) == (SECOND_FLOOD - admitted) as u64,
    )
    .await?;
    assert_eq!(stats.http_connections_open(), MAX as u64);
    wait_until(
        Duration::from_secs(10),
        "samples still arriving while the server is full",
        || samples() > before,
    )
    .await?;

    // Every admitted connection is closed by the header timeout; the refused ones got a 503.
    wait_until(
        Duration::from_secs(30),
        "every held connection closed",
        || stats.http_connections_open() == 0,
    )
    .await?;
    // hyper's header-read timer also runs on a connection that has sent nothing yet, so the
    // silent ones end the same way as the half-sent ones.
    assert_eq!(stats.http_timeouts(HttpTimeout::Header), MAX as u64);
    assert_eq!(stats.http_timeouts(HttpTimeout::Idle), 0);
    let mut busy = 0;
    for stream in flood.iter_mut().chain(second.iter_mut()) {
        let mut answer = Vec::new();
        within(
            Duration::from_secs(5),
            "the server closing",
            stream.read_to_end(&mut answer),
        )
        .await?
        .ok();
        busy += usize::from(answer.starts_with(b"HTTP/1.1 503"));
    }
    assert_eq!(busy, FLOOD - PER_CLIENT + SECOND_FLOOD - admitted);

    // The service is whole again, for the flooding address too, and nothing was lost.
    let (status, metrics) = http_get(http, "/metrics").await?;
    assert_eq!(status, 200);
    for line in [
        format!(
            "demolab_hub_http_refused_total{{reason=\"client_limit\"}} {}",
            FLOOD - PER_CLIENT
        ),
        format!(
            "demolab_hub_http_refused_total{{reason=\"connection_limit\"}} {}",
            SECOND_FLOOD - admitted
        ),
    ] {
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
    let report = within(Duration::from_secs(60), "the node", sender).await???;
    assert_eq!(report.sent, SAMPLES);
    wait_until(Duration::from_secs(20), "every sample at the twin", || {
        samples() == u64::from(SAMPLES)
    })
    .await?;
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

/// The lab gateway's ops endpoint (its status page is meant for the lab network): one laptop
/// holding connections open gets no more than its share, the rest of the lab is still served,
/// half-sent requests are closed by the header timeout, and the gateway counts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_ops_endpoint_caps_one_client_and_closes_half_sent_requests()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = demolab_tests::start_hub(data.path()).await?;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let gateway = demolab_tests::start_gateway(
        hub.mqtt_addr().port(),
        "lab-a",
        "gw-1",
        &data.path().join("buffer"),
        &cancel,
    )
    .await?;
    let ops = demolab_tests::serve_ops(&gateway, "lab-a", "gw-1", &cancel).await?;
    let per_client = gateway::ops::OPS_LIMITS.max_connections_per_client;
    let laptop = Ipv4Addr::new(127, 0, 0, 3);
    let staff = Ipv4Addr::new(127, 0, 0, 4);

    // The laptop opens its share and sends half a request on each.
    let mut held = Vec::new();
    for _ in 0..per_client {
        let mut stream = connect_from(laptop, ops).await?;
        stream
            .write_all(b"GET /api/v1/machines HTTP/1.1\r\nHost: x\r\n")
            .await?;
        held.push(stream);
    }
    let metrics = |text: &str, line: &str| text.lines().any(|l| l == line);
    // Its next connection is refused at once with a 503 and counted.
    let mut refused = connect_from(laptop, ops).await?;
    let mut answer = String::new();
    within(
        Duration::from_secs(5),
        "the refusal",
        refused.read_to_string(&mut answer),
    )
    .await??;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    // Lab staff on another machine are served meanwhile.
    let (status, page) = get_from(staff, ops, "/").await?;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    let (_, text) = get_from(staff, ops, "/metrics").await?;
    assert!(
        metrics(
            &text,
            "demolab_gateway_http_refused_total{reason=\"client_limit\"} 1"
        ),
        "{text}"
    );

    // The half-sent requests are closed by the header timeout, each counted.
    for stream in &mut held {
        let mut rest = Vec::new();
        within(
            Duration::from_secs(15),
            "the header timeout",
            stream.read_to_end(&mut rest),
        )
        .await??;
    }
    let timed_out = format!("demolab_gateway_http_timeouts_total{{kind=\"header\"}} {per_client}");
    let (_, text) = get_from(staff, ops, "/metrics").await?;
    assert!(metrics(&text, &timed_out), "{text}");
    // And the laptop is welcome again.
    let (status, _) = get_from(laptop, ops, "/healthz").await?;
    assert_eq!(status, 200);

    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
