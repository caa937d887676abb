//! A simulated network-capable sensor node: the real firmware core, clipped to a machine model
//! (a CNC mill by default, any [`Machine`] through [`run_machine_node`]), talking MQTT.
//!
//! The node does what a Wi-Fi/Ethernet node does in the field: it subscribes to its down topic,
//! says `Hello` on its up topic once the subscription stands (so a gateway that answers the
//! `Hello` with a command is heard), then publishes one `Samples` frame per tick and answers
//! commands with `Ack`s. Frames are built by [`firmware::NodeCore`], so the bytes on the wire are
//! exactly what a real node would send.
//!
//! Time: the mill and the node's uptime advance by the *simulated* sample period per tick, while
//! ticks are paced by a *wall-clock* interval. Their ratio is the simulation speed-up; `ZERO`
//! means "as fast as the MQTT link accepts publishes".

use std::time::Duration;

use firmware::{NodeCore, NodeError};
use protocol::node_topic::{self, Direction};
use protocol::{
    EncodeError, FirmwareVersion, Frame, MachineId, MetricDescriptor, MetricName, NodeId, Samples,
    Unit, codec,
};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    Request, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::machines::{CncMill, CncParams, CncReading, Machine};
use crate::timeline::{LiveControl, LiveScenario, Timeline};

/// The firmware version simulated nodes announce.
pub const SIM_FIRMWARE: FirmwareVersion = FirmwareVersion {
    major: 0,
    minor: 1,
    patch: 0,
};

/// The metrics a CNC mill node announces, in index order: `(index, name, unit)`.
pub const CNC_METRICS: [(u8, &str, Unit); 5] = [
    (0, "spindle.power_w", Unit::Watt),
    (1, "spindle.vibration_rms", Unit::MillimetrePerSecond),
    (2, "coolant.temperature_c", Unit::Celsius),
    (3, "state.code", Unit::StateCode),
    (4, "production.parts", Unit::Count),
];

/// How long the first connection may take before the node gives up; later drops are retried
/// until cancelled, because a running lab should ride out a broker restart.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long the broker may take to acknowledge everything once the last sample is out.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on each step of a clean disconnect; past it the socket is simply dropped.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Requests queued towards the event loop; together with rumqttc's in-flight window (100) this
/// is how far a `ZERO`-interval node runs ahead of the broker's acknowledgements.
const REQUEST_CAPACITY: usize = 64;

/// Settings of one simulated MQTT node.
#[derive(Debug, Clone)]
pub struct MqttNodeConfig {
    /// The node's hardware id; also names its topics and MQTT client id (`node-{hex}`).
    pub node: NodeId,
    /// The machine the node is clipped to, announced in `Hello.machine`.
    pub machine: MachineId,
    /// Seed of the [`CncMill`] model: same seed, same readings.
    /// This run's boot id, announced in `Hello`: it must differ between runs that reuse a
    /// node id (the hub restarts a node's sequence ordering when it changes). See [`fresh_boot_id`].
    pub boot: u32,
    pub seed: u64,
    /// Simulated time between samples, in whole milliseconds, at least
    /// [`firmware::MIN_PERIOD_MS`]. The mill advances by this much per tick.
    pub sample_period: Duration,
    /// Wall time between ticks; `Duration::ZERO` ticks as fast as the link allows.
    pub tick_interval: Duration,
    /// Stop after this many `Samples` frames (once the broker has acknowledged everything);
    /// `None` runs until cancelled.
    pub max_samples: Option<u32>,
    /// MQTT broker host name or address.
    pub broker_host: String,
    /// MQTT broker TCP port.
    pub broker_port: u16,
    /// The node's broker login (its hex id as user name on a Demolab broker); `None` for a
    /// broker that takes anonymous clients.
    pub login: Option<NodeLogin>,
}

/// A user name and password for the node's MQTT CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeLogin {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for NodeLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeLogin({}, ***)", self.username)
    }
}

/// What a node did, returned when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    /// The node's hardware id.
    pub node: NodeId,
    /// `Samples` frames handed to the MQTT client.
    pub sent: u32,
    /// The last `Samples` frame handed to the MQTT client.
    pub last: Option<Samples>,
    /// Commands for this node that the firmware core answered with an `Ack`.
    pub commands_handled: u32,
    /// Payloads on the down topic that were not valid node frames.
    pub bad_frames: u32,
    /// MQTT sessions established (1 unless the connection dropped).
    pub sessions: u32,
    /// QoS 1 publishes still unacknowledged when a session ended; the clean session that
    /// follows discards them, so they never reached the broker.
    pub dropped: u32,
}

/// Why a simulated node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration cannot be run.
    #[error("invalid configuration for node {node}: {reason}")]
    InvalidConfig {
        /// The node.
        node: NodeId,
        /// What is wrong.
        reason: String,
    },
    /// No MQTT session could be established in time.
    #[error(
        "node {node} could not connect to MQTT broker {host}:{port} within {deadline:?}: {last_error}"
    )]
    Connect {
        /// The node.
        node: NodeId,
        /// Broker host.
        host: String,
        /// Broker port.
        port: u16,
        /// How long it tried.
        deadline: Duration,
        /// The last connection error seen, or why none was.
        last_error: String,
    },
    /// The broker did not acknowledge every QoS 1 publish in time after the last sample.
    #[error(
        "node {node}: {outstanding} QoS 1 publishes to MQTT broker {host}:{port} were still unacknowledged {deadline:?} after the last sample"
    )]
    Unacknowledged {
        /// The node.
        node: NodeId,
        /// Broker host.
        host: String,
        /// Broker port.
        port: u16,
        /// Publishes without a PUBACK.
        outstanding: u64,
        /// How long it waited.
        deadline: Duration,
    },
    /// The firmware core refused to build a frame (a bug in the simulator's metric table).
    #[error("node {node}: the firmware core refused the readings: {error:?}")]
    Firmware {
        /// The node.
        node: NodeId,
        /// The core's reason.
        error: NodeError,
    },
    /// A frame did not fit the codec's size limit.
    #[error("node {node}: could not encode a {kind} frame: {source}")]
    Encode {
        /// The node.
        node: NodeId,
        /// The frame kind.
        kind: &'static str,
        /// The codec's reason.
        #[source]
        source: EncodeError,
    },
    /// The task driving the MQTT connection ended while the node still needed it.
    #[error("node {node}: the MQTT connection task ended unexpectedly")]
    LinkEnded {
        /// The node.
        node: NodeId,
    },
}

/// The node's metric descriptors, all sampled every `period_ms`.
pub fn cnc_metric_descriptors(period_ms: u32) -> Vec<MetricDescriptor> {
    CNC_METRICS
        .iter()
        .map(|&(index, name, unit)| MetricDescriptor {
            index,
            name: MetricName::new(name).expect("CNC_METRICS names are valid metric names"),
            unit,
            period_ms,
        })
        .collect()
}

/// The metric descriptors of any machine model, in its metric order, all sampled every
/// `period_ms`. Model metric names are static and checked by the models' tests; one that were
/// not a valid name would be left out rather than panic.
pub fn machine_descriptors(machine: &dyn Machine, period_ms: u32) -> Vec<MetricDescriptor> {
    machine
        .metrics()
        .iter()
        .enumerate()
        .filter_map(|(index, &(name, unit))| {
            Some(MetricDescriptor {
                index: u8::try_from(index).ok()?,
                name: MetricName::new(name).ok()?,
                unit,
                period_ms,
            })
        })
        .collect()
}

/// The current values of any machine model as `(metric index, value)` pairs, matching
/// [`machine_descriptors`].
pub fn machine_readings(machine: &dyn Machine) -> Vec<(u8, f32)> {
    machine
        .values()
        .into_iter()
        .enumerate()
        .filter_map(|(index, (_, _, value))| Some((u8::try_from(index).ok()?, value)))
        .collect()
}

/// One reading of the mill as `(metric index, value)` pairs, matching [`CNC_METRICS`].
pub fn cnc_readings(reading: &CncReading) -> [(u8, f32); 5] {
    [
        (0, reading.spindle_power_w),
        (1, reading.vibration_rms_mm_s),
        (2, reading.coolant_temperature_c),
        (3, f32::from(reading.state.code())),
        // Exact up to 2^24 parts, i.e. decades of continuous milling.
        (4, reading.parts_completed as f32),
    ]
}

/// A boot id that differs between runs: derived from the wall clock, as a board would use a
/// hardware random number or a flash counter. Tests that need byte-identical runs pass their own.
pub fn fresh_boot_id(node: NodeId) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Mixing in the node id keeps nodes started in the same instant apart.
    (nanos as u64 ^ node.0.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u32
}

/// Runs one simulated node until `max_samples` are out and acknowledged, or until `cancel`.
///
/// Either way it disconnects cleanly before returning. A dropped connection is retried with
/// backoff (with a fresh `Hello` per session); only the *first* connection has a deadline. A
/// `SetPeriod` command changes the simulated sample period to the shortest metric period and
/// scales the tick interval alike, so the speed-up stays what it was.
pub async fn run_mqtt_node(
    config: MqttNodeConfig,
    cancel: CancellationToken,
) -> Result<NodeReport, SimError> {
    let mill = Box::new(CncMill::new(config.seed, CncParams::default()));
    run(
        config,
        mill,
        Timeline::default(),
        None,
        cancel,
        Deadlines::DEFAULT,
    )
    .await
}

/// [`run_mqtt_node`] with any machine model, and a timeline of parameter changes applied at the
/// node's simulated uptime (a scenario's faults and operator actions). `config.seed` is unused:
/// the model was seeded when it was built.
pub async fn run_machine_node(
    config: MqttNodeConfig,
    machine: Box<dyn Machine>,
    timeline: Timeline,
    cancel: CancellationToken,
) -> Result<NodeReport, SimError> {
    run(config, machine, timeline, None, cancel, Deadlines::DEFAULT).await
}

/// [`run_machine_node`] whose machine can also be changed while it runs, through `control`
/// (the demo's scenario buttons).
pub async fn run_controlled_node(
    config: MqttNodeConfig,
    machine: Box<dyn Machine>,
    control: LiveControl,
    cancel: CancellationToken,
) -> Result<NodeReport, SimError> {
    run(
        config,
        machine,
        Timeline::default(),
        Some(control),
        cancel,
        Deadlines::DEFAULT,
    )
    .await
}

#[derive(Debug, Clone, Copy)]
struct Deadlines {
    connect: Duration,
    drain: Duration,
}

impl Deadlines {
    const DEFAULT: Self = Self {
        connect: CONNECT_DEADLINE,
        drain: DRAIN_DEADLINE,
    };
}

async fn run(
    config: MqttNodeConfig,
    machine: Box<dyn Machine>,
    timeline: Timeline,
    control: Option<LiveControl>,
    cancel: CancellationToken,
    deadlines: Deadlines,
) -> Result<NodeReport, SimError> {
    let period_ms = validate(&config)?;
    let up_topic = node_topic::format(config.node, Direction::Up).to_string();
    let down_topic = node_topic::format(config.node, Direction::Down).to_string();

    let mut options = MqttOptions::new(
        format!("node-{}", config.node),
        config.broker_host.clone(),
        config.broker_port,
    );
    options.set_keep_alive(KEEP_ALIVE).set_clean_session(true);
    if let Some(login) = &config.login {
        options.set_credentials(login.username.clone(), login.password.clone());
    }
    let (client, event_loop) = AsyncClient::new(options, REQUEST_CAPACITY);
    // Unbounded so the event loop never waits on the node: the node may itself be waiting for
    // request-channel room that only the event loop can make.
    let (events_tx, events) = mpsc::unbounded_channel();
    let link = AbortOnDrop(tokio::spawn(drive_link(
        event_loop,
        down_topic.clone(),
        events_tx,
    )));

    let core = NodeCore::new(
        config.node,
        SIM_FIRMWARE,
        config.boot,
        Some(config.machine.clone()),
        // Models have at most 8 of MAX_METRICS (16) metrics: collecting cannot overflow.
        machine_descriptors(&*machine, period_ms)
            .into_iter()
            .collect(),
    );
    let mut node = Node {
        machine,
        timeline,
        control,
        live: None,
        core,
        period_ms,
        tick_interval: config.tick_interval,
        ticker: ticker(config.tick_interval),
        uptime_ms: 0,
        up_topic,
        down_topic,
        client,
        link_state: LinkState::Down,
        last_link_error: None,
        issued: 0,
        settled: 0,
        report: NodeReport {
            node: config.node,
            sent: 0,
            last: None,
            commands_handled: 0,
            bad_frames: 0,
            sessions: 0,
            dropped: 0,
        },
        config,
    };
    tracing::info!(node = %node.config.node, machine = %node.config.machine, "simulated node starting");
    let outcome = node.run(events, &cancel, deadlines).await;
    node.disconnect(link).await;
    tracing::info!(
        node = %node.config.node,
        sent = node.report.sent,
        commands = node.report.commands_handled,
        "simulated node stopped"
    );
    outcome.map(|()| node.report)
}

fn validate(config: &MqttNodeConfig) -> Result<u32, SimError> {
    let invalid = |reason: String| SimError::InvalidConfig {
        node: config.node,
        reason,
    };
    let period_ms = u32::try_from(config.sample_period.as_millis()).map_err(|_| {
        invalid(format!(
            "sample period {:?} is too long",
            config.sample_period
        ))
    })?;
    if period_ms < firmware::MIN_PERIOD_MS {
        return Err(invalid(format!(
            "sample period {:?} is below the firmware minimum of {} ms",
            config.sample_period,
            firmware::MIN_PERIOD_MS
        )));
    }
    if config.max_samples == Some(0) {
        return Err(invalid(
            "max_samples must be at least 1 (None runs until cancelled)".to_owned(),
        ));
    }
    Ok(period_ms)
}

/// What the connection task tells the node.
#[derive(Debug)]
enum LinkEvent {
    /// A new session; `dropped` QoS 1 publishes of the previous one were discarded.
    Connected { dropped: u32 },
    /// The down-topic subscription was answered.
    Subscribed { granted: bool },
    /// The broker acknowledged one QoS 1 publish.
    PubAck,
    /// A message on the down topic.
    Down(Publish),
    /// A connection attempt failed or the connection dropped; a retry follows.
    Lost(String),
}

/// Polls the event loop for the node's whole life, reconnecting after errors. Ends after the
/// node's DISCONNECT is flushed, or when the node is gone.
async fn drive_link(
    mut event_loop: EventLoop,
    down_topic: String,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        // Publishes rumqttc kept from a dropped session; it discards them when the broker
        // opens a fresh session, and the node must stop waiting for their PUBACKs then.
        let stranded = if event_loop.network.is_none() {
            stranded_publishes(&event_loop.pending)
        } else {
            0
        };
        let event = match event_loop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = BACKOFF_MIN;
                LinkEvent::Connected {
                    dropped: if ack.session_present { 0 } else { stranded },
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => LinkEvent::Subscribed {
                granted: ack
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_))),
            },
            Ok(Event::Incoming(Packet::PubAck(_))) => LinkEvent::PubAck,
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == down_topic => {
                LinkEvent::Down(publish)
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(error) => {
                if events.send(LinkEvent::Lost(error.to_string())).is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

fn stranded_publishes<'a>(pending: impl IntoIterator<Item = &'a Request>) -> u32 {
    let count = pending
        .into_iter()
        .filter(|request| matches!(request, Request::Publish(p) if p.qos != QoS::AtMostOnce))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Aborts the connection task on every exit path, including the node's own errors.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Down,
    /// Connected, waiting for the SUBACK before saying `Hello`.
    Subscribing,
    /// `Hello` is out; sampling.
    Ready,
}

struct Node {
    config: MqttNodeConfig,
    core: NodeCore,
    machine: Box<dyn Machine>,
    timeline: Timeline,
    control: Option<LiveControl>,
    live: Option<LiveScenario>,
    period_ms: u32,
    tick_interval: Duration,
    /// `None` for a zero tick interval.
    ticker: Option<Interval>,
    uptime_ms: u64,
    up_topic: String,
    down_topic: String,
    client: AsyncClient,
    link_state: LinkState,
    last_link_error: Option<String>,
    /// QoS 1 publishes handed to the client.
    issued: u64,
    /// Of those, acknowledged by the broker or discarded with a session.
    settled: u64,
    report: NodeReport,
}

impl Node {
    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<LinkEvent>,
        cancel: &CancellationToken,
        deadlines: Deadlines,
    ) -> Result<(), SimError> {
        let connect_deadline = Instant::now() + deadlines.connect;
        let mut drain_deadline = None;
        loop {
            let all_sampled = self
                .config
                .max_samples
                .is_some_and(|max| self.report.sent >= max);
            if all_sampled {
                if self.outstanding() == 0 {
                    return Ok(());
                }
                drain_deadline.get_or_insert_with(|| Instant::now() + deadlines.drain);
            }
            let sampling = self.link_state == LinkState::Ready && !all_sampled;
            tokio::select! {
                // Events before ticks: with a zero interval a tick is always ready, and commands
                // and acknowledgements must not wait behind a flood of samples.
                biased;
                () = cancel.cancelled() => return Ok(()),
                event = events.recv() => match event {
                    Some(event) => self.on_link_event(event, cancel).await?,
                    None => return Err(SimError::LinkEnded { node: self.config.node }),
                },
                () = next_tick(&mut self.ticker), if sampling => self.tick(cancel).await?,
                () = tokio::time::sleep_until(connect_deadline), if self.report.sessions == 0 => {
                    return Err(SimError::Connect {
                        node: self.config.node,
                        host: self.config.broker_host.clone(),
                        port: self.config.broker_port,
                        deadline: deadlines.connect,
                        last_error: self
                            .last_link_error
                            .clone()
                            .unwrap_or_else(|| "no answer from the broker".to_owned()),
                    });
                }
                () = sleep_until_some(drain_deadline) => {
                    return Err(SimError::Unacknowledged {
                        node: self.config.node,
                        host: self.config.broker_host.clone(),
                        port: self.config.broker_port,
                        outstanding: self.outstanding(),
                        deadline: deadlines.drain,
                    });
                }
            }
        }
    }

    fn outstanding(&self) -> u64 {
        self.issued.saturating_sub(self.settled)
    }

    async fn on_link_event(
        &mut self,
        event: LinkEvent,
        cancel: &CancellationToken,
    ) -> Result<(), SimError> {
        let node = self.config.node;
        match event {
            LinkEvent::Connected { dropped } => {
                self.report.sessions += 1;
                if dropped > 0 {
                    tracing::warn!(%node, dropped, "publishes of the previous MQTT session were never acknowledged and are lost");
                    self.report.dropped += dropped;
                    self.settled += u64::from(dropped);
                }
                tracing::debug!(%node, session = self.report.sessions, "MQTT session established");
                self.link_state = LinkState::Subscribing;
                let subscribe = self
                    .client
                    .subscribe(self.down_topic.as_str(), QoS::AtLeastOnce);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    queued = subscribe => queued.map_err(|_| SimError::LinkEnded { node })?,
                }
            }
            // A second SUBACK in one session (a subscribe queued just before a drop and sent
            // after it) must not cause a second `Hello`.
            LinkEvent::Subscribed { granted } if self.link_state == LinkState::Subscribing => {
                if !granted {
                    tracing::warn!(%node, topic = %self.down_topic, "broker refused the down-topic subscription; commands will not arrive");
                }
                let hello = self.core.hello();
                self.publish(&hello, cancel).await?;
                self.link_state = LinkState::Ready;
                tracing::info!(%node, "node online, Hello sent");
            }
            LinkEvent::Subscribed { .. } => {}
            LinkEvent::PubAck => self.settled += 1,
            LinkEvent::Down(publish) => self.on_down(&publish.payload, cancel).await?,
            LinkEvent::Lost(error) => {
                let (host, port) = (&self.config.broker_host, self.config.broker_port);
                if self.link_state == LinkState::Down {
                    // Before the first session the final `SimError::Connect` names the error.
                    tracing::debug!(%node, %error, %host, port, "MQTT connection attempt failed; retrying");
                } else {
                    tracing::warn!(%node, %error, %host, port, "MQTT connection lost; reconnecting");
                }
                self.link_state = LinkState::Down;
                self.last_link_error = Some(error);
            }
        }
        Ok(())
    }

    async fn on_down(
        &mut self,
        payload: &[u8],
        cancel: &CancellationToken,
    ) -> Result<(), SimError> {
        let node = self.config.node;
        let frame = match codec::decode(payload) {
            Ok(frame) => frame,
            Err(error) => {
                self.report.bad_frames += 1;
                tracing::warn!(%node, reason = error.reason(), %error, "dropping a bad frame from the down topic");
                return Ok(());
            }
        };
        let Some(reply) = self.core.handle(self.uptime_ms, &frame) else {
            tracing::debug!(%node, kind = frame.kind(), to = %frame.node(), "ignoring a frame that is not a command for this node");
            return Ok(());
        };
        self.report.commands_handled += 1;
        self.publish(&reply.ack, cancel).await?;
        if let Some(hello) = &reply.hello {
            self.publish(hello, cancel).await?;
        }
        self.follow_periods();
        Ok(())
    }

    /// Applies a period the core accepted from a `SetPeriod` command.
    fn follow_periods(&mut self) {
        let Some(period_ms) = self.core.metrics().iter().map(|d| d.period_ms).min() else {
            return;
        };
        if period_ms == self.period_ms {
            return;
        }
        self.tick_interval = scale_interval(self.tick_interval, self.period_ms, period_ms);
        tracing::info!(node = %self.config.node, from_ms = self.period_ms, to_ms = period_ms, tick_interval = ?self.tick_interval, "sample period changed");
        self.period_ms = period_ms;
        self.ticker = ticker(self.tick_interval);
    }

    async fn tick(&mut self, cancel: &CancellationToken) -> Result<(), SimError> {
        let node = self.config.node;
        // Events due by now apply before the step, so they shape the interval that follows.
        self.timeline
            .apply_due(&mut *self.machine, self.uptime_ms, self.config.node);
        if let Some(control) = &self.control {
            control.apply(
                &mut self.live,
                &mut *self.machine,
                self.uptime_ms,
                self.config.node,
            );
        }
        self.machine
            .step(Duration::from_millis(u64::from(self.period_ms)));
        self.uptime_ms += u64::from(self.period_ms);
        let frame = self
            .core
            .sample(self.uptime_ms, &machine_readings(&*self.machine))
            .map_err(|error| SimError::Firmware { node, error })?;
        if self.publish(&frame, cancel).await? {
            self.report.sent += 1;
            if let Frame::Samples(samples) = frame {
                self.report.last = Some(samples);
            }
        }
        Ok(())
    }

    /// Publishes `frame` at QoS 1; `false` when cancelled before the client took it.
    async fn publish(
        &mut self,
        frame: &Frame,
        cancel: &CancellationToken,
    ) -> Result<bool, SimError> {
        let node = self.config.node;
        let payload = codec::encode_to_vec(frame).map_err(|source| SimError::Encode {
            node,
            kind: frame.kind(),
            source,
        })?;
        let publish = self
            .client
            .publish(self.up_topic.as_str(), QoS::AtLeastOnce, false, payload);
        tokio::select! {
            biased;
            () = cancel.cancelled() => Ok(false),
            queued = publish => {
                queued.map_err(|_| SimError::LinkEnded { node })?;
                self.issued += 1;
                Ok(true)
            }
        }
    }

    /// Sends DISCONNECT and waits for it to be flushed; drops the connection if that stalls or
    /// there is no connection to be polite on.
    async fn disconnect(&self, mut link: AbortOnDrop) {
        if self.link_state == LinkState::Down {
            return;
        }
        let requested = tokio::time::timeout(DISCONNECT_GRACE, self.client.disconnect()).await;
        let flushed = matches!(requested, Ok(Ok(())))
            && tokio::time::timeout(DISCONNECT_GRACE, &mut link.0)
                .await
                .is_ok();
        if !flushed {
            tracing::warn!(node = %self.config.node, "no clean MQTT disconnect within {DISCONNECT_GRACE:?}; dropping the connection");
        }
    }
}

fn ticker(interval: Duration) -> Option<Interval> {
    if interval.is_zero() {
        return None;
    }
    let mut ticker = tokio::time::interval(interval);
    // After a stall (a full request channel), resume the pace instead of bursting to catch up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(ticker)
}

async fn next_tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        // Yielding keeps a zero-interval node from monopolising a single-threaded runtime.
        None => tokio::task::yield_now().await,
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// `interval` scaled by `to_ms / from_ms`, saturating; keeps simulated-to-wall time constant.
fn scale_interval(interval: Duration, from_ms: u32, to_ms: u32) -> Duration {
    if from_ms == 0 {
        return interval;
    }
    let ratio = f64::from(to_ms) / f64::from(from_ms);
    Duration::try_from_secs_f64(interval.as_secs_f64() * ratio).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use protocol::{Hello, MachineState};

    use super::*;

    fn config(port: u16) -> MqttNodeConfig {
        MqttNodeConfig {
            node: NodeId(0x5e11_0000_0000_00aa),
            machine: MachineId::new("mill-test").expect("valid id"),
            boot: 1,
            seed: 1,
            sample_period: Duration::from_secs(1),
            tick_interval: Duration::ZERO,
            max_samples: Some(1),
            broker_host: "127.0.0.1".to_owned(),
            broker_port: port,
            login: None,
        }
    }

    #[test]
    fn the_announced_metrics_form_a_valid_hello() {
        let metrics = cnc_metric_descriptors(250);
        assert_eq!(metrics.len(), 5);
        assert!(metrics.iter().all(|d| d.period_ms == 250));
        let names: Vec<_> = metrics.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "spindle.power_w",
                "spindle.vibration_rms",
                "coolant.temperature_c",
                "state.code",
                "production.parts"
            ]
        );
        let hello = Frame::Hello(Hello {
            node: NodeId(1),
            firmware: SIM_FIRMWARE,
            boot: 7,
            machine: MachineId::new("mill-1").ok(),
            metrics: metrics.into_iter().collect(),
        });
        // Through the real codec, so the gateway's checks (ids, index bounds) are the judge.
        let bytes = codec::encode_to_vec(&hello).expect("fits");
        assert_eq!(codec::decode(&bytes), Ok(hello));
    }

    #[test]
    fn readings_map_every_field_to_its_announced_index() {
        let reading = CncReading {
            spindle_power_w: 5321.5,
            vibration_rms_mm_s: 2.25,
            coolant_temperature_c: 24.5,
            state: MachineState::Warming,
            parts_completed: 17,
        };
        assert_eq!(
            cnc_readings(&reading),
            [(0, 5321.5), (1, 2.25), (2, 24.5), (3, 3.0), (4, 17.0)]
        );
        let indices: Vec<u8> = cnc_readings(&reading).iter().map(|r| r.0).collect();
        let announced: Vec<u8> = CNC_METRICS.iter().map(|m| m.0).collect();
        assert_eq!(indices, announced);
    }

    #[test]
    fn the_firmware_core_accepts_a_mill_reading() {
        let mut core = NodeCore::new(
            NodeId(2),
            SIM_FIRMWARE,
            1,
            None,
            cnc_metric_descriptors(1000).into_iter().collect(),
        );
        let mut mill = CncMill::new(3, CncParams::default());
        let reading = mill.step(Duration::from_secs(1));
        let frame = core
            .sample(1000, &cnc_readings(&reading))
            .expect("every index is announced");
        let Frame::Samples(samples) = frame else {
            panic!("expected samples, got {frame:?}");
        };
        assert_eq!((samples.seq, samples.readings.len()), (1, 5));
    }

    #[test]
    fn tick_intervals_scale_with_the_sample_period() {
        let tick = Duration::from_millis(100);
        assert_eq!(scale_interval(tick, 1000, 500), Duration::from_millis(50));
        assert_eq!(scale_interval(tick, 1000, 2000), Duration::from_millis(200));
        assert_eq!(scale_interval(Duration::ZERO, 1000, 10), Duration::ZERO);
        assert_eq!(
            scale_interval(Duration::MAX, 10, u32::MAX),
            Duration::MAX,
            "saturates"
        );
    }

    #[test]
    fn configurations_the_firmware_would_refuse_are_rejected() {
        let mut too_fast = config(1883);
        too_fast.sample_period = Duration::from_millis(5);
        let err = validate(&too_fast).expect_err("below MIN_PERIOD_MS");
        assert!(
            err.to_string().contains("below the firmware minimum"),
            "{err}"
        );
        let mut none = config(1883);
        none.max_samples = Some(0);
        assert!(validate(&none).is_err());
        assert_eq!(validate(&config(1883)).ok(), Some(1000));
    }

    #[test]
    fn stranded_publishes_count_only_qos1_publishes() {
        let pending = [
            Request::Publish(Publish::new("a", QoS::AtLeastOnce, *b"x")),
            Request::Publish(Publish::new("a", QoS::AtMostOnce, *b"x")),
            Request::Subscribe(rumqttc::Subscribe::new("a", QoS::AtLeastOnce)),
            Request::Publish(Publish::new("a", QoS::AtLeastOnce, *b"y")),
        ];
        assert_eq!(stranded_publishes(&pending), 2);
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_reported_with_its_address() {
        // A port that was just free: connections are refused, quickly and repeatably.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral port")
            .port();
        let deadlines = Deadlines {
            connect: Duration::from_millis(400),
            drain: DRAIN_DEADLINE,
        };
        let mill = Box::new(CncMill::new(1, CncParams::default()));
        let err = run(
            config(port),
            mill,
            Timeline::default(),
            None,
            CancellationToken::new(),
            deadlines,
        )
        .await
        .expect_err("nothing listens");
        let text = err.to_string();
        assert!(matches!(err, SimError::Connect { .. }), "{err:?}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }

    #[tokio::test]
    async fn cancelling_a_node_that_never_connected_returns_its_report() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("ephemeral port")
            .port();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let report = run_mqtt_node(config(port), cancel)
            .await
            .expect("cancel is not an error");
        assert_eq!((report.sent, report.sessions), (0, 0));
    }
}
