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

pub mod api;
/// The embedded MQTT broker (its own crate, so a gateway in a lab without a broker can run one too).
pub use ::broker;
pub mod host;
pub mod ingest;
pub mod stats;
pub mod store;
pub mod twin;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::HostId;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::broker::{BrokerConfig, BrokerError, EmbeddedBroker};
use crate::ingest::IngestConfig;
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
    /// How often changed twins are written to disk.
    pub flush_interval: Duration,
    /// More counters for `/metrics`.
    pub extra_metrics: Option<MetricsSource>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            host_id: HostId::new("demolab-hub").unwrap_or_else(|_| unreachable!("valid literal")),
            http_bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            broker: BrokerSetting::Embedded(BrokerConfig::default()),
            data_dir: PathBuf::from("data"),
            flush_interval: Duration::from_millis(500),
            extra_metrics: None,
        }
    }
}

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
    /// A hub task panicked.
    #[error("hub task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    http_addr: SocketAddr,
    mqtt_addr: SocketAddr,
    twins: Arc<TwinRegistry>,
    stats: Arc<HubStats>,
    ready: watch::Receiver<bool>,
    broker: Option<EmbeddedBroker>,
    store: Arc<TwinStore>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl Hub {
    /// Opens storage, starts the broker (if embedded), ingest and the HTTP server.
    pub async fn start(config: HubConfig) -> Result<Hub, HubError> {
        let store = Arc::new(TwinStore::open(&config.data_dir)?);
        let stats = Arc::new(HubStats::default());
        let twins = Arc::new(TwinRegistry::new(stats.clone()));
        let restored = store.load()?;
        info!(twins = restored.len(), dir = %config.data_dir.display(), "twins restored from storage");
        twins.restore(restored);

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

        let (broker, mqtt_addr, broker_host) = match &config.broker {
            BrokerSetting::Embedded(broker_config) => {
                let broker = EmbeddedBroker::start(broker_config.clone()).await?;
                let addr = broker.local_addr();
                (Some(broker), addr, addr.ip().to_string())
            }
            BrokerSetting::External { host, port } => {
                let addr = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], *port)));
                (None, addr, host.clone())
            }
        };

        let cancel = CancellationToken::new();
        let (ready_tx, ready) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let ingest_config = IngestConfig {
            host: broker_host,
            port: mqtt_addr.port(),
            host_id: config.host_id.clone(),
        };
        tasks.spawn(ingest::run(
            ingest_config,
            twins.clone(),
            stats.clone(),
            ready_tx,
            cancel.clone(),
        ));
        tasks.spawn(flush_loop(
            store.clone(),
            twins.clone(),
            config.flush_interval,
            cancel.clone(),
        ));

        let app = api::router(api::AppState {
            twins: twins.clone(),
            stats: stats.clone(),
            ready: ready.clone(),
            extra_metrics: config.extra_metrics.clone(),
        });
        let http_cancel = cancel.clone();
        tasks.spawn(async move {
            let shutdown = async move { http_cancel.cancelled().await };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                error!(%err, "HTTP server failed");
            }
        });
        info!(%http_addr, %mqtt_addr, "hub started");
        Ok(Hub {
            http_addr,
            mqtt_addr,
            twins,
            stats,
            ready,
            broker,
            store,
            tasks,
            cancel,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The MQTT broker address (embedded or external).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
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

    /// Stops HTTP and ingest (publishing STATE offline), writes every twin, stops the broker.
    pub async fn shutdown(mut self) -> Result<(), HubError> {
        self.cancel.cancel();
        while let Some(result) = self.tasks.join_next().await {
            result?;
        }
        self.store.save(&self.twins.list(None))?;
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await?;
        }
        info!("hub stopped");
        Ok(())
    }
}

async fn flush_loop(
    store: Arc<TwinStore>,
    twins: Arc<TwinRegistry>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = cancel.cancelled() => return,
        }
        let dirty: Vec<_> = twins
            .take_dirty()
            .iter()
            .filter_map(|key| twins.get(key))
            .collect();
        let store = store.clone();
        // redb commits fsync; keep them off the async workers.
        match tokio::task::spawn_blocking(move || store.save(&dirty)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => error!(%err, "cannot persist twins"),
            Err(err) => error!(%err, "twin persistence task failed"),
        }
    }
}
