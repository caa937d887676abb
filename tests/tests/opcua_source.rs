//! The gateway's OPC UA source end to end: the simulated OPC UA machine tool → gateway
//! (subscription) → pipeline → disk buffer → Sparkplug → hub twin, once anonymous over `None`
//! and once with a user name and password over Basic256Sha256 SignAndEncrypt.
//!
//! The simulator steps a counter only when the test says so, so every change is known. The
//! connection is cut by stopping the server and starting a new one on the same port. What is
//! guaranteed, and asserted exactly: every change made while a session exists reaches the twin
//! once and in order, with its unit; after the cut the first value is the server's current one
//! (changes made while no server session existed are lost, as OPC UA defines) and every later
//! change arrives once, in order; nothing arrives twice and nothing goes backwards.
//! The server's clock runs a minute behind: the twin carries the server's source timestamp.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use demolab_tests::{CuttableProxy, gateway_config, start_gateway_with, start_hub, wait_until};
use gateway::source::opcua::{Mode, OpcUaMachine, OpcUaMetric, OpcUaServer, Policy, Secret};
use gateway::{GatewayHandle, OpcUaLinkEvent};
use hub::Hub;
use simulators::machines::MachineKind;
use simulators::opcua::{OpcUaSimConfig, RunningOpcUaSim, start_opcua_sim};
use tokio_util::sync::CancellationToken;

const LAB: &str = "lab-opc";
const MACHINE: &str = "cnc-opc";
const COUNT: &str = "process.count";
/// Changes before the cut.
const BEFORE: u64 = 20;
/// The counter's value when the new server starts; 21..=24 "happened" while it was down.
const RESTART_AT: u64 = 25;
/// The last change after the cut.
const AFTER: u64 = 40;
/// How far the simulated machine's clock runs behind the real one.
const CLOCK_BEHIND_MS: i64 = 60_000;

#[derive(Clone, Copy)]
enum Security {
    AnonymousNone,
    UserSignAndEncrypt,
}

fn sim_config(security: Security, dir: &std::path::Path, listen: &str) -> OpcUaSimConfig {
    let mut config = OpcUaSimConfig::new(MACHINE, dir.join("server-pki"));
    config.listen = listen.to_owned();
    config.update_interval = None;
    // A machine clock a minute behind: the twin must carry the machine's time, not the
    // gateway's time of receipt.
    config.clock_offset_ms = -CLOCK_BEHIND_MS;
    if let Security::UserSignAndEncrypt = security {
        config.plain = false;
        config.secure = true;
        config.anonymous = false;
        config.user = Some(("operator".into(), "s3cret-pass".into()));
    }
    config
}

fn source(
    security: Security,
    sim: &RunningOpcUaSim,
    dir: &std::path::Path,
) -> anyhow::Result<OpcUaServer> {
    let (spindle, unit) = MachineKind::CncMill.build(1).metrics()[0];
    let mut server = OpcUaServer::new(
        "sim",
        sim.endpoint_url(),
        vec![OpcUaMachine {
            machine: MACHINE.parse()?,
            metrics: vec![
                OpcUaMetric {
                    node_id: sim.node_id("Counter"),
                    metric: COUNT.parse()?,
                    unit: "count".into(),
                },
                OpcUaMetric {
                    node_id: sim.node_id(spindle),
                    metric: spindle.parse()?,
                    unit: unit.symbol().into(),
                },
            ],
        }],
    );
    server.pki_dir = dir.join("gateway-pki");
    server.trust_server_certs = true;
    server.publishing_interval_ms = 100;
    // Every change, not samples of them: the simulator grants 0.
    server.sampling_interval_ms = 0;
    if let Security::UserSignAndEncrypt = security {
        server.security_policy = Policy::Basic256Sha256;
        server.security_mode = Mode::SignAndEncrypt;
        server.username = Some("operator".into());
        server.password = Some(Secret("s3cret-pass".into()));
    }
    Ok(server)
}

/// Every counter value the twin takes, in the order it takes them.
struct CounterValues {
    seen: Arc<Mutex<Vec<f64>>>,
    collector: tokio::task::JoinHandle<()>,
}

impl CounterValues {
    fn collect(hub: &Hub) -> Self {
        let seen: Arc<Mutex<Vec<f64>>> = Arc::default();
        let mut changes = hub.twins().subscribe();
        let collector = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok(change) = changes.recv().await {
                    if change.machine == MACHINE
                        && let Some(v) = change.values.get(COUNT)
                    {
                        seen.lock().unwrap_or_else(PoisonError::into_inner).push(*v);
                    }
                }
            })
        };
        Self { seen, collector }
    }

    fn seen(&self) -> Vec<f64> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A condition for `wait_until`: the twin has taken `value`.
    fn has(&self, value: u64) -> impl FnMut() -> bool + use<> {
        let seen = self.seen.clone();
        move || {
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&(value as f64))
        }
    }
}

impl Drop for CounterValues {
    fn drop(&mut self) {
        self.collector.abort();
    }
}

/// Steps the simulator's counter up to `last` and waits until the twin has taken it.
async fn step_and_wait(
    sim: &RunningOpcUaSim,
    counter: &CounterValues,
    last: u64,
    what: &str,
) -> anyhow::Result<()> {
    while sim.counter() < last {
        sim.step();
    }
    wait_until(Duration::from_secs(20), what, counter.has(last)).await
}

/// A gateway of lab `LAB` on `hub` whose only source is the OPC UA `server`.
async fn start_gateway_on(
    hub: &Hub,
    data: &std::path::Path,
    server: OpcUaServer,
    cancel: &CancellationToken,
) -> anyhow::Result<GatewayHandle> {
    let mut config = gateway_config(hub.mqtt_addr().port(), LAB, "gw-opc", &data.join("buffer"))?;
    config.opcua = vec![server];
    start_gateway_with(config, cancel).await
}

async fn every_change_arrives_once_in_order_across_a_cut(security: Security) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let cancel = CancellationToken::new();
    let _stop_on_failure = cancel.clone().drop_guard();

    let sim = start_opcua_sim(
        sim_config(security, data.path(), "127.0.0.1:0"),
        cancel.clone(),
    )
    .await?;
    let listen = sim
        .endpoint_url()
        .trim_start_matches("opc.tcp://")
        .trim_end_matches('/')
        .to_owned();

    let counter = CounterValues::collect(&hub);
    let seen_now = || counter.seen();
    let has = |value: u64| counter.has(value);

    let gateway = start_gateway_on(
        &hub,
        data.path(),
        source(security, &sim, data.path())?,
        &cancel,
    )
    .await?;
    let stats = gateway.stats().clone();

    // The subscription's first report is the current value, 0.
    wait_until(Duration::from_secs(30), "the initial counter value", has(0)).await?;
    for _ in 1..=BEFORE {
        sim.step();
    }
    wait_until(
        Duration::from_secs(20),
        "the last change before the cut",
        has(BEFORE),
    )
    .await?;
    let before: Vec<f64> = (0..=BEFORE).map(|v| v as f64).collect();
    assert_eq!(seen_now(), before, "every change once, in order");

    // The cut: the server goes away and a new one takes its port.
    sim.stop().await;
    wait_until(
        Duration::from_secs(20),
        "the gateway to notice the cut",
        || stats.snapshot().opcua_link(OpcUaLinkEvent::ConnectionLost) >= 1,
    )
    .await?;
    let mut restarted = sim_config(security, data.path(), &listen);
    restarted.counter_start = RESTART_AT;
    let sim = start_opcua_sim(restarted, cancel.clone()).await?;
    wait_until(
        Duration::from_secs(60),
        "the current value after the reconnect",
        has(RESTART_AT),
    )
    .await?;
    for _ in RESTART_AT + 1..=AFTER {
        sim.step();
    }
    wait_until(
        Duration::from_secs(20),
        "the last change after the cut",
        has(AFTER),
    )
    .await?;

    let mut expected = before;
    expected.extend((RESTART_AT..=AFTER).map(|v| v as f64));
    assert_eq!(
        seen_now(),
        expected,
        "no duplicates, no reordering; the gap is exactly what changed while the server was down"
    );
    let snapshot = stats.snapshot();
    assert!(
        snapshot.opcua_link(OpcUaLinkEvent::NewSession) >= 1,
        "{snapshot:?}"
    );
    assert_eq!(snapshot.dropped(gateway::DropReason::OpcUaBadStatus), 0);

    let key = hub::twin::TwinKey {
        lab: LAB.parse()?,
        machine: MACHINE.parse()?,
    };
    let twin = hub
        .twins()
        .get(&key)
        .ok_or_else(|| anyhow::anyhow!("no twin"))?;
    let count = &twin.features["process"].properties["count"];
    assert_eq!(count.unit, "count");
    assert_eq!(count.reported, Some(AFTER as f64));
    assert_eq!(
        count.timestamp,
        Some(sim.stamped_unix_ms()),
        "the server's source timestamp, through the pipeline, Sparkplug and the hub"
    );
    let wall_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    assert!(
        count
            .timestamp
            .is_some_and(|t| t + CLOCK_BEHIND_MS as u64 / 2 < wall_ms),
        "dated by the machine's clock, a minute behind: {:?} vs now {wall_ms}",
        count.timestamp
    );
    let (spindle, unit) = MachineKind::CncMill.build(1).metrics()[0];
    let (feature, property) = spindle
        .split_once('.')
        .ok_or_else(|| anyhow::anyhow!("metric without a feature"))?;
    assert_eq!(
        twin.features[feature].properties[property].unit,
        unit.symbol()
    );

    cancel.cancel();
    sim.stop().await;
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_over_none_every_change_arrives_once_in_order_across_a_cut() -> anyhow::Result<()>
{
    every_change_arrives_once_in_order_across_a_cut(Security::AnonymousNone).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_over_sign_and_encrypt_every_change_arrives_once_in_order_across_a_cut()
-> anyhow::Result<()> {
    every_change_arrives_once_in_order_across_a_cut(Security::UserSignAndEncrypt).await
}

/// How an operator brings in a real machine that checks who logs in: the gateway holds a user
/// certificate the server knows (an X.509 identity over Basic256Sha256 Sign) and trusts no
/// server until told. Its first attempt is refused and leaves the server's certificate in
/// `pki_dir/rejected/`; moved to `pki_dir/trusted/`, the next attempt connects and every change
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_certificate_logs_in_once_the_operator_trusts_the_servers_certificate()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let cancel = CancellationToken::new();
    let _stop_on_failure = cancel.clone().drop_guard();

    let (user_certificate, user_key) =
        simulators::opcua::user_certificate(&data.path().join("users"), "cell-gateway")?;
    let mut sim_config = sim_config(Security::AnonymousNone, data.path(), "127.0.0.1:0");
    sim_config.plain = false;
    sim_config.secure = true;
    sim_config.anonymous = false;
    sim_config.x509_user = Some(("cell-gateway".into(), user_certificate.clone()));
    let sim = start_opcua_sim(sim_config, cancel.clone()).await?;

    let mut server = source(Security::AnonymousNone, &sim, data.path())?;
    server.security_policy = Policy::Basic256Sha256;
    server.security_mode = Mode::Sign;
    server.trust_server_certs = false;
    // Absolute paths: `pki_dir` is only the base of relative ones.
    server.user_certificate = Some(user_certificate);
    server.user_private_key = Some(user_key);
    let pki = server.pki_dir.clone();
    let gateway = start_gateway_on(&hub, data.path(), server, &cancel).await?;
    let stats = gateway.stats().clone();

    let certificates_in = |dir: std::path::PathBuf| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "der"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // The client files the certificate under rejected/ while the attempt is still failing, so
    // the failed-connect counter can lag the file by a moment: wait for both.
    wait_until(
        Duration::from_secs(60),
        "the untrusted server's certificate in rejected/ and a failed connect counted",
        || {
            !certificates_in(pki.join("rejected")).is_empty()
                && stats.snapshot().opcua_link(OpcUaLinkEvent::ConnectFailed) >= 1
        },
    )
    .await?;
    let key = hub::twin::TwinKey {
        lab: LAB.parse()?,
        machine: MACHINE.parse()?,
    };
    assert!(
        hub.twins().get(&key).is_none(),
        "no data from a server nobody trusted"
    );

    std::fs::create_dir_all(pki.join("trusted"))?;
    for rejected in certificates_in(pki.join("rejected")) {
        let name = rejected
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("a file name"))?;
        std::fs::rename(&rejected, pki.join("trusted").join(name))?;
    }
    let counter = || {
        hub.twins().get(&key).and_then(|twin| {
            twin.features
                .get("process")?
                .properties
                .get("count")?
                .reported
        })
    };
    wait_until(
        Duration::from_secs(60),
        "the counter's first value once the server is trusted",
        || counter() == Some(0.0),
    )
    .await?;
    for _ in 0..3 {
        sim.step();
    }
    wait_until(Duration::from_secs(20), "three changes", || {
        counter() == Some(3.0)
    })
    .await?;
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.dropped(gateway::DropReason::OpcUaDuplicate), 0);

    cancel.cancel();
    sim.stop().await;
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

/// A network blip, not a restart: the server keeps running and keeps its session while the
/// path to it is cut (a relay, advertised as the server's endpoint, drops every connection and
/// refuses new ones). The client reactivates its session, but the server then answers the
/// publish requests left from the old connection into that dead connection and async-opcua 0.19
/// never republishes them, so the gateway replaces a reactivated session with a new one: the
/// current value arrives at once, then every change, once and in order. Changes made while the
/// path was down are lost, as across a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_network_blip_the_current_value_and_every_later_change_arrive() -> anyhow::Result<()>
{
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let cancel = CancellationToken::new();
    let _stop_on_failure = cancel.clone().drop_guard();

    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut config = sim_config(Security::AnonymousNone, data.path(), "127.0.0.1:0");
    config.advertise = Some(relay.local_addr()?);
    let sim = start_opcua_sim(config, cancel.clone()).await?;
    let proxy = CuttableProxy::start_on(relay, sim.local_addr())?;

    let counter = CounterValues::collect(&hub);
    let seen_now = || counter.seen();
    let has = |value: u64| counter.has(value);

    let gateway = start_gateway_on(
        &hub,
        data.path(),
        source(Security::AnonymousNone, &sim, data.path())?,
        &cancel,
    )
    .await?;
    let stats = gateway.stats().clone();
    wait_until(Duration::from_secs(30), "the initial counter value", has(0)).await?;
    step_and_wait(&sim, &counter, 5, "the changes before the blip").await?;

    proxy.cut();
    wait_until(
        Duration::from_secs(20),
        "the gateway to notice the blip",
        || stats.snapshot().opcua_link(OpcUaLinkEvent::ConnectionLost) >= 1,
    )
    .await?;
    for _ in 6..=10 {
        sim.step();
    }
    proxy.restore();
    wait_until(
        Duration::from_secs(60),
        "the current value from the replacing session",
        has(10),
    )
    .await?;
    step_and_wait(&sim, &counter, 15, "the changes after the blip").await?;

    let mut expected: Vec<f64> = (0..=5).map(|v| v as f64).collect();
    expected.extend((10..=15).map(|v| v as f64));
    assert_eq!(
        seen_now(),
        expected,
        "before the blip every change; then the current value; then every change, once"
    );
    let snapshot = stats.snapshot();
    assert!(
        snapshot.opcua_link(OpcUaLinkEvent::Resumed) >= 1,
        "the client reactivated its session before the gateway replaced it: {snapshot:?}"
    );

    cancel.cancel();
    sim.stop().await;
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
