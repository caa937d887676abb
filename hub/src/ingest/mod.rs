//! The IO shell of the primary host: one MQTT session that subscribes to `spBv1.0/#`, publishes
//! the retained `STATE` (with an offline Will), feeds [`PrimaryHost`] and applies its actions.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use protocol::HostId;
use protocol::sparkplug::{
    DataType, MessageType, Metric, MetricValue, Payload, REBIRTH_METRIC, Topic,
};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::limits::{LOG_ECHO_BYTES, truncated};

mod acks;
use acks::Connection;
pub use acks::{Ack, AckError};

use crate::MqttLogin;
use crate::host::{Delivery, HostAction, HostSnapshot, PrimaryHost};
use crate::stats::{HubStats, IngestDrop};
use crate::twin::{AlarmStates, Applied, Outcome, StoredTwin, TwinKey, TwinRegistry};

const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// How long ingest waits before resuming its session on another node of a broker cluster
/// (measured on RabbitMQ 3.10: the dead node's in-flight deliveries were back in the queue
/// within about 1 s of its death).
const CLUSTER_RESUME_DELAY: Duration = Duration::from_secs(3);
/// How often the host's own timers (rebirth answers, session checks) run.
const HOST_TICK: Duration = Duration::from_millis(100);

/// Wall clock in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Sparkplug 3.0 STATE payload (JSON, not protobuf).
pub fn state_payload(online: bool, timestamp: u64) -> Vec<u8> {
    format!("{{\"online\":{online},\"timestamp\":{timestamp}}}").into_bytes()
}

/// Where and as whom ingest connects.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// More nodes of the same broker cluster, tried in turn after `host:port` when the
    /// connection is lost.
    pub failover: Vec<(String, u16)>,
    /// The primary host id (STATE topic, client id).
    pub host_id: HostId,
    /// User name and password, when the broker wants them.
    pub login: Option<MqttLogin>,
    /// The MQTT client id of the session (`{host_id}-host`; a replica's slot has its own).
    pub client_id: String,
    /// What the session subscribes to: `spBv1.0/#`, or a replica slot's labs.
    pub subscriptions: Vec<String>,
    /// A replica slot's labs: only their twins go into this session's commits.
    pub labs: Option<Arc<std::collections::HashSet<protocol::LabId>>>,
    /// How long accepted messages may wait for more before they go to storage (and are then
    /// acknowledged).
    pub commit_interval: Duration,
    /// Messages waiting for acknowledgement that make a batch go to storage as soon as it is free.
    pub commit_batch: usize,
    /// Messages waiting for storage at which ingest stops reading the broker until storage
    /// catches up.
    pub max_uncommitted: usize,
    /// An online twin that accepts no sample for this long is marked stale.
    pub stale_after: Duration,
    /// Connect over TLS with this client configuration.
    pub tls: Option<broker::tls::ClientTls>,
}

/// How often twins are checked for silence.
const SILENCE_CHECK_EVERY_MS: u64 = 1_000;

/// What one commit writes: accepted values for history, the twins they changed, the host's
/// sessions, and the broker messages to acknowledge once it is on disk.
#[derive(Debug, Default)]
pub struct Commit {
    /// Accepted samples and property reports.
    pub applied: Vec<Applied>,
    /// Twins changed since the last commit, as they are now (their live part, whole when more
    /// changed), with their alarm state.
    pub twins: Vec<StoredTwin>,
    /// The primary host's sessions.
    pub host: Option<HostSnapshot>,
    /// Messages to acknowledge after the commit.
    pub acks: Vec<Ack>,
    /// Twins retired since the last commit, to delete from the store.
    pub retired: Vec<TwinKey>,
    /// Told when this commit (and every one before it) is done: whether it was committed, or
    /// abandoned (fenced, or at shutdown) for the broker to redeliver.
    pub done: Vec<oneshot::Sender<bool>>,
}

/// The hub's MQTT session: a persistent session (so the broker keeps what arrives while the hub
/// restarts) with manual acknowledgements (so nothing is acknowledged before it is on disk).
pub fn connect(config: &IngestConfig) -> (AsyncClient, EventLoop) {
    // The API's and the host's publishes wait in this queue; it is drained by the event loop,
    // which never waits on storage, so a full queue only delays them. Acknowledgements do not
    // go through it (see `acks`).
    AsyncClient::new(options_for(config, 0), 4096)
}

/// A replica's client for the API's commands (DCMD): a clean session without a Will, kept
/// connected (walking the cluster's nodes) by a task in `tasks` until `cancel` fires. Its
/// client id is the replica's own, so it never takes over a slot's session.
pub fn command_client(
    config: &IngestConfig,
    replica: &crate::replica::ReplicaConfig,
    tasks: &mut tokio::task::JoinSet<()>,
    cancel: &CancellationToken,
) -> AsyncClient {
    let config = IngestConfig {
        client_id: format!("{}-{}-commands", replica.region, replica.id),
        ..config.clone()
    };
    let options = move |index| connection_options(&config, index);
    let (client, mut events) = AsyncClient::new(options(0), 64);
    let cancel = cancel.clone();
    tasks.spawn(async move {
        let mut broker = 0;
        loop {
            tokio::select! {
                event = events.poll() => if event.is_err() {
                    broker += 1;
                    events.mqtt_options = options(broker);
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                },
                () = cancel.cancelled() => return,
            }
        }
    });
    client
}

/// Broker `index` of the list (the configured one, then the failover ones), wrapping.
fn broker_at(config: &IngestConfig, index: usize) -> (&str, u16) {
    nth_broker((&config.host, config.port), &config.failover, index)
}

/// Broker `index` of `primary` followed by `failover`, wrapping: every client of the hub walks
/// a cluster's nodes in the same order.
pub(crate) fn nth_broker<'a>(
    primary: (&'a str, u16),
    failover: &'a [(String, u16)],
    index: usize,
) -> (&'a str, u16) {
    match index % (1 + failover.len()) {
        0 => primary,
        i => failover
            .get(i - 1)
            .map_or(primary, |(host, port)| (host, *port)),
    }
}

/// Where and as whom a client of the hub connects to broker `index` (see [`broker_at`]).
fn connection_options(config: &IngestConfig, index: usize) -> MqttOptions {
    let (host, port) = broker_at(config, index);
    let mut options = MqttOptions::new(config.client_id.clone(), host, port);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(login) = &config.login {
        options.set_credentials(login.username.clone(), login.password.clone());
    }
    if let Some(tls) = &config.tls {
        use_tls(&mut options, tls);
    }
    options
}

/// The session's options for broker `index` (see [`broker_at`]): the same client id, login
/// and Will on every node, so a cluster hands the persistent session over.
fn options_for(config: &IngestConfig, index: usize) -> MqttOptions {
    let state_topic = Topic::State {
        host: config.host_id.clone(),
    }
    .to_string();
    let mut options = connection_options(config, index);
    options.set_clean_session(false);
    options.set_manual_acks(true);
    options.set_inflight(1000);
    options.set_last_will(LastWill::new(
        state_topic,
        state_payload(false, now_ms()),
        QoS::AtLeastOnce,
        true,
    ));
    options
}

/// Makes `options` connect over TLS (rustls on ring, the configured CA only).
pub(crate) fn use_tls(options: &mut MqttOptions, tls: &broker::tls::ClientTls) {
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(tls.rustls_config()),
    ));
}

/// Runs ingest until `cancel` fires. Sets `ready` once subscribed and STATE is online.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    config: IngestConfig,
    client: AsyncClient,
    mut events: EventLoop,
    mut host: PrimaryHost,
    twins: Arc<TwinRegistry>,
    stats: Arc<HubStats>,
    commits: mpsc::UnboundedSender<Commit>,
    mut stored: mpsc::UnboundedReceiver<Vec<Ack>>,
    persister_idle: Arc<crate::persist::Idle>,
    mut flushes: Option<mpsc::UnboundedReceiver<FlushRequest>>,
    ready: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let state_topic = Topic::State {
        host: config.host_id.clone(),
    }
    .to_string();
    let subscriptions: Vec<rumqttc::SubscribeFilter> = config
        .subscriptions
        .iter()
        .map(|filter| rumqttc::SubscribeFilter::new(filter.clone(), QoS::AtLeastOnce))
        .collect();
    let storage = ToStorage {
        commits: &commits,
        idle: &persister_idle,
        twins: &twins,
        labs: config.labs.as_deref(),
    };
    let mut pending = Commit::default();
    let mut host_changed = false;
    let mut ticker = tokio::time::interval(HOST_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the oldest message waiting for a commit must go, batch full or not.
    let mut commit_due: Option<tokio::time::Instant> = None;
    let stale_after_ms = config.stale_after.as_millis() as u64;
    let mut last_silence_check = 0;
    // One poll future lives across ticks: rumqttc's `poll` connects (TCP, TLS, CONNECT) inside
    // it, so dropping it for a tick would abandon a connection attempt that takes longer than
    // the commit interval (a TLS handshake, a distant broker) and start it again, forever.
    let mut poll = Box::pin(events.poll());
    let mut broker = 0;
    let mut connection = Connection::default();
    // The commit interval has passed since the oldest change that waits for storage.
    let mut due = false;
    // Storage is `max_uncommitted` messages behind: the broker is not read until it catches up.
    let mut paused = false;
    loop {
        let uncommitted = persister_idle.uncommitted() + pending.acks.len();
        stats.observe_uncommitted(uncommitted);
        // The broker's window should stop it long before this; one that ignores it would
        // otherwise fill the hub's memory with messages waiting for storage. Acknowledgements
        // do not need the event loop polled (see `acks`), so storage still catches up.
        let was_paused = std::mem::replace(&mut paused, uncommitted >= config.max_uncommitted);
        if paused && !was_paused {
            stats.ingest_paused();
        }
        let batch_ready = due || pending.acks.len() >= config.commit_batch;
        let batch_due = async {
            match commit_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            event = &mut poll, if !paused => event,
            _ = ticker.tick() => {
                let now = now_ms();
                let actions = host.tick(now, &stats);
                perform(actions, now, &mut host, &client, &twins, &stats, &mut pending, &connection);
                if now.saturating_sub(last_silence_check) >= SILENCE_CHECK_EVERY_MS {
                    last_silence_check = now;
                    twins.mark_silent(now, stale_after_ms);
                }
                // What the timers changed (a twin gone stale) waits with the messages.
                commit_due.get_or_insert_with(|| tokio::time::Instant::now() + config.commit_interval);
                continue;
            }
            () = batch_due => {
                commit_due = None;
                due = true;
                storage.offer(&mut pending, &mut host_changed, &host, &mut due);
                continue;
            }
            asked = next_flush(&mut flushes) => {
                match asked {
                    Some(waiter) => {
                        // Goes with the next commit, which is due now; with nothing to write it
                        // still follows the commit in flight, so it answers after that one.
                        pending.done.push(waiter);
                        due = true;
                        if storage.offer(&mut pending, &mut host_changed, &host, &mut due) {
                            commit_due = None;
                        }
                    }
                    None => flushes = None,
                }
                continue;
            }
            () = persister_idle.became_idle(), if batch_ready => {
                if storage.offer(&mut pending, &mut host_changed, &host, &mut due) {
                    commit_due = None;
                }
                continue;
            }
            Some(batch) = stored.recv() => {
                if connection.is_open() {
                    // Between two events of an open connection rumqttc waits in a read, a
                    // request or its keep-alive timer, each of which it can resume; a packet it
                    // left in its write buffer goes out with the acknowledgements.
                    drop(poll);
                    acknowledge(&mut events, &connection, &batch).await;
                    poll = Box::pin(events.poll());
                }
                continue;
            }
            () = cancel.cancelled() => break,
        };
        drop(poll);
        poll = Box::pin(events.poll());
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connection.opened();
                // Subscribing again on a resumed session is harmless and covers a broker that
                // lost the session.
                if let Err(err) = client.try_subscribe_many(subscriptions.clone()) {
                    error!(%err, "cannot subscribe to Sparkplug topics");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                // Spec order: subscribe first, then announce online, so no birth is missed.
                if let Err(err) = client.try_publish(
                    &state_topic,
                    QoS::AtLeastOnce,
                    true,
                    state_payload(true, now_ms()),
                ) {
                    error!(%err, "cannot publish the host STATE");
                }
                ready.send_replace(true);
                info!(host_id = %config.host_id, "primary host online");
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let received_ms = now_ms();
                let actions = host.receive(
                    &publish.topic,
                    &publish.payload,
                    delivery_of(&publish),
                    received_ms,
                    &stats,
                );
                host_changed = true;
                perform(
                    actions,
                    received_ms,
                    &mut host,
                    &client,
                    &twins,
                    &stats,
                    &mut pending,
                    &connection,
                );
                commit_due
                    .get_or_insert_with(|| tokio::time::Instant::now() + config.commit_interval);
                // Group commit: a full batch goes as soon as storage is free; a thin stream
                // waits up to the commit interval for company.
                if pending.acks.len() >= config.commit_batch
                    && storage.offer(&mut pending, &mut host_changed, &host, &mut due)
                {
                    commit_due = None;
                }
            }
            Ok(_) => {}
            Err(err) => {
                connection.lost();
                ready.send_replace(false);
                if cancel.is_cancelled() {
                    break;
                }
                warn!(%err, "hub MQTT connection lost; reconnecting");
                // Unacknowledged, so the broker delivers them again on the resumed session.
                let forgotten = host.forget_held();
                if forgotten > 0 {
                    info!(
                        forgotten,
                        "messages held behind a seq gap wait for redelivery"
                    );
                }
                if !config.failover.is_empty() {
                    // A lost connection may be a dead cluster node: the next attempt goes to
                    // the next one. rumqttc keeps one address per event loop, so the whole
                    // options are replaced; its session state (packets in flight) stays.
                    drop(poll);
                    broker = (broker + 1) % (1 + config.failover.len());
                    events.mqtt_options = options_for(&config, broker);
                    let (host, port) = broker_at(&config, broker);
                    info!(broker = %format!("{host}:{port}"), "hub tries the next broker of the cluster");
                    poll = Box::pin(events.poll());
                    // Resuming the session at once let newer messages overtake the ones the
                    // dead node had in flight to us, which RabbitMQ returns to the queue only
                    // once it notices the node is gone: the late ones were then taken for
                    // replays. Waiting lets them go back first.
                    tokio::time::sleep(CLUSTER_RESUME_DELAY).await;
                }
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }
    drop(poll);
    // A clean stop stores every alarm state, however recent.
    storage.hand_over_with(&mut pending, &mut host_changed, &host, AlarmStates::All);
    // Let storage commit the last batch and send its acknowledgements before leaving, so a
    // clean restart is not redelivered what is already on disk.
    let (done_tx, done) = oneshot::channel();
    let _ = commits.send(Commit {
        done: vec![done_tx],
        ..Commit::default()
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::pin!(done);
        loop {
            tokio::select! {
                _ = &mut done => break,
                Some(batch) = stored.recv() => acknowledge(&mut events, &connection, &batch).await,
                event = events.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => connection.opened(),
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
        // Storage hands the last acknowledgements over before it answers `done`.
        while let Ok(batch) = stored.try_recv() {
            acknowledge(&mut events, &connection, &batch).await;
        }
        while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(20), events.poll()).await {
        }
    })
    .await;
    // A clean stop announces offline itself, since a clean DISCONNECT suppresses the Will.
    let _ = client.try_publish(
        &state_topic,
        QoS::AtLeastOnce,
        true,
        state_payload(false, now_ms()),
    );
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Writes stored messages' acknowledgements (see [`acks::write`]); a failure leaves them to the
/// broker's redelivery, and the event loop reports the broken connection on its next poll.
async fn acknowledge(events: &mut EventLoop, connection: &Connection, batch: &[Ack]) {
    if let Err(err) = acks::write(events, connection, batch).await {
        warn!(%err, messages = batch.len(), "stored messages not acknowledged; the broker delivers them again");
    }
}

/// A request to commit what ingest changed so far, answered with whether it was committed.
pub type FlushRequest = oneshot::Sender<bool>;

/// Asks ingest to commit now everything changed before the call (a change made outside ingest,
/// as an operator's request, included), and waits up to `wait` for it: true once committed.
pub async fn flush(flushes: &mpsc::UnboundedSender<FlushRequest>, wait: Duration) -> bool {
    let (asked, answer) = oneshot::channel();
    if flushes.send(asked).is_err() {
        return false;
    }
    matches!(tokio::time::timeout(wait, answer).await, Ok(Ok(true)))
}

async fn next_flush(
    flushes: &mut Option<mpsc::UnboundedReceiver<FlushRequest>>,
) -> Option<FlushRequest> {
    match flushes {
        Some(flushes) => flushes.recv().await,
        None => std::future::pending().await,
    }
}

/// Applies twin updates and sends rebirth requests; a sample the registry refuses as a
/// `node.seq` jump asks its edge node for a rebirth, and a birth with a new node boot sends the
/// twin's desired values again.
#[allow(clippy::too_many_arguments)]
fn perform(
    actions: Vec<HostAction>,
    now: u64,
    host: &mut PrimaryHost,
    client: &AsyncClient,
    twins: &TwinRegistry,
    stats: &HubStats,
    pending: &mut Commit,
    connection: &Connection,
) {
    let mut queue = std::collections::VecDeque::from(actions);
    while let Some(action) = queue.pop_front() {
        match action {
            HostAction::Twin(update) => {
                let key = match &update {
                    crate::twin::TwinUpdate::Sample { key, .. }
                    | crate::twin::TwinUpdate::Birth { key, .. } => Some(key.clone()),
                    _ => None,
                };
                match twins.apply_at(update, now) {
                    Outcome::Taken(Some(applied)) => pending.applied.push(applied),
                    Outcome::Taken(None) => {}
                    Outcome::Dropped(IngestDrop::TooManyTwins) => {
                        if let (Some(suppressed), Some(key)) =
                            (stats.may_log_drop(IngestDrop::TooManyTwins, now), key)
                        {
                            let twin = truncated(&key.to_string(), LOG_ECHO_BYTES);
                            warn!(%twin, suppressed, "refused a new twin: its lab is at limits.max_twins_per_lab");
                        }
                    }
                    Outcome::Dropped(_) => {}
                    Outcome::Resend {
                        key,
                        gateway,
                        values,
                    } => {
                        let metrics: Vec<&str> = values.iter().map(|(m, _)| m.as_str()).collect();
                        let (topic, payload) =
                            crate::host::device_command(&key, &gateway, &values, now);
                        match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                            Ok(()) => {
                                info!(lab = %key.lab, machine = %key.machine, %gateway, ?metrics,
                                    "node rebooted: desired values sent again")
                            }
                            // They stay pending and turn `no_answer` at the timeout, which
                            // tells the operator to set them again.
                            Err(err) => {
                                warn!(lab = %key.lab, machine = %key.machine, %gateway, %err,
                                    "node rebooted: cannot send its desired values again")
                            }
                        }
                    }
                    Outcome::SeqJump {
                        gateway,
                        seq,
                        last_seq,
                    } => {
                        if let (Some(suppressed), Some(key)) =
                            (stats.may_log_drop(IngestDrop::SeqJump, now), &key)
                        {
                            warn!(lab = %key.lab, machine = %key.machine, seq, last_seq, suppressed,
                                "refused a sample whose node.seq jumped past the window");
                        }
                        if let (Some(gateway), Some(key)) = (gateway, key) {
                            queue.extend(host.seq_jump(&key.lab, &gateway, now, stats));
                        }
                    }
                }
            }
            HostAction::Path(path) => twins.record_path(path, now),
            HostAction::Acknowledge(delivery) => pending.acks.push(connection.ack(delivery)),
            HostAction::RequestRebirth { lab, gateway } => {
                let topic = Topic::node(&lab, MessageType::NCmd, &gateway).to_string();
                let payload = Payload {
                    timestamp: Some(now_ms()),
                    metrics: vec![
                        Metric::new(DataType::Boolean, MetricValue::Boolean(true))
                            .named(REBIRTH_METRIC),
                    ],
                    ..Default::default()
                };
                if let Err(err) =
                    client.try_publish(topic, QoS::AtLeastOnce, false, payload.encode_to_vec())
                {
                    warn!(%lab, %gateway, %err, "cannot request a rebirth");
                }
            }
        }
    }
}

/// What the broker needs back for `publish` once it is stored: nothing at QoS 0.
fn delivery_of(publish: &Publish) -> Option<Delivery> {
    (publish.qos != QoS::AtMostOnce).then_some(Delivery {
        pkid: publish.pkid,
        exactly_once: publish.qos == QoS::ExactlyOnce,
    })
}

/// The way from ingest to the storage task.
struct ToStorage<'a> {
    commits: &'a mpsc::UnboundedSender<Commit>,
    idle: &'a crate::persist::Idle,
    twins: &'a TwinRegistry,
    labs: Option<&'a std::collections::HashSet<protocol::LabId>>,
}

impl ToStorage<'_> {
    /// Hands what waits to storage if storage is idle (true, and `due` cleared, when it did or
    /// nothing waited). Never queues a commit behind a running one: what arrives meanwhile joins
    /// the next, so only one batch of twin copies exists at a time however far storage falls
    /// behind, and the broker's window bounds what waits.
    fn offer(
        &self,
        pending: &mut Commit,
        host_changed: &mut bool,
        host: &PrimaryHost,
        due: &mut bool,
    ) -> bool {
        if !self.idle.claim() {
            return false;
        }
        if !self.hand_over(pending, host_changed, host) {
            self.idle.unclaim();
        }
        *due = false;
        true
    }

    /// Sends what accumulated to storage (false when nothing had), with a consistent copy of the
    /// twins it changed: they are copied here, on the only task that applies samples, so a twin
    /// on disk is never ahead of the history and acknowledgements committed with it.
    fn hand_over(&self, pending: &mut Commit, host_changed: &mut bool, host: &PrimaryHost) -> bool {
        self.hand_over_with(pending, host_changed, host, AlarmStates::DueAt(now_ms()))
    }

    /// [`Self::hand_over`], taking the alarm states `alarms` says besides the changed twins'.
    fn hand_over_with(
        &self,
        pending: &mut Commit,
        host_changed: &mut bool,
        host: &PrimaryHost,
        alarms: AlarmStates,
    ) -> bool {
        let (mut dirty, retired) = match self.labs {
            Some(labs) => (
                self.twins.take_dirty_in(labs),
                self.twins.take_retired_in(labs),
            ),
            None => (self.twins.take_dirty(), self.twins.take_retired()),
        };
        // Twins whose alarm state samples left behind long enough go along, changed or not.
        let changed: std::collections::HashSet<TwinKey> = dirty.iter().cloned().collect();
        dirty.extend(
            self.twins
                .alarms_due(alarms)
                .into_iter()
                .filter(|key| !changed.contains(key)),
        );
        if pending.acks.is_empty()
            && pending.applied.is_empty()
            && pending.done.is_empty()
            && dirty.is_empty()
            && retired.is_empty()
        {
            return false;
        }
        let mut commit = std::mem::take(pending);
        commit.retired = retired;
        // A replica's slot (it has labs) stores whole twins: the other replicas mirror them.
        let always_whole = self.labs.is_some();
        commit.twins = dirty
            .iter()
            .filter_map(|key| self.twins.stored(key, always_whole, alarms))
            .collect();
        if std::mem::take(host_changed) {
            commit.host = Some(host.snapshot());
        }
        self.idle.handed_over(commit.acks.len());
        // Storage ends after ingest, so the receiver is alive while this runs.
        let _ = self.commits.send(commit);
        true
    }
}

#[cfg(test)]
mod failover_tests {
    use super::*;

    fn config(failover: Vec<(String, u16)>) -> IngestConfig {
        IngestConfig {
            host: "a".into(),
            port: 1,
            failover,
            host_id: "demolab-hub".parse().expect("host id"),
            login: Some(MqttLogin {
                username: "hub".into(),
                password: "pw".into(),
            }),
            client_id: "demolab-hub-host".into(),
            subscriptions: vec!["spBv1.0/#".into()],
            labs: None,
            commit_interval: Duration::from_millis(10),
            commit_batch: 16,
            max_uncommitted: 64,
            stale_after: Duration::from_secs(10),
            tls: None,
        }
    }

    #[test]
    fn after_a_lost_connection_the_next_cluster_node_is_tried_and_the_list_wraps() {
        let config = config(vec![("b".into(), 2), ("c".into(), 3)]);
        let tried: Vec<_> = (0..4)
            .map(|i| options_for(&config, i).broker_address())
            .collect();
        assert_eq!(
            tried,
            [
                ("a".into(), 1),
                ("b".into(), 2),
                ("c".into(), 3),
                ("a".into(), 1)
            ]
        );
        let options = options_for(&config, 1);
        assert_eq!(
            options.client_id(),
            "demolab-hub-host",
            "one session everywhere"
        );
        assert!(
            !options.clean_session(),
            "the session persists across nodes"
        );
        assert!(
            options.last_will().is_some(),
            "the offline STATE Will everywhere"
        );
    }

    #[test]
    fn without_failover_the_one_broker_is_tried_again() {
        assert_eq!(broker_at(&config(Vec::new()), 3), ("a", 1));
    }
}
