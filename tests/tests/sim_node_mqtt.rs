//! A simulated node (real firmware core + CNC mill model) against the hub's embedded broker,
//! observed by a plain MQTT client on the node uplink topics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hub::broker::{BrokerConfig, EmbeddedBroker};
use protocol::node_topic::{self, Direction};
use protocol::{AckResult, Command, CommandKind, Frame, MachineId, NodeId, Samples, Unit, codec};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use simulators::lab::{LabSpec, spawn_lab};
use simulators::node::{MqttNodeConfig, NodeReport, run_mqtt_node};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Generous for a loaded 2-core box; healthy runs take well under a second.
const DEADLINE: Duration = Duration::from_secs(20);
/// Published by the observer after the node is done; see `drain_until_marker`.
const MARKER_TOPIC: &str = "demolab/v1/node/ffffffffffffffff/up";
const MARKER: &[u8] = b"end-of-test";

/// A client subscribed to every node uplink, its event loop in its own task.
struct Observer {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<rumqttc::Publish>,
    _event_loop: AbortOnDrop,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Observer {
    /// Returns once the broker has granted the subscription, so nothing the node sends is missed.
    async fn connect(broker: &EmbeddedBroker, id: &str) -> Result<Self> {
        let addr = broker.local_addr();
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (suback_tx, mut suback) = mpsc::unbounded_channel();
        let (tx, incoming) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Polling on after an error would reconnect silently; a test wants to see the failure
            // as missing frames instead.
            while let Ok(event) = event_loop.poll().await {
                let test_listening = match event {
                    Event::Incoming(Packet::Publish(publish)) => tx.send(publish).is_ok(),
                    Event::Incoming(Packet::SubAck(ack)) => {
                        // Only the first SUBACK has a listener.
                        let _ = suback_tx.send(ack.return_codes);
                        true
                    }
                    _ => true,
                };
                if !test_listening {
                    return;
                }
            }
        });
        client
            .subscribe(node_topic::ALL_UP, QoS::AtLeastOnce)
            .await
            .context("queue the uplink subscription")?;
        let granted = timeout(DEADLINE, suback.recv())
            .await
            .context("timed out waiting for the observer's SUBACK")?
            .context("observer event loop ended before its SUBACK")?;
        ensure!(
            granted == [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            "subscription refused: {granted:?}"
        );
        Ok(Self {
            client,
            incoming,
            _event_loop: AbortOnDrop(task),
        })
    }

    /// The next frame on `node`'s uplink, decoded; other nodes' frames are skipped.
    async fn next_frame(&mut self, node: NodeId) -> Result<Frame> {
        let up = node_topic::format(node, Direction::Up);
        loop {
            let publish = timeout(DEADLINE, self.incoming.recv())
                .await
                .with_context(|| format!("timed out waiting for a frame from node {node}"))?
                .context("observer event loop ended")?;
            if publish.topic == up.as_str() {
                return codec::decode(&publish.payload)
                    .with_context(|| format!("undecodable payload on {}", publish.topic));
            }
        }
    }

    /// Every node frame that arrives before the observer's own end marker, per node.
    ///
    /// The marker is published only after the nodes' publishes were all acknowledged, and the
    /// broker routes a message before acknowledging it, so every node frame is queued for the
    /// observer ahead of the marker: anything missing now is lost, not late.
    async fn drain_until_marker(&mut self) -> Result<HashMap<NodeId, Vec<Frame>>> {
        self.client
            .publish(MARKER_TOPIC, QoS::AtLeastOnce, false, MARKER)
            .await
            .context("queue the end marker")?;
        let mut frames: HashMap<NodeId, Vec<Frame>> = HashMap::new();
        loop {
            let publish = timeout(DEADLINE, self.incoming.recv())
                .await
                .context("timed out waiting for the end marker")?
                .context("observer event loop ended")?;
            if publish.topic == MARKER_TOPIC && publish.payload.as_ref() == MARKER {
                return Ok(frames);
            }
            let (node, _) = node_topic::parse(&publish.topic)
                .with_context(|| format!("unexpected topic {}", publish.topic))?;
            let frame = codec::decode(&publish.payload)
                .with_context(|| format!("undecodable payload on {}", publish.topic))?;
            frames.entry(node).or_default().push(frame);
        }
    }

    /// Asserts `frames` are one node's Hello for `machine`, then samples `1..=count`;
    /// returns the samples.
    fn check_hello_then_samples(
        frames: &[Frame],
        node: NodeId,
        machine: &str,
        count: u32,
    ) -> Result<Vec<Samples>> {
        let Some((Frame::Hello(hello), rest)) = frames.split_first() else {
            bail!(
                "node {node}: the first frame is not a Hello: {:?}",
                frames.first()
            );
        };
        assert_eq!(hello.node, node);
        assert_eq!(hello.machine.as_ref().map(MachineId::as_str), Some(machine));
        assert_eq!(hello.metrics.len(), 5);
        assert_eq!(hello.metric(3).map(|m| m.unit), Some(Unit::StateCode));
        assert!(hello.metrics.iter().all(|m| m.period_ms == 1000));

        let samples: Vec<Samples> = rest
            .iter()
            .map(|frame| match frame {
                Frame::Samples(samples) => Ok(samples.clone()),
                other => bail!("node {node}: expected only samples after the Hello, got {other:?}"),
            })
            .collect::<Result<_>>()?;
        let seqs: Vec<u32> = samples.iter().map(|s| s.seq).collect();
        assert_eq!(
            seqs,
            (1..=count).collect::<Vec<_>>(),
            "node {node}: none missing, duplicated or reordered"
        );
        for s in &samples {
            assert_eq!(s.node, node);
            assert_eq!(
                s.uptime_ms,
                u64::from(s.seq) * 1000,
                "uptime is simulated time"
            );
            assert_eq!(s.readings.len(), 5);
        }
        Ok(samples)
    }
}

/// A TCP relay in front of the broker whose connections the test can cut, so a node's link
/// drops while the broker (and the relay's port) stay up.
struct Relay {
    addr: SocketAddr,
    cut: broadcast::Sender<()>,
    _accept: AbortOnDrop,
}

impl Relay {
    async fn start(broker: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = broadcast::channel(1);
        let cut_tx = cut.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Subscribed before the relay task runs, so a cut cannot slip past it.
                let mut cut_rx = cut_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(broker).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.recv() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            cut,
            _accept: AbortOnDrop(accept),
        })
    }

    /// Drops every connection open now; new ones are relayed as before.
    fn cut(&self) {
        let _ = self.cut.send(());
    }
}

async fn start_broker() -> Result<EmbeddedBroker> {
    Ok(EmbeddedBroker::start(BrokerConfig {
        bind: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?)
}

fn node_config(
    broker: &EmbeddedBroker,
    node: NodeId,
    machine: &str,
    tick: Duration,
    max: Option<u32>,
) -> Result<MqttNodeConfig> {
    let addr = broker.local_addr();
    Ok(MqttNodeConfig {
        node,
        machine: MachineId::new(machine)?,
        boot: 7,
        seed: 7,
        sample_period: Duration::from_secs(1),
        tick_interval: tick,
        max_samples: max,
        broker_host: addr.ip().to_string(),
        broker_port: addr.port(),
        login: None,
    })
}

async fn join(
    task: JoinHandle<Result<NodeReport, simulators::node::SimError>>,
) -> Result<NodeReport> {
    timeout(DEADLINE, task)
        .await
        .context("timed out waiting for the node to finish")??
        .context("node failed")
}

#[tokio::test]
async fn a_node_says_hello_then_delivers_every_sample_once_and_in_order() -> Result<()> {
    const SAMPLES: u32 = 300;
    let broker = start_broker().await?;
    let mut observer = Observer::connect(&broker, "observer-1").await?;
    let node = NodeId(0x5e11_0000_0000_0001);

    let config = node_config(&broker, node, "mill-7", Duration::ZERO, Some(SAMPLES))?;
    let report = join(tokio::spawn(run_mqtt_node(
        config,
        CancellationToken::new(),
    )))
    .await?;
    let mut frames = observer.drain_until_marker().await?;
    let frames = frames.remove(&node).unwrap_or_default();
    let samples = Observer::check_hello_then_samples(&frames, node, "mill-7", SAMPLES)?;
    assert_eq!(report.sent, SAMPLES);
    assert_eq!(report.last.as_ref(), samples.last());
    assert_eq!(
        (report.sessions, report.dropped, report.bad_frames),
        (1, 0, 0)
    );

    broker.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_node_answers_commands_and_survives_garbage_on_its_down_topic() -> Result<()> {
    let broker = start_broker().await?;
    let mut observer = Observer::connect(&broker, "observer-2").await?;
    let node = NodeId(0x5e11_0000_0000_0002);
    let cancel = CancellationToken::new();
    let config = node_config(&broker, node, "mill-8", Duration::from_millis(10), None)?;
    let task = tokio::spawn(run_mqtt_node(config, cancel.clone()));

    // The node says Hello only once its down-topic subscription stands.
    let first = observer.next_frame(node).await?;
    ensure!(matches!(first, Frame::Hello(_)), "first frame: {first:?}");

    let down = node_topic::format(node, Direction::Down);
    let command = |id, kind| codec::encode_to_vec(&Frame::Command(Command { node, id, kind }));
    for payload in [
        b"not a frame".to_vec(),
        command(1, CommandKind::RequestHello)?,
        command(
            2,
            CommandKind::SetPeriod {
                index: None,
                period_ms: 500,
            },
        )?,
    ] {
        observer
            .client
            .publish(down.as_str(), QoS::AtLeastOnce, false, payload)
            .await?;
    }

    // Expected, in order, between the samples: Ack 1, the requested Hello, Ack 2.
    let mut replies = Vec::new();
    let mut after_set_period = Vec::new();
    while after_set_period.len() < 2 {
        match observer.next_frame(node).await? {
            Frame::Samples(s) if replies.len() == 3 => after_set_period.push(s.uptime_ms),
            Frame::Samples(_) => {}
            other => replies.push(other),
        }
    }
    let acks: Vec<_> = replies
        .iter()
        .filter_map(|f| match f {
            Frame::Ack(ack) => Some((ack.command_id, ack.result)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [(1, AckResult::Ok), (2, AckResult::Ok)]);
    assert!(
        matches!(&replies[1], Frame::Hello(h) if h.node == node && h.metrics.len() == 5),
        "the requested Hello follows its Ack: {replies:?}"
    );
    assert_eq!(
        after_set_period[1] - after_set_period[0],
        500,
        "samples follow the new period"
    );

    cancel.cancel();
    let report = join(task).await?;
    assert_eq!((report.commands_handled, report.bad_frames), (2, 1));
    broker.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_node_reconnects_and_says_hello_again_when_its_link_drops() -> Result<()> {
    let broker = start_broker().await?;
    let mut observer = Observer::connect(&broker, "observer-4").await?;
    let relay = Relay::start(broker.local_addr()).await?;
    let node = NodeId(0x5e11_0000_0000_0004);
    let cancel = CancellationToken::new();
    let mut config = node_config(&broker, node, "mill-9", Duration::from_millis(10), None)?;
    config.broker_host = relay.addr.ip().to_string();
    config.broker_port = relay.addr.port();
    let task = tokio::spawn(run_mqtt_node(config, cancel.clone()));

    let first = observer.next_frame(node).await?;
    ensure!(matches!(first, Frame::Hello(_)), "first frame: {first:?}");
    let mut last_seq = loop {
        if let Frame::Samples(s) = observer.next_frame(node).await? {
            break s.seq;
        }
    };
    relay.cut();

    // Samples queued before the drop may still come out ahead of the new session's Hello.
    loop {
        match observer.next_frame(node).await? {
            Frame::Hello(_) => break,
            Frame::Samples(s) => last_seq = s.seq,
            other => bail!("unexpected frame before the second Hello: {other:?}"),
        }
    }
    let resumed = loop {
        if let Frame::Samples(s) = observer.next_frame(node).await? {
            break s.seq;
        }
    };
    assert!(
        resumed > last_seq,
        "numbering continues across sessions: {resumed} after {last_seq}"
    );

    cancel.cancel();
    let report = join(task).await?;
    assert_eq!(report.sessions, 2);
    broker.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_lab_runs_one_node_per_machine() -> Result<()> {
    const SAMPLES: u32 = 20;
    let broker = start_broker().await?;
    let mut observer = Observer::connect(&broker, "observer-3").await?;
    let spec = LabSpec {
        machines: vec![
            (MachineId::new("mill-a")?, NodeId(0xa), 1),
            (MachineId::new("mill-b")?, NodeId(0xb), 2),
        ],
        sample_period: Duration::from_secs(1),
        tick_interval: Duration::ZERO,
        max_samples: Some(SAMPLES),
    };
    let addr = broker.local_addr();
    let mut nodes = spawn_lab(
        &spec,
        &addr.ip().to_string(),
        addr.port(),
        &CancellationToken::new(),
    );

    let mut reports = HashMap::new();
    while let Some(joined) = timeout(DEADLINE, nodes.join_next())
        .await
        .context("timed out waiting for the lab")?
    {
        let report = joined?.context("lab node failed")?;
        reports.insert(report.node, report.sent);
    }
    assert_eq!(
        reports,
        HashMap::from([(NodeId(0xa), SAMPLES), (NodeId(0xb), SAMPLES)])
    );

    // Each node's uplink carries its own machine and all its samples.
    let frames = observer.drain_until_marker().await?;
    for (machine, node, _) in &spec.machines {
        let frames = frames.get(node).map(Vec::as_slice).unwrap_or_default();
        Observer::check_hello_then_samples(frames, *node, machine.as_str(), SAMPLES)?;
    }
    broker.shutdown().await?;
    Ok(())
}

/// `demolab-sim --username … --password-env …`: a simulated node on a broker that takes no
/// anonymous clients logs in with a `simulator` account and delivers every sample.
#[tokio::test]
async fn a_node_with_a_simulator_login_delivers_on_a_broker_that_wants_one() -> Result<()> {
    const SAMPLES: u32 = 20;
    let access = broker::access::AccessConfig::parse(&format!(
        "[[users]]\nname = \"sim\"\npassword_hash = \"{}\"\nrole = \"simulator\"\n\n\
         [[users]]\nname = \"viewer\"\npassword_hash = \"{}\"\nrole = \"viewer\"\n",
        demolab_tests::cheap_password_hash("sim-pw")?,
        demolab_tests::cheap_password_hash("viewer-pw")?,
    ))?;
    let broker = EmbeddedBroker::start(BrokerConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        access: Some(access),
        ..BrokerConfig::default()
    })
    .await?;
    let addr = broker.local_addr();
    let mut options = MqttOptions::new("watcher", addr.ip().to_string(), addr.port());
    options.set_credentials("viewer", "viewer-pw");
    let (watcher, mut events) = AsyncClient::new(options, 64);
    watcher
        .subscribe(node_topic::ALL_UP, QoS::AtLeastOnce)
        .await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = seen_tx.send(p.payload);
                }
                _ => {}
            }
        }
    });
    timeout(DEADLINE, subscribed).await??;

    let mut config = node_config(
        &broker,
        NodeId(0x51),
        "mill-sim",
        Duration::ZERO,
        Some(SAMPLES),
    )?;
    config.login = Some(simulators::node::NodeLogin {
        username: "sim".into(),
        password: "sim-pw".into(),
    });
    let report = join(tokio::spawn(run_mqtt_node(
        config,
        CancellationToken::new(),
    )))
    .await?;
    assert_eq!(
        (report.sent, report.dropped, report.sessions),
        (SAMPLES, 0, 1)
    );
    let mut samples = Vec::new();
    while samples.len() < SAMPLES as usize {
        let payload = timeout(DEADLINE, seen.recv())
            .await?
            .context("watcher ended")?;
        if let Frame::Samples(s) = codec::decode(&payload)? {
            samples.push(s.seq);
        }
    }
    assert_eq!(samples, (1..=SAMPLES).collect::<Vec<_>>());
    broker.shutdown().await?;
    Ok(())
}
