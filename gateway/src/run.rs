//! The IO shell: starts the sources (MQTT nodes, serial ports, Modbus devices, OPC UA
//! servers), the uplink session and the core task, wired by bounded channels only.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::NodeId;
use protocol::node_topic::{self, Direction};
use protocol::sparkplug::BdSeq;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use crate::buffer::{BufferError, DiskBuffer};
use crate::config::{GatewayConfig, MqttEndpoint};
use crate::core::{Core, SEND_WINDOW};
use crate::edge::EdgeNode;
use crate::pipeline::{Action, Pipeline};
use crate::registry::NodeRegistry;
use crate::source::modbus::run_modbus_device;
use crate::source::opcua::run_opcua_server;
use crate::source::serial::spawn_serial;
use crate::stats::{DropReason, GatewayStats};
use crate::status::LocalStatus;
use crate::uplink::{self, UplinkSettings};

/// Frames waiting for the core; when full, the sources stop reading (TCP back-pressure to the
/// broker, blocked reads on serial ports), so nothing is dropped here.
const FRAME_CHANNEL: usize = 1024;
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why a gateway could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The disk buffer could not be opened.
    #[error("cannot open the disk buffer: {0}")]
    Buffer(#[from] BufferError),
    /// A task ended abnormally.
    #[error("gateway task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Wall clock in ms since the Unix epoch; the only place the gateway reads it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A node's MQTT message, kept whole so it can be acknowledged once it is durable.
#[derive(Debug)]
pub(crate) struct NodeBytes {
    pub node: NodeId,
    pub publish: Publish,
}

/// The sources are receiving and the first birth is out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Readiness {
    pub southbound: bool,
    pub uplink: bool,
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    stats: Arc<GatewayStats>,
    status: Arc<LocalStatus>,
    ready: watch::Receiver<Readiness>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl GatewayHandle {
    /// The gateway's counters.
    pub fn stats(&self) -> &Arc<GatewayStats> {
        &self.stats
    }

    /// The lab's local view: machines' last values and the link to the region.
    pub fn status(&self) -> &Arc<LocalStatus> {
        &self.status
    }

    /// Waits until the sources are receiving (the southbound MQTT session is subscribed), whether
    /// or not the hub is reachable yet.
    pub async fn sources_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| r.southbound).await;
    }

    /// Waits until the southbound MQTT session is subscribed and the NBIRTH is published.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| r.southbound && r.uplink).await;
    }

    /// Stops the gateway: flushes the buffer, publishes NDEATH, disconnects, waits for its tasks.
    pub async fn shutdown(mut self) -> Result<(), GatewayError> {
        self.cancel.cancel();
        let joined = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while let Some(result) = self.tasks.join_next().await {
                result?;
            }
            Ok::<_, GatewayError>(())
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(_) => {
                warn!("gateway tasks did not stop in time; aborting them");
                self.tasks.abort_all();
                Ok(())
            }
        }
    }
}

/// Starts a gateway; it runs until `cancel` fires or [`GatewayHandle::shutdown`] is called.
pub fn start(
    config: GatewayConfig,
    cancel: CancellationToken,
) -> Result<GatewayHandle, GatewayError> {
    let stats = Arc::new(GatewayStats::default());
    let status = Arc::new(LocalStatus::new(now_ms()));
    let lab = config.lab.clone();
    let gateway = config.gateway.clone();
    // Every log line of this gateway's tasks carries its lab and gateway id.
    let span = tracing::info_span!("gateway", %lab, %gateway);
    let _entered = span.enter();

    let (buffer, report) = DiskBuffer::open_with(config.buffer_fs.make(), config.buffer.clone())?;
    if report.recovered > 0 || !report.quarantined.is_empty() {
        info!(
            recovered = report.recovered,
            quarantined = report.quarantined.len(),
            corrupt_records = report.corrupt_records,
            "disk buffer reopened"
        );
    }
    for _ in 0..report.corrupt_records {
        stats.dropped(DropReason::BufferCorrupt);
    }

    let (ready_tx, ready) = watch::channel(Readiness {
        southbound: config.southbound.is_none(),
        uplink: false,
    });
    let ready_tx = Arc::new(ready_tx);
    let mut tasks = JoinSet::new();

    // MQTT nodes: a persistent session with manual acks, so the broker keeps redelivering a
    // message until the core has made it durable.
    let south_endpoint = config
        .southbound
        .clone()
        .unwrap_or_else(|| config.uplink.clone());
    let mut south_options = mqtt_options(format!("{gateway}-south"), &south_endpoint);
    // Without a lab broker the south client talks to the hub's broker, as the uplink does.
    let (south_login, south_tls) = match config.southbound {
        Some(_) => (
            config.southbound_credentials.as_ref(),
            config.southbound_tls.as_ref(),
        ),
        None => (
            config.uplink_credentials.as_ref(),
            config.uplink_tls.as_ref(),
        ),
    };
    if let Some(login) = south_login {
        south_options.set_credentials(login.username.clone(), login.password.clone());
    }
    if let Some(tls) = south_tls {
        use_tls(&mut south_options, tls);
    }
    south_options.set_clean_session(false);
    south_options.set_manual_acks(true);
    let (south_client, south_loop) = AsyncClient::new(south_options, 256);
    let (mqtt_tx, mqtt_rx) = mpsc::channel(FRAME_CHANNEL);
    if config.southbound.is_some() {
        tasks.spawn(
            southbound(
                south_client.clone(),
                south_loop,
                config.southbound_filters(),
                mqtt_tx,
                ready_tx.clone(),
                cancel.clone(),
            )
            .instrument(span.clone()),
        );
    }

    let (others_tx, others_rx) = mpsc::channel(FRAME_CHANNEL);
    let serial = config.serial.clone().map(|serial_config| {
        let (handle, mut serial_tasks) = spawn_serial(
            serial_config,
            others_tx.clone(),
            stats.clone(),
            cancel.clone(),
        );
        tasks.spawn(
            async move { while serial_tasks.join_next().await.is_some() {} }
                .instrument(span.clone()),
        );
        handle
    });
    for device in config.modbus.clone() {
        tasks.spawn(
            run_modbus_device(device, others_tx.clone(), stats.clone(), cancel.clone())
                .instrument(span.clone()),
        );
    }
    for server in config.opcua.clone() {
        tasks.spawn(
            run_opcua_server(server, others_tx.clone(), stats.clone(), cancel.clone())
                .instrument(span.clone()),
        );
    }
    drop(others_tx);

    let edge = EdgeNode::new(lab.clone(), gateway.clone(), BdSeq::new(0));
    let (uplink_tx, uplink_rx) = mpsc::channel(SEND_WINDOW * 2);
    let (uplink_events_tx, uplink_events_rx) = mpsc::channel(SEND_WINDOW * 2);
    let settings = UplinkSettings {
        broker: config.uplink.clone(),
        failover: config.uplink_failover.clone(),
        subscribe_qos: match config.uplink_subscribe_qos {
            crate::config::SubscribeQos::AtMostOnce => QoS::AtMostOnce,
            crate::config::SubscribeQos::AtLeastOnce => QoS::AtLeastOnce,
        },
        client_id: format!("{gateway}-uplink"),
        primary_host: config.primary_host.clone(),
        credentials: config.uplink_credentials.clone(),
        tls: config.uplink_tls.clone(),
        inflight: SEND_WINDOW as u16,
    };
    // The uplink task outlives the core's cancellation: it must still carry the NDEATH out.
    tasks.spawn(
        uplink::run(
            settings,
            edge.clone(),
            uplink_rx,
            uplink_events_tx,
            CancellationToken::new(),
        )
        .instrument(span.clone()),
    );

    // Nodes met before a restart are known at once: their redelivered samples are buffered.
    let registry = NodeRegistry::open(&config.buffer.dir);
    let mut pipeline = Pipeline::new(config.nodes.clone(), config.accept_unconfigured_nodes);
    let mut edge = edge;
    for hello in registry.hellos() {
        for action in pipeline.restore(hello.clone()) {
            if let Action::BirthMachine {
                machine,
                boot,
                metrics,
                ..
            } = action
            {
                edge.know_machine(&machine, Some(boot), &metrics);
            }
        }
    }
    let (read_log, ack_log) = Core::io_log_limits();
    let core = Core {
        pipeline,
        registry,
        edge,
        buffer,
        stats: stats.clone(),
        status: status.clone(),
        uplink: uplink_tx,
        south: south_client,
        serial,
        ready: ready_tx,
        liveness_timeout: config.liveness_timeout,
        commit_batch: config.commit_batch.max(1),
        commit_wait: config.commit_wait,
        host_aware: config.primary_host.is_some(),
        session: None,
        host_online: false,
        inflight: 0,
        last_seen: Default::default(),
        acks: Default::default(),
        sync: None,
        ledger_written: std::time::Instant::now(),
        per_source: Default::default(),
        pending: Default::default(),
        bad_bursts: Default::default(),
        held: Default::default(),
        storage: Default::default(),
        read_log,
        ack_log,
    };
    tasks.spawn(
        core.run(mqtt_rx, others_rx, uplink_events_rx, cancel.clone())
            .instrument(span.clone()),
    );
    info!(uplink = %format!("{}:{}", config.uplink.host, config.uplink.port),
        buffer = %config.buffer.dir.display(), "gateway started");
    Ok(GatewayHandle {
        stats,
        status,
        ready,
        tasks,
        cancel,
    })
}

/// Makes `options` connect over TLS (rustls on ring, trusting only the configured CA).
pub(crate) fn use_tls(options: &mut MqttOptions, tls: &broker::tls::ClientTls) {
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls.rustls_config()),
    ));
}

fn mqtt_options(client_id: String, endpoint: &MqttEndpoint) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_max_packet_size(1 << 20, 1 << 20);
    options
}

async fn southbound(
    client: AsyncClient,
    mut events: EventLoop,
    filters: Vec<String>,
    frames: mpsc::Sender<NodeBytes>,
    ready: Arc<watch::Sender<Readiness>>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            () = cancel.cancelled() => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if filters.is_empty() {
                    warn!("no nodes configured and unconfigured nodes refused: nothing to receive");
                    ready.send_modify(|r| r.southbound = true);
                    continue;
                }
                let subscriptions = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(err) = client.try_subscribe_many(subscriptions) {
                    error!(%err, "cannot subscribe to node uplinks");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                ready.send_modify(|r| r.southbound = true);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Some((node, Direction::Up)) = node_topic::parse(&publish.topic) else {
                    debug!(topic = %publish.topic, "ignoring a non-node topic");
                    // Nothing will ever want it; acknowledge so the broker stops redelivering.
                    let _ = client.try_ack(&publish);
                    continue;
                };
                if frames.send(NodeBytes { node, publish }).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(err) => {
                if cancel.is_cancelled() {
                    return;
                }
                warn!(%err, "southbound MQTT connection lost; reconnecting");
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }
}
