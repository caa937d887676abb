//! The IO shell: two MQTT sessions (southbound to the nodes, uplink to the hub) and the task that
//! owns the pipeline and the Sparkplug session. The tasks talk over bounded channels only.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use protocol::node_topic::{self, Direction};
use protocol::sparkplug::{BdSeq, MessageType, Payload, Topic};
use protocol::{NodeId, codec};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use crate::config::{GatewayConfig, MqttEndpoint};
use crate::edge::{EdgeNode, Outgoing, is_rebirth_request};
use crate::pipeline::{Action, Pipeline};
use crate::stats::{DropReason, GatewayStats};

/// Frames waiting for the pipeline; when full, the southbound session stops reading (TCP
/// back-pressure to the broker), so nothing is dropped here.
const FRAME_CHANNEL: usize = 1024;
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
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

#[derive(Debug)]
struct NodeBytes {
    node: NodeId,
    bytes: bytes::Bytes,
}

#[derive(Debug)]
enum UplinkEvent {
    Connected { bd_seq: BdSeq },
    Disconnected,
    Rebirth,
}

/// Both MQTT sessions are subscribed and the first birth is out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Readiness {
    southbound: bool,
    uplink: bool,
}

/// A running gateway.
#[derive(Debug)]
pub struct GatewayHandle {
    stats: Arc<GatewayStats>,
    ready: watch::Receiver<Readiness>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl GatewayHandle {
    /// The gateway's counters.
    pub fn stats(&self) -> &Arc<GatewayStats> {
        &self.stats
    }

    /// Waits until both MQTT sessions are subscribed and the NBIRTH is published.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| r.southbound && r.uplink).await;
    }

    /// Asks the gateway to stop (publishing NDEATH) and waits for its tasks.
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

fn mqtt_options(client_id: String, endpoint: &MqttEndpoint) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    options.set_keep_alive(Duration::from_secs(15));
    // Sparkplug edge nodes use clean sessions; state is re-established by births.
    options.set_clean_session(true);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options
}

fn will_of(edge: &EdgeNode) -> LastWill {
    let death = edge.death(now_ms());
    LastWill::new(
        death.topic.to_string(),
        death.payload.encode_to_vec(),
        QoS::AtLeastOnce,
        false,
    )
}

/// Starts a gateway; it runs until `cancel` fires or [`GatewayHandle::shutdown`] is called.
pub fn start(config: GatewayConfig, cancel: CancellationToken) -> GatewayHandle {
    let stats = Arc::new(GatewayStats::default());
    let (ready_tx, ready) = watch::channel(Readiness::default());
    let ready_tx = Arc::new(ready_tx);
    let mut tasks = JoinSet::new();
    let lab = config.lab.clone();
    let gateway = config.gateway.clone();
    // Every log line of this gateway's tasks carries its lab and gateway id.
    let span = tracing::info_span!("gateway", %lab, %gateway);

    let south_options = mqtt_options(format!("{gateway}-south"), &config.southbound);
    let (south_client, south_loop) = AsyncClient::new(south_options, 256);
    let (frames_tx, frames_rx) = mpsc::channel(FRAME_CHANNEL);
    tasks.spawn(
        southbound(
            south_client.clone(),
            south_loop,
            config.southbound_filters(),
            frames_tx,
            ready_tx.clone(),
            cancel.clone(),
        )
        .instrument(span.clone()),
    );

    let edge = EdgeNode::new(lab.clone(), gateway.clone(), BdSeq::new(0));
    let mut up_options = mqtt_options(format!("{gateway}-uplink"), &config.uplink);
    up_options.set_last_will(will_of(&edge));
    let (up_client, up_loop) = AsyncClient::new(up_options, 1024);
    let (events_tx, events_rx) = mpsc::channel(16);
    let ncmd = Topic::node(&lab, MessageType::NCmd, &gateway).to_string();
    tasks.spawn(
        uplink(
            up_client.clone(),
            up_loop,
            edge.clone(),
            ncmd,
            events_tx,
            stats.clone(),
            cancel.clone(),
        )
        .instrument(span.clone()),
    );

    let core = Core {
        pipeline: Pipeline::new(config.nodes.clone(), config.accept_unconfigured_nodes),
        edge,
        connected: false,
        pending: VecDeque::new(),
        offline_queue: config.offline_queue.max(1),
        stats: stats.clone(),
        uplink: up_client,
        south: south_client,
        ready: ready_tx,
    };
    tasks.spawn(
        core.run(frames_rx, events_rx, cancel.clone())
            .instrument(span.clone()),
    );
    info!(%lab, %gateway, south = %format!("{}:{}", config.southbound.host, config.southbound.port),
        uplink = %format!("{}:{}", config.uplink.host, config.uplink.port), "gateway started");
    GatewayHandle {
        stats,
        ready,
        tasks,
        cancel,
    }
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
                    continue;
                };
                if frames
                    .send(NodeBytes {
                        node,
                        bytes: publish.payload,
                    })
                    .await
                    .is_err()
                {
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

async fn uplink(
    client: AsyncClient,
    mut events: EventLoop,
    mut edge: EdgeNode,
    ncmd_topic: String,
    to_core: mpsc::Sender<UplinkEvent>,
    stats: Arc<GatewayStats>,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            () = cancel.cancelled() => {
                // Keep polling briefly so the core's NDEATH and DISCONNECT reach the broker.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    loop {
                        match events.poll().await {
                            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }).await;
                return;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                stats.uplink_session();
                if let Err(err) = client.try_subscribe(ncmd_topic.clone(), QoS::AtLeastOnce) {
                    error!(%err, "cannot subscribe to NCMD");
                }
                if to_core
                    .send(UplinkEvent::Connected {
                        bd_seq: edge.bd_seq(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == ncmd_topic => {
                match Payload::decode(publish.payload.as_ref()) {
                    Ok(payload) if is_rebirth_request(&payload) => {
                        let _ = to_core.send(UplinkEvent::Rebirth).await;
                    }
                    Ok(_) => debug!("ignoring an NCMD without a rebirth request"),
                    Err(err) => warn!(%err, "undecodable NCMD payload"),
                }
            }
            Ok(_) => {}
            Err(err) => {
                if cancel.is_cancelled() {
                    return;
                }
                warn!(%err, "uplink MQTT connection lost; reconnecting with a new bdSeq");
                let _ = to_core.send(UplinkEvent::Disconnected).await;
                // Every MQTT session gets its own bdSeq, and its Will must carry it.
                edge.set_bd_seq(edge.bd_seq().next());
                events.mqtt_options.set_last_will(will_of(&edge));
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }
}

/// The single owner of the pipeline and the Sparkplug session; no locks on the data path.
struct Core {
    pipeline: Pipeline,
    edge: EdgeNode,
    connected: bool,
    pending: VecDeque<Action>,
    offline_queue: usize,
    stats: Arc<GatewayStats>,
    uplink: AsyncClient,
    south: AsyncClient,
    ready: Arc<watch::Sender<Readiness>>,
}

impl Core {
    async fn run(
        mut self,
        mut frames: mpsc::Receiver<NodeBytes>,
        mut events: mpsc::Receiver<UplinkEvent>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(event) = events.recv() => self.on_uplink(event).await,
                Some(NodeBytes { node, bytes }) = frames.recv() => {
                    match self.pipeline.on_frame(node, &bytes, now_ms(), &self.stats) {
                        Ok(actions) => {
                            for action in actions {
                                self.act(action).await;
                            }
                        }
                        Err(err) => warn!(%node, reason = err.reason(), %err, "dropped a node frame"),
                    }
                }
                else => break,
            }
        }
        if self.connected {
            let death = self.edge.death(now_ms());
            self.publish(death).await;
        }
        let _ = self.uplink.disconnect().await;
        let _ = self.south.disconnect().await;
    }

    async fn on_uplink(&mut self, event: UplinkEvent) {
        match event {
            UplinkEvent::Connected { bd_seq } => {
                self.edge.set_bd_seq(bd_seq);
                self.birth().await;
                self.connected = true;
                self.ready.send_modify(|r| r.uplink = true);
                while let Some(action) = self.pending.pop_front() {
                    self.act(action).await;
                }
            }
            UplinkEvent::Disconnected => self.connected = false,
            UplinkEvent::Rebirth if self.connected => {
                info!("rebirth requested by the host");
                self.birth().await;
            }
            UplinkEvent::Rebirth => {}
        }
    }

    async fn birth(&mut self) {
        for message in self.edge.birth_all(now_ms()) {
            self.stats.birth_published();
            self.publish(message).await;
        }
    }

    async fn act(&mut self, action: Action) {
        if let Action::Command(command) = &action {
            let topic = node_topic::format(command.node, Direction::Down);
            match codec::encode_to_vec(&protocol::Frame::Command(command.clone())) {
                Ok(bytes) => {
                    let _ = self
                        .south
                        .publish(topic.as_str(), QoS::AtLeastOnce, false, bytes)
                        .await;
                }
                Err(err) => error!(%err, "cannot encode a node command"),
            }
            return;
        }
        if !self.connected {
            if self.pending.len() >= self.offline_queue {
                self.pending.pop_front();
                self.stats.dropped(DropReason::OfflineQueueFull);
                error!("uplink down and offline queue full: dropped the oldest sample");
            }
            self.pending.push_back(action);
            return;
        }
        match action {
            Action::BirthMachine { machine, metrics } => {
                let message = self.edge.birth_device(&machine, &metrics, now_ms());
                self.stats.birth_published();
                info!(%machine, metrics = metrics.len(), "machine born");
                self.publish(message).await;
            }
            Action::Data {
                machine,
                node_seq,
                received_at_ms,
                values,
            } => {
                match self
                    .edge
                    .device_data(&machine, node_seq, received_at_ms, &values)
                {
                    Ok(message) => {
                        self.stats.sample_forwarded();
                        self.publish(message).await;
                    }
                    Err(err) => error!(%machine, %err, "cannot build DDATA"),
                }
            }
            Action::Command(_) => {}
        }
    }

    async fn publish(&mut self, message: Outgoing) {
        let payload = message.payload.encode_to_vec();
        if self
            .uplink
            .publish(message.topic.to_string(), QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            self.stats.dropped(DropReason::UplinkClosed);
        }
    }
}
