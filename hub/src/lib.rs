//! The digital-twin hub: Sparkplug B primary host, twins, storage, REST and live streams.
//!
//! Data path position: last. Gateways publish Sparkplug B to the broker (embedded here by
//! default, see [`broker`]); [`ingest`] feeds the [`host`] state machine, whose updates land in
//! the [`twin`] registry; [`api`] serves them over HTTP and WebSocket; [`store`] keeps them on
//! disk so a restart brings every twin back.
//!
//! ```no_run
//! # async fn demo() -> Result<(), demolab_hub::HubError> {
//! use demolab_hub::{Hub, HubConfig};
//! let hub = Hub::start(HubConfig::default()).await?;
//! println!("web: http://{}", hub.http_addr());
//! hub.shutdown().await
//! # }
//! ```

pub mod aas;
pub mod alarm;
pub mod api;
pub mod auth;
pub mod catalogue;
pub mod config;
pub mod directory;
pub mod games;
pub mod history;
/// The embedded MQTT broker (its own crate, so a gateway in a lab without a broker can run one too).
pub use ::broker;
/// The HTTP accept loop, shared with the gateways' ops endpoint.
pub use http_guard as http;
pub mod host;
pub mod ingest;
pub mod kpi;
pub mod limits;
pub mod malloc;
pub mod mqtt_accounts;
pub mod outputs;
pub mod persist;
pub mod playbooks;
pub mod replica;
pub mod scenarios;
pub mod stats;
pub mod store;
pub mod twin;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::HostId;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::{Auth, AuthConfig, AuthError};
use crate::broker::{BrokerConfig, BrokerError, EmbeddedBroker};
use crate::directory::Directory;
use crate::history::Retention;
use crate::history::influx::{InfluxConfig, InfluxSink};
use crate::history::long_term::LongTermReader;
use crate::host::{HostPolicy, PrimaryHost};
use crate::ingest::IngestConfig;
use crate::limits::Limits;
use crate::stats::HubStats;
use crate::store::{StoreError, TwinStore};
use crate::twin::TwinRegistry;

/// Which broker the hub uses.
#[derive(Debug, Clone)]
pub enum BrokerSetting {
    /// Run the embedded broker.
    Embedded(BrokerConfig),
    /// Use an external broker (Mosquitto, EMQX).
    External {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
        /// More nodes of the same broker cluster (host, port), tried in turn after
        /// `host:port` (and round again) whenever the connection is lost.
        failover: Vec<(String, u16)>,
    },
}

/// Extra Prometheus text appended to `/metrics`, e.g. the counters of gateways running in the
/// same process (the demo). The hub calls it on every scrape.
#[derive(Clone)]
pub struct MetricsSource(pub Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSource(..)")
    }
}

/// MQTT user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttLogin {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for MqttLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MqttLogin({}, ***)", self.username)
    }
}

/// The hub's configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The Sparkplug primary host id.
    pub host_id: HostId,
    /// Where the HTTP API listens (port 0 picks one).
    pub http_bind: SocketAddr,
    /// The broker.
    pub broker: BrokerSetting,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// How long accepted messages may wait for more before they are committed to disk (then
    /// acknowledged to the broker).
    pub flush_interval: Duration,
    /// Commit at once when this many messages wait for their acknowledgement.
    pub commit_batch: usize,
    /// Stop reading the broker while this many messages wait for storage.
    pub max_uncommitted: usize,
    /// Bytes of the embedded store's page cache.
    pub store_cache_bytes: usize,
    /// How often memory free inside the allocator goes back to the kernel; `None` leaves it to
    /// the allocator (see [`malloc::release_free_memory`]).
    pub release_memory_every: Option<Duration>,
    /// More counters for `/metrics`.
    pub extra_metrics: Option<MetricsSource>,
    /// Labs, machines, links and the machine-kind catalogue.
    pub directory: Arc<Directory>,
    /// Users, roles and games.
    pub auth: AuthConfig,
    /// The hub's own broker login.
    pub mqtt_login: Option<MqttLogin>,
    /// Run as one replica of a region (`[replica]`); `None` is a hub on its own.
    pub replica: Option<replica::ReplicaConfig>,
    /// Publish retained JSON values on `demolab/{lab}/{machine}/{metric}`.
    pub json_topics: bool,
    /// How often the JSON topics get the newest committed values.
    pub json_interval: Duration,
    /// How long the embedded history is kept.
    pub retention: Retention,
    /// The InfluxDB sink, when configured.
    pub influx: Option<InfluxConfig>,
    /// Simulator scenarios on simulated machines (the demo region), for the demo mode.
    pub scenarios: Option<Arc<dyn scenarios::ScenarioControl>>,
    /// Take births of labs and machines the directory does not list (still capped).
    pub accept_unknown: bool,
    /// What the hub accepts from the wire.
    pub limits: Limits,
    /// An online twin that accepts no sample for this long is marked stale.
    pub stale_after: Duration,
    /// Connection caps and timeouts of the HTTP server.
    pub http: http::HttpLimits,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub https: Option<broker::tls::ServerTlsFiles>,
    /// Connect the hub's own MQTT clients (ingest, JSON topics) over TLS. With the embedded
    /// broker they then use its TLS listener, which must be configured.
    pub mqtt_tls: Option<broker::tls::ClientTls>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            host_id: HostId::new("demolab-hub").unwrap_or_else(|_| unreachable!("valid literal")),
            http_bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            broker: BrokerSetting::Embedded(BrokerConfig::default()),
            data_dir: PathBuf::from("data"),
            flush_interval: DEFAULT_COMMIT_INTERVAL,
            commit_batch: DEFAULT_COMMIT_BATCH_EMBEDDED,
            max_uncommitted: DEFAULT_MAX_UNCOMMITTED,
            store_cache_bytes: store::DEFAULT_CACHE_BYTES,
            release_memory_every: Some(malloc::DEFAULT_RELEASE_EVERY),
            extra_metrics: None,
            directory: Arc::default(),
            auth: AuthConfig::default(),
            mqtt_login: None,
            replica: None,
            json_topics: true,
            json_interval: outputs::DEFAULT_JSON_INTERVAL,
            retention: Retention::default(),
            influx: None,
            scenarios: None,
            accept_unknown: false,
            limits: Limits::default(),
            stale_after: DEFAULT_STALE_AFTER,
            http: http::HttpLimits::default(),
            https: None,
            mqtt_tls: None,
        }
    }
}

/// How long an online twin may go without an accepted sample before it is marked stale: well
/// above any sample period the demo and the gateways use, and above the gateway's own
/// liveness timeout (10 s), which normally reports a silent node first.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

/// How long an accepted message may wait for others to share its commit. Each commit costs an
/// fsync and a copy of every twin it changed, whatever it holds: at low rates this wait, not the
/// message count, sets the number of commits (and the hub's CPU).
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(50);

/// Messages that make a commit go at once behind an external broker whose window of
/// unacknowledged messages per client is unknown: below Mosquitto's default of 20, so a full
/// batch never waits out the interval. Behind a wider window (`max_inflight_messages 1000` in
/// `deploy/mosquitto/mosquitto.conf`) a larger batch costs far less CPU per message: storage
/// otherwise commits as often as it can, each commit an fsync and a copy of its twins.
pub const DEFAULT_COMMIT_BATCH: usize = 16;

/// The batch with the embedded broker, whose window is 1000 (`BrokerConfig`).
pub const DEFAULT_COMMIT_BATCH_EMBEDDED: usize = 256;

/// Messages read from the broker and not yet stored at which ingest stops reading until
/// storage catches up. A broker that holds its window of unacknowledged messages (the embedded
/// one, Mosquitto from 2.0.13) never lets this many through; Mosquitto 2.0.11 let 21,603 wait
/// in the hub at 10,000 twins, about 20 MB.
pub const DEFAULT_MAX_UNCOMMITTED: usize = 4096;

/// Why the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The HTTP port could not be bound.
    #[error("cannot bind the web server to {addr}")]
    HttpBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The embedded broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The access configuration is invalid.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The stored games cannot be read.
    #[error("games: {0}")]
    Games(#[from] games::GameError),
    /// A hub task panicked.
    #[error("hub task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    http_addr: SocketAddr,
    https: bool,
    mqtt_addr: SocketAddr,
    mqtt_tls_addr: Option<SocketAddr>,
    twins: Arc<TwinRegistry>,
    stats: Arc<HubStats>,
    ready: watch::Receiver<bool>,
    broker: Option<EmbeddedBroker>,
    ingest: JoinSet<()>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl Hub {
    /// Opens storage, starts the broker (if embedded), ingest and the HTTP server.
    pub async fn start(config: HubConfig) -> Result<Hub, HubError> {
        let auth = Arc::new(Auth::new(config.auth.clone())?);
        let store = Arc::new(TwinStore::open_with_cache(
            &config.data_dir,
            config.store_cache_bytes,
        )?);
        let games = Arc::new(games::Games::open(
            auth.clone(),
            store.clone(),
            config.scenarios.clone(),
        )?);
        let stats = Arc::new(HubStats::with_log_interval(config.limits.log_interval_ms));
        let twins = Arc::new(TwinRegistry::with_limits(
            stats.clone(),
            config.directory.clone(),
            config.limits.clone(),
        ));
        // A replica's twins are the region's, in the shared store.
        let restored = if config.replica.is_some() {
            Vec::new()
        } else {
            store.load()?
        };
        info!(twins = restored.len(), dir = %config.data_dir.display(), "twins restored from storage");
        let mut alarms = store.load_alarms()?;
        twins.restore(restored.into_iter().map(|twin| {
            let snapshot = alarms.remove(&twin.id);
            (twin, snapshot)
        }));
        let unlisted = twins.unlisted();
        if !config.accept_unknown && !unlisted.is_empty() {
            warn!(
                count = unlisted.len(),
                first = %unlisted[0],
                "restored twins that no lab lists; retire them with DELETE /api/v1/twins/{{lab}}/{{machine}}"
            );
        }
        let host_policy = HostPolicy {
            directory: config.directory.clone(),
            accept_unknown: config.accept_unknown,
            limits: config.limits.clone(),
        };
        let mut host = PrimaryHost::new(host_policy.clone());
        if let Some(snapshot) = store.document(persist::HOST_DOCUMENT)? {
            host.restore(snapshot);
        }

        // Bind HTTP before starting anything else so a taken port fails fast and cleanly.
        let listener = tokio::net::TcpListener::bind(config.http_bind)
            .await
            .map_err(|source| HubError::HttpBind {
                addr: config.http_bind,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| HubError::HttpBind {
            addr: config.http_bind,
            source,
        })?;

        let https = match &config.https {
            Some(files) => {
                let mut server = files
                    .load(["hub.tls_cert", "hub.tls_key", "hub.tls_client_ca"])
                    .map_err(|err| HubError::Config(err.to_string()))?;
                server.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(Arc::new(server))
            }
            None => None,
        };

        // `mqtt_addr` is what the hub reports (the broker's plain listener when embedded);
        // `client_addr` is where its own clients connect (the TLS listener with `mqtt_tls`).
        let (broker, mqtt_addr, client_addr, broker_host) = match &config.broker {
            BrokerSetting::Embedded(broker_config) => {
                let mut broker_config = broker_config.clone();
                if broker_config.access.is_some() {
                    broker_config.token_logins = Some(Arc::new(auth::TeamLogins(auth.clone())));
                }
                let broker = EmbeddedBroker::start(broker_config).await?;
                let client_addr = match (&config.mqtt_tls, broker.tls_local_addr()) {
                    (None, _) => broker.local_addr(),
                    (Some(_), Some(tls)) => tls,
                    (Some(_), None) => {
                        return Err(HubError::Config(
                            "broker.tls (the hub's own MQTT clients over TLS) needs the embedded broker's TLS listener (broker.tls_listen)".into(),
                        ));
                    }
                };
                // A wildcard bind is reached on loopback (and that is the name a local
                // certificate carries).
                let host = if client_addr.ip().is_unspecified() {
                    std::net::Ipv4Addr::LOCALHOST.to_string()
                } else {
                    client_addr.ip().to_string()
                };
                let addr = broker.local_addr();
                (Some(broker), addr, client_addr, host)
            }
            BrokerSetting::External { host, port, .. } => {
                let addr = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], *port)));
                (None, addr, addr, host.clone())
            }
        };
        let mqtt_tls_addr = broker.as_ref().and_then(EmbeddedBroker::tls_local_addr);

        let cancel = CancellationToken::new();
        let (ready_tx, ready) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let ingest_config = IngestConfig {
            host: broker_host.clone(),
            port: client_addr.port(),
            failover: match &config.broker {
                BrokerSetting::External { failover, .. } => failover.clone(),
                BrokerSetting::Embedded(_) => Vec::new(),
            },
            host_id: config.host_id.clone(),
            login: config.mqtt_login.clone(),
            client_id: format!("{}-host", config.host_id),
            subscriptions: vec![format!("{}/#", protocol::sparkplug::NAMESPACE)],
            labs: None,
            commit_interval: config.flush_interval,
            commit_batch: config.commit_batch,
            max_uncommitted: config.max_uncommitted,
            stale_after: config.stale_after,
            tls: config.mqtt_tls.clone(),
        };
        let long_term = match &config.influx {
            Some(influx) => LongTermReader::new(influx, config.retention.clone())
                .map_err(|err| HubError::Config(format!("influx: {err}")))?
                .map(Arc::new),
            None => None,
        };
        let influx = match config.influx.clone() {
            Some(influx) => {
                let (sink, task) = InfluxSink::start(influx, cancel.clone())
                    .map_err(|err| HubError::Config(format!("influx: {err}")))?;
                tasks.spawn(async move {
                    let _ = task.await;
                });
                Some(sink)
            }
            None => None,
        };
        let outputs = outputs::start(
            config.json_topics.then(|| outputs::JsonTopicsBroker {
                host: broker_host.clone(),
                port: client_addr.port(),
                failover: ingest_config.failover.clone(),
                login: config.mqtt_login.clone(),
                client_id: format!("{}-json", config.host_id),
                tls: config.mqtt_tls.clone(),
            }),
            config.json_interval,
            influx.clone(),
            twins.clone(),
            stats.clone(),
            cancel.clone(),
            &mut tasks,
        );
        let mut ingest = JoinSet::new();
        let client = match config.replica.clone() {
            None => {
                let (client, events) = ingest::connect(&ingest_config);
                let (commit_tx, commit_rx) = tokio::sync::mpsc::unbounded_channel();
                let (stored_tx, stored_rx) = tokio::sync::mpsc::unbounded_channel();
                let persister_idle = Arc::new(persist::Idle::default());
                ingest.spawn(ingest::run(
                    ingest_config,
                    client.clone(),
                    events,
                    host,
                    twins.clone(),
                    stats.clone(),
                    commit_tx,
                    stored_rx,
                    persister_idle.clone(),
                    None,
                    ready_tx,
                    cancel.clone(),
                ));
                ingest.spawn(persist::run(
                    commit_rx,
                    persist::Storage::Local(store.clone()),
                    stored_tx,
                    stats.clone(),
                    outputs,
                    persister_idle,
                ));
                client
            }
            Some(replica) => {
                let mut labs: HashMap<u32, Vec<protocol::LabId>> = HashMap::new();
                for lab in config.directory.labs() {
                    labs.entry(replica::slot_of(&lab.id, replica.slots))
                        .or_default()
                        .push(lab.id.clone());
                }
                let commands =
                    ingest::command_client(&ingest_config, &replica, &mut tasks, &cancel);
                info!(replica = %replica.id, region = %replica.region, slots = replica.slots,
                    "hub runs as a replica of its region");
                ingest.spawn(replica::run(
                    replica,
                    replica::SlotParts {
                        ingest: ingest_config,
                        policy: host_policy,
                        labs: Arc::new(labs),
                        twins: twins.clone(),
                        stats: stats.clone(),
                        outputs,
                        commands: commands.clone(),
                    },
                    ready_tx,
                    cancel.clone(),
                ));
                commands
            }
        };
        let shared_history = config
            .replica
            .as_ref()
            .map(|replica| Arc::new(replica::SharedHistory::new(replica.clone())));
        let forwarder = config
            .replica
            .as_ref()
            .map(|replica| Arc::new(replica::requests::Forwarder::new(replica.clone())));
        if let Some(replica) = &config.replica {
            // Logins are the region's, so a load balancer need not keep a browser on one replica.
            auth.share_sessions(Arc::new(replica::sessions::SharedSessions::new(
                replica.clone(),
            )));
            tasks.spawn(auth.clone().follow_shared(cancel.clone()));
        }
        tasks.spawn(housekeeping(
            twins.clone(),
            store.clone(),
            config.retention.clone(),
            stats.clone(),
            cancel.clone(),
        ));
        if let Some(every) = config.release_memory_every {
            tasks.spawn(release_memory(every, stats.clone(), cancel.clone()));
        }
        let denials = broker.as_ref().map(EmbeddedBroker::denials);
        let security = security_counters(denials.clone(), stats.clone(), auth.clone());
        let refusals = security.clone();
        let playbooks = Arc::new(playbooks::Playbooks::new(
            config.scenarios.clone(),
            twins.clone(),
            Arc::new(move || (refusals.0)().total()),
        ));
        tasks.spawn(demo_clock(games.clone(), playbooks.clone(), cancel.clone()));

        let app = api::router(api::AppState {
            twins: twins.clone(),
            stats: stats.clone(),
            ready: ready.clone(),
            extra_metrics: Some(more_metrics(
                config.extra_metrics.clone(),
                denials,
                broker
                    .as_ref()
                    .and_then(|broker| broker.tls_local_addr().map(|_| broker.tls_counters())),
                influx,
                long_term.clone(),
            )),
            auth,
            store,
            long_term,
            shared_history,
            forwarder,
            commands: api::Commands::new(client),
            scenarios: config.scenarios.clone(),
            games,
            playbooks,
            security,
        });
        let tls = https.is_some();
        tasks.spawn(http::serve(
            listener,
            app,
            https,
            config.http.clone(),
            stats.http_counters(),
            cancel.clone(),
        ));
        info!(%http_addr, %mqtt_addr, https = tls, "hub started");
        Ok(Hub {
            http_addr,
            https: tls,
            mqtt_addr,
            mqtt_tls_addr,
            twins,
            stats,
            ready,
            broker,
            ingest,
            tasks,
            cancel,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The MQTT broker address (embedded: its plain listener; or the external broker).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The embedded broker's TLS listener, when it has one.
    pub fn mqtt_tls_addr(&self) -> Option<SocketAddr> {
        self.mqtt_tls_addr
    }

    /// The embedded broker's TLS listener counters, when it has one.
    pub fn tls_counters(&self) -> Option<Arc<broker::TlsCounters>> {
        self.broker
            .as_ref()
            .filter(|broker| broker.tls_local_addr().is_some())
            .map(EmbeddedBroker::tls_counters)
    }

    /// Whether the web server speaks HTTPS.
    pub fn https(&self) -> bool {
        self.https
    }

    /// The twin registry.
    pub fn twins(&self) -> &Arc<TwinRegistry> {
        &self.twins
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<HubStats> {
        &self.stats
    }

    /// Waits until ingest is subscribed and the host STATE is online.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        // An error means ingest ended, i.e. the hub is shutting down: nothing left to wait for.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Stops ingest (committing what it accepted and publishing STATE offline), then HTTP and
    /// the outputs, then the broker.
    pub async fn shutdown(mut self) -> Result<(), HubError> {
        self.cancel.cancel();
        while let Some(result) = self.ingest.join_next().await {
            result?;
        }
        while let Some(result) = self.tasks.join_next().await {
            result?;
        }
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await?;
        }
        info!("hub stopped");
        Ok(())
    }
}

/// The counters of the hub's parts beside ingest: broker denials, the InfluxDB sink, and
/// whatever the caller adds (the demo's gateways).
fn more_metrics(
    extra: Option<MetricsSource>,
    denials: Option<Arc<broker::DenialCounters>>,
    tls: Option<Arc<broker::TlsCounters>>,
    influx: Option<InfluxSink>,
    long_term: Option<Arc<LongTermReader>>,
) -> MetricsSource {
    MetricsSource(Arc::new(move || {
        let mut text = String::new();
        if let Some(denials) = &denials {
            text.push_str(&denials.render_prometheus());
        }
        if let Some(tls) = &tls {
            text.push_str(&tls.render_prometheus());
        }
        if let Some(influx) = &influx {
            text.push_str(&influx.render_prometheus());
        }
        if let Some(long_term) = &long_term {
            text.push_str(&long_term.render_prometheus());
        }
        if let Some(extra) = &extra {
            text.push_str(&(extra.0)());
        }
        text
    }))
}

/// How long a desired value may wait for the machine's answer. Gateways answer within 5 s
/// (`command.result` 4 when the node is silent); this covers a gateway that is gone.
const DESIRED_TIMEOUT_MS: u64 = 15_000;

/// How often old history is folded into rollups and expired.
const COMPACT_EVERY: Duration = Duration::from_secs(10);

async fn housekeeping(
    twins: Arc<TwinRegistry>,
    store: Arc<TwinStore>,
    retention: Retention,
    stats: Arc<HubStats>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last_compaction = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = cancel.cancelled() => return,
        }
        twins.expire_desired(ingest::now_ms(), DESIRED_TIMEOUT_MS);
        twins.prune_alarms(ingest::now_ms());
        if last_compaction.elapsed() >= COMPACT_EVERY {
            last_compaction = tokio::time::Instant::now();
            let (store, retention) = (store.clone(), retention.clone());
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || compact(&store, &retention)).await;
            match result {
                Ok(Ok(done)) => stats.compacted(done.skipped, started.elapsed()),
                Ok(Err(err)) => error!(%err, "history compaction failed"),
                Err(_) => {}
            }
        }
    }
}

/// Gives memory freed since the last round back to the kernel every `every`, so RSS follows what
/// the hub holds now rather than its highest point (`demolab_hub_memory_releases_total`).
async fn release_memory(every: Duration, stats: Arc<HubStats>, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = cancel.cancelled() => return,
        }
        let started = std::time::Instant::now();
        if let Ok(released) = tokio::task::spawn_blocking(malloc::release_free_memory).await {
            stats.memory_released(released, started.elapsed());
        }
    }
}

/// Stages the games' faults and ends their time, and moves guided demonstrations on; twice a
/// second, so a fault's recorded start is at most half a second after its due time.
async fn demo_clock(
    games: Arc<games::Games>,
    playbooks: Arc<playbooks::Playbooks>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = cancel.cancelled() => return,
        }
        let games = games.clone();
        // A tick may write the games to the database.
        let _ = tokio::task::spawn_blocking(move || games.tick(ingest::now_ms())).await;
        playbooks.tick(ingest::now_ms());
    }
}

/// What the security panel counts: the embedded broker's refusals, refused web logins and
/// Sparkplug messages refused from the wire.
fn security_counters(
    denials: Option<Arc<broker::DenialCounters>>,
    stats: Arc<HubStats>,
    auth: Arc<Auth>,
) -> api::SecuritySource {
    use crate::auth::AccessEvent as A;
    use crate::stats::IngestDrop as D;
    api::SecuritySource(Arc::new(move || {
        let broker = denials.as_ref().map(|d| d.snapshot()).unwrap_or_default();
        let access = auth.counters();
        api::SecurityCounters {
            mqtt_logins_refused: broker.connect,
            mqtt_publishes_refused: broker.publish,
            mqtt_subscriptions_refused: broker.subscribe,
            web_logins_refused: [
                A::BadCredentials,
                A::RateLimitedAddress,
                A::RateLimitedUser,
                A::RateLimitedTableFull,
            ]
            .into_iter()
            .map(|e| access.get(e))
            .sum(),
            wire_refused: [
                D::UnregisteredGateway,
                D::UnknownLab,
                D::UnknownMachine,
                D::SeqJump,
                D::BdSeqMismatch,
            ]
            .into_iter()
            .map(|d| stats.dropped(d))
            .sum(),
        }
    }))
}

fn compact(store: &TwinStore, retention: &Retention) -> Result<history::CompactStats, StoreError> {
    let txn = store.database().begin_write().map_err(|e| store.error(e))?;
    let done = history::compact(&txn, ingest::now_ms(), retention)
        .map_err(|e| StoreError::History(e.to_string()))?;
    if done.skipped {
        // Nothing written: leave the commit's fsync out.
        txn.abort().map_err(|e| store.error(e))?;
    } else {
        txn.commit().map_err(|e| store.error(e))?;
    }
    Ok(done)
}
