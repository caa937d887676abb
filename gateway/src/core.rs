//! The core task: the single owner of the pipeline, the Sparkplug session and the disk buffer.
//!
//! Every sample is written to the disk buffer before anything else happens to it (write-ahead),
//! the buffer is fsynced once per batch (group commit, see [`group_commit`]: the fsync runs on a
//! blocking thread while the core takes in the next batch), and only then are the batch's MQTT
//! messages acknowledged to the lab broker — so a node's message that the gateway acknowledged
//! survives a crash. The sender turns buffered records into DDATA while the uplink session is up
//! and the primary host online, and a record is deleted when the hub's broker acknowledged it.
//! Samples taken while the hub was unreachable are sent with `is_historical`.
//!
//! A disk error never makes the core forget what it took in: see [`storage`] for why it holds
//! samples and acknowledgements, pauses its sources and retries until the disk works again.

mod group_commit;
mod storage;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use protocol::node_topic::{self, Direction};
use protocol::{Frame, MachineId, MetricName, Unit, codec};
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::buffer::{BufferError, DiskBuffer, DynFs, RecordId, SyncTicket};
use crate::command::{self, PendingCommands, PlannedCommand};
use crate::edge::{EdgeNode, Outgoing, Value};
use crate::pipeline::{Action, Pipeline};
use crate::record::BufferedSample;
use crate::registry::NodeRegistry;
use crate::run::{NodeBytes, Readiness, now_ms};
use crate::source::serial::SerialHandle;
use crate::source::{Inbound, SourceId};
use crate::stats::{DropReason, GatewayStats};
use crate::status::{LinkState, LocalStatus};
use crate::uplink::{UplinkCommand, UplinkEvent};
use group_commit::GroupCommit;
use storage::{LogLimit, StorageHealth};

/// Most records sent and not yet acknowledged.
pub(crate) const SEND_WINDOW: usize = 256;
/// How long a node has to acknowledge a DCMD.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Most inbound frames handled per group commit.
const BATCH: usize = 256;
/// Retries of a failing disk at shutdown (backing off from 50 ms: about 1.5 s in all).
const SHUTDOWN_RETRIES: usize = 5;
/// At most one line per this for disk errors outside the append/flush path (reads, acks).
const IO_LOG_EVERY: Duration = Duration::from_secs(10);
/// Under load the buffer's ledger (the acknowledged position: a file written, fsynced and
/// renamed) is written at most this often, and at least once a second while there are
/// acknowledgements to record. A crash redelivers what was acknowledged since, and the hub
/// drops those duplicates by node sequence.
const LEDGER_EVERY: Duration = Duration::from_millis(100);

pub(crate) struct Core {
    pub pipeline: Pipeline,
    pub edge: EdgeNode,
    pub buffer: DiskBuffer<DynFs>,
    pub registry: NodeRegistry,
    pub stats: Arc<GatewayStats>,
    /// The lab's local view, written per accepted sample and per change of the link.
    pub status: Arc<LocalStatus>,
    pub uplink: mpsc::Sender<UplinkCommand>,
    pub south: AsyncClient,
    pub serial: Option<SerialHandle>,
    pub ready: Arc<watch::Sender<Readiness>>,
    pub liveness_timeout: Duration,
    /// A sync starts at once when this many messages wait ([`GroupCommit::due`]).
    pub commit_batch: usize,
    /// Or when the oldest has waited this long.
    pub commit_wait: Duration,
    /// Whether a primary host is configured (then data waits for its STATE online).
    pub host_aware: bool,
    pub session: Option<u64>,
    pub host_online: bool,
    pub inflight: usize,
    pub last_seen: HashMap<MachineId, Instant>,
    /// Inputs waiting for their samples to be durable: MQTT messages to acknowledge to the lab
    /// broker then, `None` for the other sources (nothing to acknowledge, but they count
    /// towards a batch and its wait like the rest).
    pub acks: GroupCommit<Option<Publish>>,
    /// The fsync running on a blocking thread, if any.
    pub sync: Option<RunningSync>,
    /// When the buffer's ledger was last written.
    pub ledger_written: Instant,
    /// Frames per source since start.
    pub per_source: HashMap<SourceId, u64>,
    /// DCMD commands waiting for their node's `Ack`.
    pub pending: PendingCommands,
    /// MQTT nodes in a burst of bad frames, with the count so far.
    pub bad_bursts: HashMap<protocol::NodeId, u64>,
    /// Samples taken in but not yet appended, oldest first: non-empty only while the disk
    /// buffer fails (then every new sample queues behind them, to keep order).
    pub held: VecDeque<Held>,
    pub storage: StorageHealth,
    /// Rate limits for buffer reads and acks failing.
    pub read_log: LogLimit,
    pub ack_log: LogLimit,
}

/// A disk buffer fsync running on a blocking thread.
pub(crate) struct RunningSync {
    ticket: SyncTicket,
    job: tokio::task::JoinHandle<io::Result<()>>,
}

/// Acknowledges an input whose sample is durable: queues the PUBACK of an MQTT message (false
/// if the client's queue is full); other sources have nothing to acknowledge.
fn acknowledge(south: &AsyncClient, publish: &Option<Publish>) -> bool {
    publish
        .as_ref()
        .is_none_or(|publish| south.try_ack(publish).is_ok())
}

/// Sleeps until a sync is due; never ready if none is.
async fn commit_due(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Waits for the running sync to end; never ready without one.
async fn sync_ended(sync: &mut Option<RunningSync>) -> (SyncTicket, io::Result<()>) {
    let Some(running) = sync.as_mut() else {
        return std::future::pending().await;
    };
    let result = (&mut running.job)
        .await
        .unwrap_or_else(|err| Err(io::Error::other(err)));
    let ticket = running.ticket.clone();
    *sync = None;
    (ticket, result)
}

/// A sample waiting for the disk buffer.
pub(crate) struct Held {
    record: Vec<u8>,
    machine: MachineId,
    /// An MQTT sample: its message stays unacknowledged until the sample is stored, so the lab
    /// broker delivers it again if the gateway stops first. Serial and Modbus ones have no
    /// second copy anywhere.
    redeliverable: bool,
}

impl Core {
    /// The limits on how often read and ack failures are logged.
    pub(crate) fn io_log_limits() -> (LogLimit, LogLimit) {
        (LogLimit::new(IO_LOG_EVERY), LogLimit::new(IO_LOG_EVERY))
    }
}

enum Input {
    Mqtt(NodeBytes),
    // Boxed: a decoded frame is large and most traffic is the MQTT variant.
    Other(Box<Inbound>),
}

impl Core {
    fn online(&self) -> bool {
        self.session.is_some() && (self.host_online || !self.host_aware)
    }

    pub(crate) async fn run(
        mut self,
        mut mqtt: mpsc::Receiver<NodeBytes>,
        mut others: mpsc::Receiver<Inbound>,
        mut uplink_events: mpsc::Receiver<UplinkEvent>,
        cancel: CancellationToken,
    ) {
        let mut liveness = tokio::time::interval(Duration::from_secs(1));
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let serial = self.serial.clone();
        loop {
            // Read before the select borrows `self.sync`.
            let commit_at = self.commit_due().filter(|_| self.sync.is_none());
            let first = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                (ticket, result) = sync_ended(&mut self.sync) => {
                    self.on_synced(ticket, result).await;
                    continue;
                }
                Some(event) = uplink_events.recv() => {
                    self.on_uplink(event).await;
                    continue;
                }
                () = commit_due(commit_at), if self.storage.is_healthy() => {
                    self.begin_commit();
                    self.pump().await;
                    self.publish_buffer_gauges();
                    continue;
                }
                // While the disk fails nothing new is taken in: the sources back up instead.
                Some(item) = mqtt.recv(), if self.storage.is_healthy() => Input::Mqtt(item),
                Some(item) = others.recv(), if self.storage.is_healthy() => {
                    Input::Other(Box::new(item))
                }
                // After the frame arms: a port's last frames are handled before its loss.
                lost = lost_ports(serial.as_ref()), if self.storage.is_healthy() => {
                    self.on_ports_lost(lost).await;
                    continue;
                }
                () = retry_sleep(self.storage.retry_at()), if !self.storage.is_healthy() => {
                    self.commit().await;
                    self.pump().await;
                    self.publish_buffer_gauges();
                    continue;
                }
                _ = liveness.tick() => {
                    self.check_liveness().await;
                    for (machine, command) in self.pending.expired(COMMAND_TIMEOUT) {
                        warn!(%machine, metric = %command.metric, "no node answered a DCMD");
                        self.report_command(&machine, &command, None).await;
                    }
                    // Acknowledgements reach the ledger on flush; keep it fresh while idle.
                    // (While failing, the retry above flushes.)
                    if self.storage.is_healthy() {
                        self.begin_commit();
                        self.record_acks(true);
                    }
                    // A read that failed is tried again here even if no ack comes to pump.
                    self.pump().await;
                    let mut sources: Vec<(String, u64)> =
                        self.per_source.iter().map(|(source, n)| (source.to_string(), *n)).collect();
                    sources.sort();
                    self.stats.set_sources(sources);
                    continue;
                }
            };
            self.handle(first).await;
            // Group commit: take what else is already waiting, then one flush for all of it.
            for _ in 1..BATCH {
                if !self.storage.is_healthy() {
                    // Take no more: what is taken now would only wait in memory.
                    break;
                }
                let next = match mqtt.try_recv() {
                    Ok(item) => Input::Mqtt(item),
                    Err(_) => match others.try_recv() {
                        Ok(item) => Input::Other(Box::new(item)),
                        Err(_) => break,
                    },
                };
                self.handle(next).await;
            }
            if !self.storage.is_healthy() {
                self.commit().await;
            } else if self.commit_ready() {
                self.begin_commit();
            }
            self.pump().await;
            self.publish_buffer_gauges();
        }
        // Stopping. What the serial and Modbus sources already handed over exists nowhere else:
        // store it too. (Unacknowledged MQTT messages the broker keeps for the next run.)
        for _ in 0..others.len() {
            let Ok(item) = others.try_recv() else { break };
            self.handle(Input::Other(Box::new(item))).await;
        }
        if let Some(running) = self.sync.take() {
            let result = running
                .job
                .await
                .unwrap_or_else(|err| Err(io::Error::other(err)));
            // Whatever it says, the flush below syncs everything again.
            let _ = self.end_sync(running.ticket, result);
        }
        self.commit().await;
        // A disk error at this moment gets a few quick retries before anything is given up.
        for _ in 0..SHUTDOWN_RETRIES {
            let Some(retry_at) = self.storage.retry_at() else {
                break;
            };
            tokio::time::sleep_until(retry_at.into()).await;
            self.commit().await;
        }
        self.give_up_held();
        if let Some(generation) = self.session {
            let death = self.edge.death(now_ms());
            self.send(generation, death, None).await;
        }
        let _ = self.uplink.send(UplinkCommand::Disconnect).await;
        let _ = self.south.disconnect().await;
        if let Err(err) = self.buffer.close() {
            error!(%err, "cannot close the disk buffer cleanly; unacknowledged samples are resent after restart");
        }
    }

    async fn handle(&mut self, input: Input) {
        let now = now_ms();
        let (mqtt_node, result) = match input {
            Input::Mqtt(NodeBytes { node, publish }) => {
                *self.per_source.entry(SourceId::Mqtt).or_default() += 1;
                let result = self
                    .pipeline
                    .on_frame(node, &publish.payload, now, &self.stats);
                self.acks.push(Some(publish), Instant::now());
                (Some(node), result)
            }
            Input::Other(inbound) => {
                *self.per_source.entry(inbound.source.clone()).or_default() += 1;
                self.acks.push(None, Instant::now());
                // Serial and Modbus sources log their own bursts.
                (None, self.pipeline.on_inbound(*inbound, now, &self.stats))
            }
        };
        match result {
            Ok(actions) => {
                if let Some(node) = mqtt_node
                    && let Some(errors) = self.bad_bursts.remove(&node)
                {
                    info!(%node, errors, "node frames decode again");
                }
                for action in actions {
                    self.act(action, mqtt_node.is_some()).await;
                }
            }
            Err(err) => match mqtt_node {
                // Logged once per burst per node; every one is counted by reason.
                Some(node) => {
                    let errors = self.bad_bursts.entry(node).or_default();
                    *errors += 1;
                    if *errors == 1 {
                        warn!(%node, reason = err.reason(), %err, "bad frames from a node");
                    }
                }
                None => debug!(reason = err.reason(), %err, "dropped a node frame"),
            },
        }
    }

    /// Carries out one pipeline action; `redeliverable` when it came in an MQTT message.
    async fn act(&mut self, action: Action, redeliverable: bool) {
        match action {
            Action::BirthMachine {
                node,
                machine,
                boot,
                metrics,
            } => {
                match self.pipeline.source_of(node) {
                    // The operator's proof that a plugged-in node was taken without any
                    // configuration: which port now feeds which twin.
                    Some(SourceId::Serial(port)) => info!(lab = %self.edge.lab(), %machine,
                        %node, %port, boot, metrics = metrics.len(), "serial node adopted"),
                    _ => info!(%machine, %node, boot, metrics = metrics.len(), "machine announced"),
                }
                if let Some(hello) = self.pipeline.hello(node)
                    && let Err(err) = self.registry.remember(hello)
                {
                    error!(%err, "a restarted gateway will not know this node until it says Hello again");
                }
                self.edge.know_machine(&machine, Some(boot), &metrics);
                self.last_seen.insert(machine, Instant::now());
            }
            Action::Data(mut sample) => {
                self.last_seen
                    .insert(sample.machine.clone(), Instant::now());
                sample.historical = !self.online();
                self.status.record(&sample, now_ms());
                let held = Held {
                    record: sample.encode(),
                    machine: sample.machine,
                    redeliverable,
                };
                self.store(held);
            }
            Action::Command(command) => self.send_command(command).await,
            Action::CommandResult {
                node,
                command_id,
                result,
            } => {
                match self.pending.acked(node, command_id) {
                    Some((machine, command)) => {
                        self.report_command(&machine, &command, Some(result)).await
                    }
                    // Our own RequestHello, or an answer after the timeout.
                    None => debug!(%node, command_id, ?result, "ack without a pending DCMD"),
                }
            }
        }
    }

    async fn send_command(&mut self, command: protocol::Command) {
        let node = command.node;
        let frame = Frame::Command(command);
        match self.pipeline.source_of(node).cloned() {
            Some(SourceId::Serial(port)) => {
                let mut buf = [0u8; protocol::cobs::MAX_WIRE_LEN];
                let sent = protocol::cobs::encode_framed(&frame, &mut buf)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| {
                        let serial = self.serial.as_ref().ok_or("no serial source")?;
                        serial
                            .send(&port, bytes.to_vec())
                            .map_err(|e| e.to_string())
                    });
                if let Err(err) = sent {
                    warn!(%node, %port, %err, "cannot send a command over serial");
                }
            }
            Some(SourceId::Modbus(_)) => debug!(%node, "Modbus devices take no node commands"),
            Some(SourceId::OpcUa(_)) => debug!(%node, "OPC UA machines take no node commands"),
            Some(SourceId::Mqtt) | None => match codec::encode_to_vec(&frame) {
                Ok(bytes) => {
                    let topic = node_topic::format(node, Direction::Down);
                    // `try_`: waiting for room could deadlock with a southbound loop that waits
                    // for the core (see `commit`). A refused command times out like a lost one.
                    if let Err(err) =
                        self.south
                            .try_publish(topic.as_str(), QoS::AtLeastOnce, false, bytes)
                    {
                        warn!(%node, %err, "cannot queue a command for an MQTT node");
                    }
                }
                Err(err) => error!(%err, "cannot encode a node command"),
            },
        }
    }

    /// Appends a sample to the disk buffer, or holds it in memory while the buffer fails (and
    /// behind samples already held, so order is kept).
    fn store(&mut self, sample: Held) {
        if !self.held.is_empty() {
            self.held.push_back(sample);
            return;
        }
        match self.buffer.append(&sample.record) {
            Ok(outcome) => self.appended(outcome.dropped_oldest),
            Err(err) if is_transient(&err) => {
                self.held.push_back(sample);
                self.storage_failed(&err);
            }
            Err(err) => self.unstorable(&sample, &err),
        }
    }

    /// Appends the held samples in order; stops at the first disk error.
    fn store_held(&mut self) -> Result<(), BufferError> {
        while let Some(sample) = self.held.front() {
            match self.buffer.append(&sample.record) {
                Ok(outcome) => {
                    self.held.pop_front();
                    self.appended(outcome.dropped_oldest);
                }
                Err(err) if is_transient(&err) => return Err(err),
                Err(err) => {
                    if let Some(sample) = self.held.pop_front() {
                        self.unstorable(&sample, &err);
                    }
                }
            }
        }
        Ok(())
    }

    fn appended(&mut self, dropped_oldest: u64) {
        if dropped_oldest > 0 {
            self.stats
                .dropped_many(DropReason::BufferFull, dropped_oldest);
            // Those records can no longer be acknowledged.
            self.inflight = self.inflight.saturating_sub(dropped_oldest as usize);
        }
    }

    /// A sample the buffer refuses whatever the disk does (larger than a segment): holding it
    /// would stall the gateway for good.
    fn unstorable(&mut self, sample: &Held, err: &BufferError) {
        self.stats.dropped(DropReason::StorageFailed);
        error!(%err, machine = %sample.machine, "the disk buffer refuses a sample: it is lost");
    }

    fn storage_failed(&mut self, err: &BufferError) {
        self.stats.storage_error();
        let now = Instant::now();
        if let Some(suppressed) = self.storage.failed(now) {
            let failing_for = self.storage.failing_for(now).unwrap_or_default();
            // ERROR: an operator must act (free space, raise the file limit, replace a disk).
            error!(%err, held = self.held.len(), unacknowledged = self.acks.unacknowledged(),
                failing_for = ?failing_for, suppressed,
                "disk buffer failing: sources paused, their samples held and retried");
        }
        self.stats.set_storage_error(Some(err.to_string()));
        self.stats.set_storage_held(self.held.len() as u64);
    }

    /// Stores what is held, makes everything appended durable at once (on this task), then
    /// acknowledges the MQTT messages to the lab broker: the path of retries after a disk error
    /// and of shutdown; [`begin_commit`](Self::begin_commit) is the usual one. On a disk error
    /// the acknowledgements wait for a retry that succeeds: dropping them would leave the
    /// broker's in-flight window for this session full for good.
    async fn commit(&mut self) {
        let stored = self.store_held().and_then(|()| self.buffer.flush());
        if let Err(err) = stored {
            self.storage_failed(&err);
            return;
        }
        self.ledger_written = Instant::now();
        if let Some(outage) = self.storage.recovered(Instant::now()) {
            self.stats.storage_recovered();
            warn!(outage = ?outage, acknowledged = self.acks.unacknowledged(),
                "disk buffer works again: held samples stored, sources resumed");
            self.stats.set_storage_error(None);
            self.stats.set_storage_held(0);
        }
        // Never wait for room in the client's queue here: after a long hold the southbound loop
        // may itself be waiting for the core to take frames. What does not fit goes next time.
        let south = &self.south;
        self.acks.all_durable(|publish| acknowledge(south, publish));
    }

    /// When the waiting inputs should get their sync, if any wait.
    fn commit_due(&self) -> Option<Instant> {
        self.acks.due(self.commit_batch, self.commit_wait)
    }

    /// Whether a sync should start now.
    fn commit_ready(&self) -> bool {
        self.sync.is_none() && self.commit_due().is_some_and(|due| due <= Instant::now())
    }

    /// Group commit while storage is healthy: starts an fsync of everything appended on a
    /// blocking thread, unless one runs already (what was appended since waits for the next,
    /// started when that one ends: [`on_synced`](Self::on_synced)). If nothing needs a sync the
    /// waiting messages are acknowledged at once.
    fn begin_commit(&mut self) {
        if self.sync.is_some() {
            return;
        }
        match self.buffer.start_sync() {
            Err(err) => self.storage_failed(&err),
            Ok(None) => {
                let south = &self.south;
                self.acks.all_durable(|publish| acknowledge(south, publish));
            }
            Ok(Some((ticket, job))) => {
                self.acks.start();
                let job = tokio::task::spawn_blocking(move || job.run());
                self.sync = Some(RunningSync { ticket, job });
            }
        }
    }

    /// The running fsync ended: acknowledges what it made durable, records acknowledgements in
    /// the ledger now and then, and starts the next sync for what came in meanwhile.
    async fn on_synced(&mut self, ticket: SyncTicket, result: io::Result<()>) {
        if let Err(err) = self.end_sync(ticket, result) {
            self.storage_failed(&err);
        } else if self.storage.is_healthy() {
            self.record_acks(false);
            if self.commit_ready() {
                self.begin_commit();
            }
        }
        self.pump().await;
        self.publish_buffer_gauges();
    }

    /// Gives the buffer the sync's result and acknowledges or re-queues its messages.
    fn end_sync(&mut self, ticket: SyncTicket, result: io::Result<()>) -> Result<(), BufferError> {
        match self.buffer.finish_sync(ticket, result) {
            Ok(()) => {
                let south = &self.south;
                self.acks.synced(|publish| acknowledge(south, publish));
                Ok(())
            }
            Err(err) => {
                self.acks.sync_failed();
                Err(err)
            }
        }
    }

    /// Writes the buffer's ledger if acknowledgements moved it, at most every [`LEDGER_EVERY`]
    /// unless `now`. A failure is counted and retried on the next call; at worst a crash before
    /// then redelivers.
    fn record_acks(&mut self, now: bool) {
        let at = Instant::now();
        if !self.buffer.acks_unrecorded()
            || (!now && at.duration_since(self.ledger_written) < LEDGER_EVERY)
        {
            return;
        }
        self.ledger_written = at;
        if let Err(err) = self.buffer.record_acks() {
            self.stats.storage_error();
            if let Some(suppressed) = self.ack_log.allow(at) {
                warn!(%err, suppressed, "cannot record acknowledgements in the disk buffer yet");
            }
        }
    }

    /// At shutdown with the disk still failing: MQTT samples stay unacknowledged, so the lab
    /// broker redelivers them to the next run; the rest exist nowhere else and are lost.
    fn give_up_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let lost = self.held.iter().filter(|h| !h.redeliverable).count() as u64;
        let redelivered = self.held.len() as u64 - lost;
        self.held.clear();
        self.stats.dropped_many(DropReason::StorageFailed, lost);
        self.stats.set_storage_held(0);
        if lost > 0 {
            error!(
                lost,
                redelivered,
                "stopping with the disk buffer failing: serial and Modbus samples held in memory are lost"
            );
        } else {
            warn!(
                redelivered,
                "stopping with the disk buffer failing: held MQTT samples stay unacknowledged for redelivery"
            );
        }
    }

    async fn on_uplink(&mut self, event: UplinkEvent) {
        self.on_uplink_event(event).await;
        self.publish_link();
    }

    /// Publishes the state that decides whether samples are flagged historical: the local view
    /// must say "cut off" exactly while they are.
    fn publish_link(&self) {
        let state = match (self.session.is_some(), self.online()) {
            (_, true) => LinkState::Connected,
            (true, false) => LinkState::HostOffline,
            (false, false) => LinkState::Disconnected,
        };
        self.status.set_link(state, now_ms());
    }

    async fn on_uplink_event(&mut self, event: UplinkEvent) {
        match event {
            UplinkEvent::Connected { generation, bd_seq } => {
                self.stats.uplink_session();
                self.edge.set_bd_seq(bd_seq);
                self.session = Some(generation);
                self.start_session().await;
            }
            UplinkEvent::Disconnected => {
                self.session = None;
                self.inflight = 0;
                self.buffer.rewind();
            }
            UplinkEvent::HostOnline(online) => {
                let was = self.online();
                self.host_online = online;
                info!(online, "primary host STATE");
                if !was && self.online() {
                    self.start_session().await;
                } else if was && !self.online() {
                    // Stop sending; what is in flight may still be acknowledged.
                    self.buffer.rewind();
                    self.inflight = 0;
                }
            }
            UplinkEvent::Rebirth if self.online() => {
                info!("rebirth requested by the host");
                self.birth().await;
            }
            UplinkEvent::Rebirth => {}
            UplinkEvent::DeviceCommand { machine, payload } => {
                self.on_device_command(machine, &payload).await
            }
            UplinkEvent::Acked(record) => {
                self.inflight = self.inflight.saturating_sub(1);
                if let Err(err) = self.buffer.ack(record) {
                    // The ledger stays dirty and the next flush writes it; at worst a crash
                    // before then redelivers.
                    self.stats.storage_error();
                    if let Some(suppressed) = self.ack_log.allow(Instant::now()) {
                        warn!(%err, suppressed, "cannot record an acknowledgement in the disk buffer yet");
                    }
                }
                self.stats.sample_forwarded();
                self.pump().await;
                self.publish_buffer_gauges();
            }
        }
    }

    /// Births, then everything unacknowledged from the start.
    async fn start_session(&mut self) {
        if !self.online() {
            info!("uplink up, waiting for the primary host to be online");
            return;
        }
        self.inflight = 0;
        self.buffer.rewind();
        self.birth().await;
        self.ready.send_modify(|r| r.uplink = true);
        self.pump().await;
    }

    async fn birth(&mut self) {
        let Some(generation) = self.session else {
            return;
        };
        let now = now_ms();
        let nbirth = self.edge.node_birth(now);
        self.send(generation, nbirth, None).await;
        // Only machines still talking: one declared dead stays dead until it speaks again,
        // or a host's rebirth request would bring a silent machine back online.
        let machines: Vec<MachineId> = self
            .edge
            .machines()
            .filter(|machine| self.last_seen.contains_key(*machine))
            .cloned()
            .collect();
        for machine in machines {
            if let Some(dbirth) = self.edge.ensure_born(&machine, None, &[], now) {
                self.send(generation, dbirth, None).await;
            }
        }
    }

    /// Sends buffered records while the window has room.
    async fn pump(&mut self) {
        while self.online() && self.inflight < SEND_WINDOW {
            let Some(generation) = self.session else {
                return;
            };
            let (id, bytes) = match self.buffer.next_unsent() {
                Ok(Some(next)) => next,
                Ok(None) => return,
                Err(err) => {
                    // Nothing is lost: the cursor stays, and the liveness tick tries again.
                    self.stats.storage_error();
                    if let Some(suppressed) = self.read_log.allow(Instant::now()) {
                        warn!(%err, suppressed, "cannot read the disk buffer; retrying");
                    }
                    return;
                }
            };
            let sample = match BufferedSample::decode(&bytes) {
                Ok(sample) => sample,
                Err(err) => {
                    error!(%err, ?id, "unreadable buffered record: dropped");
                    self.stats.dropped(DropReason::BufferCorrupt);
                    let _ = self.buffer.ack(id);
                    continue;
                }
            };
            let metrics: Vec<(MetricName, Unit)> = sample
                .values
                .iter()
                .map(|(n, u, _)| (n.clone(), *u))
                .collect();
            let now = now_ms();
            if let Some(dbirth) = self
                .edge
                .ensure_born(&sample.machine, sample.boot, &metrics, now)
            {
                // Buffered data of a machine that has since gone silent births it again; the
                // liveness check must then see it, or it would stay online at the host.
                self.last_seen
                    .entry(sample.machine.clone())
                    .or_insert_with(Instant::now);
                self.send(generation, dbirth, None).await;
            }
            let values: Vec<Value> = sample
                .values
                .iter()
                .map(|(name, _, value)| Value {
                    name: name.clone(),
                    value: *value,
                })
                .collect();
            match self.edge.device_data(
                &sample.machine,
                sample.node_seq,
                sample.received_at_ms,
                &values,
                sample.historical,
            ) {
                Ok(ddata) => {
                    self.inflight += 1;
                    self.send(generation, ddata, Some(id)).await;
                }
                Err(err) => {
                    error!(%err, machine = %sample.machine, "cannot build DDATA: record dropped");
                    let _ = self.buffer.ack(id);
                }
            }
        }
    }

    async fn send(&mut self, generation: u64, message: Outgoing, record: Option<RecordId>) {
        let command = UplinkCommand::Publish {
            generation,
            topic: message.topic.to_string(),
            payload: message.payload.encode_to_vec(),
            record,
        };
        if record.is_none() {
            self.stats.birth_published();
        }
        if self.uplink.send(command).await.is_err() {
            self.stats.dropped(DropReason::UplinkClosed);
        }
    }

    async fn on_device_command(
        &mut self,
        machine: MachineId,
        payload: &protocol::sparkplug::Payload,
    ) {
        let nodes = self.pipeline.nodes_of(&machine);
        for planned in command::plan(payload) {
            let planned = match planned {
                Ok(planned) => planned,
                Err(err) => {
                    warn!(%machine, %err, "DCMD refused");
                    continue;
                }
            };
            if nodes.is_empty() {
                warn!(%machine, metric = %planned.metric, "DCMD for a machine without a node");
                self.report_command(&machine, &planned, None).await;
            }
            for node in &nodes {
                let command = self.pipeline.command(*node, planned.kind);
                info!(%machine, %node, metric = %planned.metric, "DCMD sent to the node");
                self.pending
                    .sent(*node, command.id, machine.clone(), planned.clone());
                self.send_command(command).await;
            }
        }
    }

    async fn report_command(
        &mut self,
        machine: &MachineId,
        command: &PlannedCommand,
        result: Option<protocol::AckResult>,
    ) {
        let now = now_ms();
        let metrics = command::result_metrics(command, result, now);
        if let (Some(generation), true) = (self.session, self.online())
            && let Some(report) = self.edge.device_report(machine, metrics, now)
        {
            self.send(generation, report, None).await;
        }
    }

    fn publish_buffer_gauges(&self) {
        self.stats.set_storage_held(self.held.len() as u64);
        self.stats.set_buffer(
            self.buffer.len(),
            self.buffer.unsent(),
            self.buffer.bytes_on_disk(),
        );
    }

    /// Machines fed by a serial port that was unplugged are offline now, not after the
    /// liveness timeout: the operator sees the unplug on the platform at once.
    async fn on_ports_lost(&mut self, ports: Vec<String>) {
        for port in ports {
            let source = SourceId::Serial(port.clone());
            let machines = self.pipeline.machines_on(&source);
            for machine in machines {
                let pending = self.buffer.unsent();
                if pending > 0 {
                    // A DDEATH now would overtake them and the twin come back online with
                    // them; the liveness check declares the machine dead after they are out.
                    info!(lab = %self.edge.lab(), %machine, %port, pending,
                        "serial node unplugged; offline once its buffered samples are sent");
                    continue;
                }
                self.last_seen.remove(&machine);
                warn!(lab = %self.edge.lab(), %machine, %port, "serial node unplugged: machine offline");
                if let (Some(generation), true) = (self.session, self.online())
                    && let Some(death) = self.edge.device_death(&machine, now_ms())
                {
                    self.send(generation, death, None).await;
                }
            }
        }
    }

    /// DDEATH for machines whose sources went silent.
    async fn check_liveness(&mut self) {
        let now = Instant::now();
        let silent: Vec<MachineId> = self
            .last_seen
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > self.liveness_timeout)
            .map(|(machine, _)| machine.clone())
            .collect();
        for machine in silent {
            self.last_seen.remove(&machine);
            warn!(%machine, "machine silent: its data is stale");
            if let (Some(generation), true) = (self.session, self.online())
                && let Some(death) = self.edge.device_death(&machine, now_ms())
            {
                self.send(generation, death, None).await;
            }
        }
    }
}

/// The serial ports lost since last asked; never ready without a serial source.
async fn lost_ports(serial: Option<&SerialHandle>) -> Vec<String> {
    match serial {
        Some(serial) => serial.lost_ports().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until the storage retry is due (at once if none is scheduled).
async fn retry_sleep(at: Option<Instant>) {
    tokio::time::sleep_until(at.unwrap_or_else(Instant::now).into()).await;
}

/// Disk errors pass; a record the buffer refuses by its size or config never will.
fn is_transient(err: &BufferError) -> bool {
    matches!(err, BufferError::Io { .. })
}
