//! `hub.toml`: the production hub's configuration file (`demolab-hub --config hub.toml`).
//!
//! Every section has defaults, so an empty file runs a hub with the embedded broker on 1883,
//! the web platform on 8080 and storage under `./data`. Errors name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::HostId;
use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::broker::access::AccessConfig;
use crate::broker::tls::{ClientTlsFiles, ServerTlsFiles};
use crate::broker::{BrokerConfig, BrokerTls};
use crate::catalogue::Catalogue;
use crate::directory::{Directory, LabConfig, LinkConfig};
use crate::history::Retention;
use crate::history::influx::InfluxConfig;
use crate::http::HttpLimits;
use crate::limits::Limits;
use crate::{BrokerSetting, HubConfig, MqttLogin};

/// The file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    /// `[hub]`.
    #[serde(default)]
    pub hub: HubSection,
    /// `[broker]`.
    #[serde(default)]
    pub broker: BrokerSection,
    /// `[auth]`, `[[auth.users]]`, `[[auth.games]]`.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[[labs]]` with `[[labs.machines]]`.
    #[serde(default)]
    pub labs: Vec<LabConfig>,
    /// `[[links]]` of virtual production lines.
    #[serde(default)]
    pub links: Vec<LinkConfig>,
    /// `[history]`: how long the embedded history is kept.
    #[serde(default)]
    pub history: Retention,
    /// `[influx]`: the long-term history sink (off when absent).
    #[serde(default)]
    pub influx: Option<InfluxConfig>,
    /// `[limits]`: what the hub accepts from the wire.
    #[serde(default)]
    pub limits: Limits,
    /// `[http]`: connection caps and timeouts of the web server.
    #[serde(default)]
    pub http: HttpSection,
    /// `[replica]`: this hub is one replica of a region (off when absent).
    #[serde(default)]
    pub replica: Option<ReplicaSection>,
}

/// `[replica]`: several hubs on one broker cluster and one PostgreSQL serve the region as one
/// system (docs/architecture.md, "Hub replicas").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSection {
    /// This replica's name, unique in the region (letters, digits, `-`, `_`).
    pub id: String,
    /// The region; the same on every replica.
    #[serde(default = "default_region")]
    pub region: String,
    /// The shared PostgreSQL, as a libpq connection string (`host=db user=demolab dbname=demolab`
    /// or `postgresql://demolab@db/demolab`), without the password.
    pub postgres: String,
    /// Environment variable holding the PostgreSQL password.
    pub password_env: Option<String>,
    /// How many slots the labs are spread over: the most replicas that can share the work.
    /// The same on every replica, and never changed while the region holds data.
    #[serde(default = "default_slots")]
    pub slots: u32,
}

impl ReplicaSection {
    /// Checks the section against the rest of the file; an error names its key.
    fn to_config(
        &self,
        broker_mode: &str,
        accept_unknown: bool,
        no_labs: bool,
    ) -> Result<crate::replica::ReplicaConfig, (&'static str, String)> {
        let name_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.id) {
            return Err((
                "id",
                format!("{:?} must be 1 to 64 letters, digits, '-' or '_'", self.id),
            ));
        }
        if !name_ok(&self.region) {
            return Err((
                "region",
                format!(
                    "{:?} must be 1 to 64 letters, digits, '-' or '_'",
                    self.region
                ),
            ));
        }
        if !(1..=1024).contains(&self.slots) {
            return Err((
                "slots",
                format!("must be between 1 and 1024, got {}", self.slots),
            ));
        }
        if broker_mode != "external" {
            return Err((
                "id",
                "replicas share a broker (cluster): set broker.mode = \"external\"".into(),
            ));
        }
        // A slot subscribes to its labs by name, so a lab nobody listed would reach no replica.
        if accept_unknown || no_labs {
            return Err((
                "id",
                "replicas serve the labs listed in [[labs]]: list them, and leave hub.accept_unknown off".into(),
            ));
        }
        let mut postgres: tokio_postgres::Config = self.postgres.parse().map_err(|err| {
            (
                "postgres",
                format!("not a PostgreSQL connection string: {err}"),
            )
        })?;
        if let Some(var) = &self.password_env {
            let password = std::env::var(var).map_err(|_| {
                (
                    "password_env",
                    format!("environment variable {var} is not set"),
                )
            })?;
            postgres.password(password);
        }
        Ok(crate::replica::ReplicaConfig {
            id: self.id.clone(),
            region: self.region.clone(),
            postgres,
            slots: self.slots,
        })
    }
}

fn default_region() -> String {
    "demolab".into()
}

fn default_slots() -> u32 {
    16
}

/// `[http]`: transport limits of the web server (API, web platform, streams).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Open connections at most (streams included); more are answered 503 and closed.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_client: usize,
    /// Time a client has to send a complete request header (against slowloris).
    pub header_timeout_ms: u64,
    /// Seconds without a byte either way before a connection is closed.
    pub idle_timeout_s: u64,
    /// Time a client has to complete the TLS handshake (with `hub.tls_cert`).
    pub tls_handshake_timeout_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        let limits = HttpLimits::default();
        Self {
            max_connections: limits.max_connections,
            max_connections_per_client: limits.max_connections_per_client,
            header_timeout_ms: millis(limits.header_timeout),
            idle_timeout_s: limits.idle_timeout.as_secs(),
            tls_handshake_timeout_ms: millis(limits.tls_handshake_timeout),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl HttpSection {
    fn limits(&self) -> Result<HttpLimits, (&'static str, String)> {
        if self.max_connections == 0 {
            return Err(("http.max_connections", "must be at least 1".into()));
        }
        if self.max_connections_per_client == 0
            || self.max_connections_per_client > self.max_connections
        {
            return Err((
                "http.max_connections_per_client",
                "must be between 1 and http.max_connections".into(),
            ));
        }
        let checked = |key: &'static str, value: u64, max: u64| {
            if value == 0 || value > max {
                Err((key, format!("must be between 1 and {max}")))
            } else {
                Ok(value)
            }
        };
        Ok(HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            header_timeout: Duration::from_millis(checked(
                "http.header_timeout_ms",
                self.header_timeout_ms,
                600_000,
            )?),
            idle_timeout: Duration::from_secs(checked(
                "http.idle_timeout_s",
                self.idle_timeout_s,
                86_400,
            )?),
            tls_handshake_timeout: Duration::from_millis(checked(
                "http.tls_handshake_timeout_ms",
                self.tls_handshake_timeout_ms,
                600_000,
            )?),
        })
    }
}

/// `[hub]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    /// Sparkplug primary host id.
    pub host_id: String,
    /// Web platform and API.
    pub listen: SocketAddr,
    /// Embedded storage directory.
    pub data_dir: PathBuf,
    /// Extra machine kinds (`*.toml`), added to the built-in catalogue.
    pub catalogue_dir: Option<PathBuf>,
    /// How long accepted samples may wait for more before they are committed to disk (and then
    /// acknowledged to the broker).
    pub commit_interval_ms: u64,
    /// Commit at once when this many messages wait for their acknowledgement. Keep it below the
    /// broker's window of unacknowledged messages per client (Mosquitto's
    /// `max_inflight_messages`, 20 by default; the embedded broker's 64), or each commit waits
    /// out `commit_interval_ms` with the window full. Default: 16 with an external broker, 256
    /// with the embedded one (its window is 1000).
    pub commit_batch: Option<usize>,
    /// Messages read from the broker and not yet stored at which the hub stops reading until
    /// storage catches up (`demolab_hub_ingest_paused_total` counts it). A broker that holds
    /// its window of unacknowledged messages never lets this many through; this bounds the
    /// hub's memory behind one that does not (Mosquitto before 2.0.13). At least `commit_batch`.
    pub max_uncommitted: usize,
    /// MiB of the embedded store's page cache (the hub's memory grows to about this much more
    /// than its twins need, and no further).
    pub store_cache_mb: usize,
    /// How often memory the hub freed goes back to the kernel, in ms; 0 leaves it to the C
    /// library, which keeps most of it (RSS then stays at its highest point).
    pub release_memory_every_ms: u64,
    /// Threads that run the hub's asynchronous work (ingest, the API, streams); storage commits
    /// and other blocking work run on threads of their own besides. 0: one per core. One is
    /// the default: on a small host, waking a second thread for each message cost more than it
    /// gave (`bench/results/compare.md`).
    pub worker_threads: usize,
    /// Publish retained JSON values on `demolab/{lab}/{machine}/{metric}`.
    pub json_topics: bool,
    /// How often the JSON topics get the newest committed value of each metric.
    pub json_interval_ms: u64,
    /// Take births of labs and machines `[[labs]]` does not list (still capped by `[limits]`).
    /// Off: only configured labs, their listed gateways and machines get twins.
    pub accept_unknown: bool,
    /// An online twin that accepts no sample for this long is marked stale.
    pub stale_after_ms: u64,
    /// Serve HTTPS: PEM certificate chain (leaf first). Plain HTTP when absent.
    pub tls_cert: Option<PathBuf>,
    /// Serve HTTPS: PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// HTTPS: PEM CA that client certificates must chain to (optional; asked, not required).
    pub tls_client_ca: Option<PathBuf>,
}

/// `hub.worker_threads` when the file does not say.
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// The most `hub.worker_threads` accepts.
pub const MAX_WORKER_THREADS: usize = 256;

impl Default for HubSection {
    fn default() -> Self {
        Self {
            host_id: "demolab-hub".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            data_dir: PathBuf::from("data"),
            catalogue_dir: None,
            commit_interval_ms: crate::DEFAULT_COMMIT_INTERVAL.as_millis() as u64,
            commit_batch: None,
            max_uncommitted: crate::DEFAULT_MAX_UNCOMMITTED,
            store_cache_mb: crate::store::DEFAULT_CACHE_BYTES >> 20,
            release_memory_every_ms: crate::malloc::DEFAULT_RELEASE_EVERY.as_millis() as u64,
            worker_threads: DEFAULT_WORKER_THREADS,
            json_topics: true,
            json_interval_ms: crate::outputs::DEFAULT_JSON_INTERVAL.as_millis() as u64,
            accept_unknown: false,
            stale_after_ms: crate::DEFAULT_STALE_AFTER.as_millis() as u64,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// `[broker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// `embedded` or `external`.
    pub mode: String,
    /// Embedded: where it listens.
    pub listen: SocketAddr,
    /// External: host name.
    pub host: String,
    /// External: port.
    pub port: u16,
    /// External: `[[broker.failover]]`, more nodes of the same broker cluster, tried in turn
    /// after `host:port` whenever the connection is lost (same login and TLS settings).
    pub failover: Vec<BrokerAddress>,
    /// The hub's MQTT user name.
    pub username: Option<String>,
    /// Environment variable holding the hub's MQTT password.
    pub password_env: Option<String>,
    /// Embedded: per-client credentials and topic ACL (see deploy/access.toml); without it the
    /// embedded broker admits anyone.
    pub access_file: Option<PathBuf>,
    /// Embedded: also listen for MQTT over TLS here (usually port 8883).
    pub tls_listen: Option<SocketAddr>,
    /// Embedded, with `tls_listen`: PEM certificate chain of the broker.
    pub tls_cert: Option<PathBuf>,
    /// Embedded, with `tls_listen`: PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Embedded, with `tls_listen`: PEM CA for client certificates (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// Embedded, with `tls_client_ca`: refuse TLS clients without a certificate.
    pub tls_require_client_cert: bool,
    /// `[broker.tls]`: the hub's own MQTT clients connect over TLS (to an external broker, or
    /// to the embedded broker's TLS listener).
    pub tls: Option<ClientTlsFiles>,
}

/// `[[broker.failover]]`: another node of the external broker's cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerAddress {
    /// Host name or IP.
    pub host: String,
    /// Port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
}

fn default_mqtt_port() -> u16 {
    1883
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            mode: "embedded".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            host: "localhost".into(),
            port: 1883,
            failover: Vec::new(),
            username: None,
            password_env: None,
            access_file: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_require_client_cert: false,
            tls: None,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema (the message names the key and line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of place.
    #[error("{path}: {key}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

impl HubFile {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses file text (`path` is only used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string(),
        })
    }

    /// Validates everything and builds the runtime configuration.
    pub fn into_config(self, path: &Path) -> Result<HubConfig, ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let host_id = HostId::new(&self.hub.host_id)
            .map_err(|err| invalid("hub.host_id", err.to_string()))?;
        if self.hub.commit_interval_ms == 0 || self.hub.commit_interval_ms > 10_000 {
            return Err(invalid(
                "hub.commit_interval_ms",
                "must be between 1 and 10000".into(),
            ));
        }
        if !(10..=60_000).contains(&self.hub.json_interval_ms) {
            return Err(invalid(
                "hub.json_interval_ms",
                format!(
                    "must be between 10 and 60000, got {}",
                    self.hub.json_interval_ms
                ),
            ));
        }
        let commit_batch = match (self.hub.commit_batch, self.broker.mode.as_str()) {
            (Some(batch), _) => batch,
            (None, "external") => crate::DEFAULT_COMMIT_BATCH,
            (None, _) => crate::DEFAULT_COMMIT_BATCH_EMBEDDED,
        };
        if !(1..=10_000).contains(&commit_batch) {
            return Err(invalid(
                "hub.commit_batch",
                format!("must be between 1 and 10000, got {commit_batch}"),
            ));
        }
        let max_uncommitted = self.hub.max_uncommitted;
        if !(commit_batch..=1_000_000).contains(&max_uncommitted) {
            return Err(invalid(
                "hub.max_uncommitted",
                format!(
                    "must be between hub.commit_batch ({commit_batch}) and 1000000, got {max_uncommitted}"
                ),
            ));
        }
        if !(1..=65_536).contains(&self.hub.store_cache_mb) {
            return Err(invalid(
                "hub.store_cache_mb",
                format!(
                    "must be between 1 and 65536 (MiB), got {}",
                    self.hub.store_cache_mb
                ),
            ));
        }
        if self.hub.release_memory_every_ms != 0
            && !(100..=3_600_000).contains(&self.hub.release_memory_every_ms)
        {
            return Err(invalid(
                "hub.release_memory_every_ms",
                format!(
                    "must be 0 (off) or between 100 and 3600000, got {}",
                    self.hub.release_memory_every_ms
                ),
            ));
        }
        if self.hub.worker_threads > MAX_WORKER_THREADS {
            return Err(invalid(
                "hub.worker_threads",
                format!(
                    "must be 0 (one per core) or at most {MAX_WORKER_THREADS}, got {}",
                    self.hub.worker_threads
                ),
            ));
        }
        if !(1_000..=86_400_000).contains(&self.hub.stale_after_ms) {
            return Err(invalid(
                "hub.stale_after_ms",
                format!(
                    "must be between 1000 and 86400000, got {}",
                    self.hub.stale_after_ms
                ),
            ));
        }
        self.limits
            .validate()
            .map_err(|err| invalid(&format!("limits.{}", err.key), err.problem))?;
        self.history
            .validate()
            .map_err(|err| invalid("history", err.to_string()))?;
        if let Some(influx) = &self.influx {
            influx
                .validate()
                .map_err(|err| invalid("influx", err.to_string()))?;
        }
        let replica = self
            .replica
            .as_ref()
            .map(|section| {
                section.to_config(
                    self.broker.mode.as_str(),
                    self.hub.accept_unknown,
                    self.labs.is_empty(),
                )
            })
            .transpose()
            .map_err(|(key, problem)| invalid(&format!("replica.{key}"), problem))?;
        let catalogue = match &self.hub.catalogue_dir {
            Some(dir) => Catalogue::with_dir(dir)
                .map_err(|err| invalid("hub.catalogue_dir", err.to_string()))?,
            None => Catalogue::builtin(),
        };
        let directory = Directory::new(catalogue, self.labs, self.links)
            .map_err(|err| invalid(&err.key, err.problem))?;
        crate::auth::Auth::new(self.auth.clone()).map_err(|err| match err {
            crate::auth::AuthError::Config { key, problem } => {
                invalid(&format!("auth.{key}"), problem)
            }
            other => invalid("auth", other.to_string()),
        })?;
        let login = match (&self.broker.username, &self.broker.password_env) {
            (None, None) => None,
            (Some(username), Some(var)) => {
                let password = std::env::var(var).map_err(|_| {
                    invalid(
                        "broker.password_env",
                        format!("environment variable {var} is not set"),
                    )
                })?;
                Some(MqttLogin {
                    username: username.clone(),
                    password,
                })
            }
            (Some(_), None) => {
                return Err(invalid(
                    "broker.password_env",
                    "needed with broker.username".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "broker.username",
                    "needed with broker.password_env".into(),
                ));
            }
        };
        let http = self
            .http
            .limits()
            .map_err(|(key, problem)| invalid(key, problem))?;
        let https = match (&self.hub.tls_cert, &self.hub.tls_key) {
            (None, None) => {
                if self.hub.tls_client_ca.is_some() {
                    return Err(invalid(
                        "hub.tls_client_ca",
                        "needs hub.tls_cert and hub.tls_key".into(),
                    ));
                }
                None
            }
            (Some(cert_file), Some(key_file)) => {
                let files = ServerTlsFiles {
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                    client_ca_file: self.hub.tls_client_ca.clone(),
                    require_client_cert: false,
                };
                files
                    .load(["hub.tls_cert", "hub.tls_key", "hub.tls_client_ca"])
                    .map_err(|err| invalid(err.key(), tls_problem(&err)))?;
                Some(files)
            }
            (Some(_), None) => {
                return Err(invalid("hub.tls_key", "needed with hub.tls_cert".into()));
            }
            (None, Some(_)) => {
                return Err(invalid("hub.tls_cert", "needed with hub.tls_key".into()));
            }
        };
        let mqtt_tls = match &self.broker.tls {
            Some(files) => Some(
                files
                    .load("broker.tls")
                    .map_err(|err| invalid(err.key(), tls_problem(&err)))?,
            ),
            None => None,
        };
        let broker_tls = match (
            &self.broker.tls_listen,
            &self.broker.tls_cert,
            &self.broker.tls_key,
        ) {
            (None, None, None) => {
                if self.broker.tls_client_ca.is_some() {
                    return Err(invalid(
                        "broker.tls_client_ca",
                        "needs broker.tls_listen".into(),
                    ));
                }
                None
            }
            (Some(bind), Some(cert_file), Some(key_file)) => {
                let files = ServerTlsFiles {
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                    client_ca_file: self.broker.tls_client_ca.clone(),
                    require_client_cert: self.broker.tls_require_client_cert,
                };
                files
                    .load(["broker.tls_cert", "broker.tls_key", "broker.tls_client_ca"])
                    .map_err(|err| invalid(err.key(), tls_problem(&err)))?;
                Some(BrokerTls::new(*bind, files))
            }
            (None, _, _) => {
                return Err(invalid(
                    "broker.tls_listen",
                    "needed with broker.tls_cert and broker.tls_key".into(),
                ));
            }
            (Some(_), None, _) => {
                return Err(invalid(
                    "broker.tls_cert",
                    "needed with broker.tls_listen".into(),
                ));
            }
            (Some(_), Some(_), None) => {
                return Err(invalid(
                    "broker.tls_key",
                    "needed with broker.tls_listen".into(),
                ));
            }
        };
        if self.broker.tls_require_client_cert && self.broker.tls_client_ca.is_none() {
            return Err(invalid(
                "broker.tls_require_client_cert",
                "needs broker.tls_client_ca".into(),
            ));
        }
        if let Some(i) = self.broker.failover.iter().position(|b| b.host.is_empty()) {
            return Err(invalid(
                &format!("broker.failover[{i}].host"),
                "must not be empty".into(),
            ));
        }
        if !self.broker.failover.is_empty() && self.broker.mode != "external" {
            return Err(invalid(
                "broker.failover",
                "only an external broker cluster has other nodes (set broker.mode = \"external\")"
                    .into(),
            ));
        }
        let broker = match self.broker.mode.as_str() {
            "embedded" => {
                let access = match &self.broker.access_file {
                    Some(file) => Some(
                        AccessConfig::load(file)
                            .map_err(|err| invalid("broker.access_file", err.to_string()))?,
                    ),
                    None => None,
                };
                if mqtt_tls.is_some() && broker_tls.is_none() {
                    return Err(invalid(
                        "broker.tls",
                        "the embedded broker has no TLS listener to connect to (set broker.tls_listen)".into(),
                    ));
                }
                BrokerSetting::Embedded(BrokerConfig {
                    bind: self.broker.listen,
                    access,
                    tls: broker_tls,
                    ..BrokerConfig::default()
                })
            }
            "external" if broker_tls.is_some() => {
                return Err(invalid(
                    "broker.tls_listen",
                    "only the embedded broker listens; an external broker's TLS is its own configuration".into(),
                ));
            }
            "external" => BrokerSetting::External {
                host: self.broker.host.clone(),
                port: self.broker.port,
                failover: self
                    .broker
                    .failover
                    .iter()
                    .map(|b| (b.host.clone(), b.port))
                    .collect(),
            },
            other => {
                return Err(invalid(
                    "broker.mode",
                    format!("{other:?} is neither \"embedded\" nor \"external\""),
                ));
            }
        };
        Ok(HubConfig {
            host_id,
            http_bind: self.hub.listen,
            broker,
            data_dir: self.hub.data_dir,
            flush_interval: Duration::from_millis(self.hub.commit_interval_ms),
            commit_batch,
            max_uncommitted,
            store_cache_bytes: self.hub.store_cache_mb << 20,
            release_memory_every: (self.hub.release_memory_every_ms > 0)
                .then(|| Duration::from_millis(self.hub.release_memory_every_ms)),
            extra_metrics: None,
            directory: Arc::new(directory),
            auth: self.auth,
            mqtt_login: login,
            replica,
            json_topics: self.hub.json_topics,
            json_interval: Duration::from_millis(self.hub.json_interval_ms),
            retention: self.history,
            influx: self.influx,
            scenarios: None,
            accept_unknown: self.hub.accept_unknown,
            limits: self.limits,
            stale_after: Duration::from_millis(self.hub.stale_after_ms),
            http,
            https,
            mqtt_tls,
        })
    }
}

/// The TLS error without its key, which [`ConfigError::Invalid`] prints on its own.
fn tls_problem(err: &crate::broker::tls::TlsError) -> String {
    let text = err.to_string();
    text.strip_prefix(&format!("{}: ", err.key()))
        .map(str::to_owned)
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<HubConfig, ConfigError> {
        let path = Path::new("hub.toml");
        HubFile::parse(path, text)?.into_config(path)
    }

    #[test]
    fn an_empty_file_is_a_working_demo_hub() {
        let config = load("").expect("defaults");
        assert_eq!(config.http_bind.port(), 8080);
        assert!(matches!(config.broker, BrokerSetting::Embedded(_)));
        assert!(!config.accept_unknown, "only configured labs by default");
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn the_shipped_replica_example_loads() {
        let text = include_str!("../../deploy/cluster/hub-replica.toml");
        let file =
            HubFile::parse(Path::new("deploy/cluster/hub-replica.toml"), text).expect("parses");
        let section = file.replica.clone().expect("a [replica] section");
        let replica = ReplicaSection {
            // Its password comes from the environment in production.
            password_env: None,
            ..section
        }
        .to_config(
            &file.broker.mode,
            file.hub.accept_unknown,
            file.labs.is_empty(),
        )
        .expect("a valid replica");
        assert_eq!(replica.slots, 16);
        assert_eq!(file.broker.failover.len(), 2);
    }

    #[test]
    fn the_shipped_example_loads() {
        let text = include_str!("../../deploy/hub.toml");
        let path = Path::new("deploy/hub.toml");
        let file = HubFile::parse(path, text).expect("parses");
        assert!(!file.labs.is_empty());
        assert!(!file.auth.users.is_empty());
        assert_eq!(
            file.limits,
            Limits::default(),
            "the example documents the defaults"
        );
        assert!(!file.hub.accept_unknown);
        file.limits.validate().expect("valid limits");
        // The example spells out the defaults, so the two cannot drift apart.
        assert_eq!(file.http.limits(), Ok(HttpLimits::default()));
    }

    #[test]
    fn errors_name_the_key() {
        let err = load("[hub]\nlisten = \"nowhere\"\n").expect_err("bad address");
        assert!(err.to_string().contains("listen"), "{err}");
        let err = load("[broker]\nmode = \"cloud\"\n").expect_err("bad mode");
        assert!(err.to_string().contains("broker.mode"), "{err}");
        let err = load("[broker]\nmode = \"external\"\n[[broker.failover]]\nhost = \"\"\n")
            .expect_err("empty failover host");
        assert!(err.to_string().contains("broker.failover[0].host"), "{err}");
        let err = load("[[broker.failover]]\nhost = \"b\"\n").expect_err("embedded failover");
        assert!(err.to_string().contains("broker.failover"), "{err}");
        let err = load("[hub]\ncommit_batch = 64\nmax_uncommitted = 32\n")
            .expect_err("a bound below one batch");
        assert!(err.to_string().contains("hub.max_uncommitted"), "{err}");
        assert_eq!(
            load("[hub]\nmax_uncommitted = 300\n")
                .expect("a bound above the batch")
                .max_uncommitted,
            300
        );
        let err =
            load("[[labs]]\nid = \"lab-a\"\n[[labs.machines]]\nid = \"m\"\nkind = \"toaster\"\n")
                .expect_err("unknown kind");
        assert!(
            err.to_string().contains("labs[0].machines[0].kind"),
            "{err}"
        );
        let err = load("[hub]\nhost_id = \"no/slash\"\n").expect_err("bad id");
        assert!(err.to_string().contains("hub.host_id"), "{err}");
        let err = load("[broker]\nusername = \"hub\"\n").expect_err("no password");
        assert!(err.to_string().contains("broker.password_env"), "{err}");
        let err = load("[auth]\nanonymous_read = \"yes\"\n").expect_err("bad type");
        assert!(err.to_string().contains("anonymous_read"), "{err}");
        let err = load("[limits]\nmax_topic_len = 10\n").expect_err("too small");
        assert!(err.to_string().contains("limits.max_topic_len"), "{err}");
        let err = load("[limits]\nmax_topics = 10\n").expect_err("unknown key");
        assert!(err.to_string().contains("max_topics"), "{err}");
        let err = load("[hub]\nstale_after_ms = 5\n").expect_err("too short");
        assert!(err.to_string().contains("hub.stale_after_ms"), "{err}");
        let err = load("[hub]\nrelease_memory_every_ms = 5\n").expect_err("too often");
        assert!(
            err.to_string().contains("hub.release_memory_every_ms"),
            "{err}"
        );
        let err = load("[hub]\nworker_threads = 1000\n").expect_err("too many");
        assert!(err.to_string().contains("hub.worker_threads"), "{err}");
        let off = load("[hub]\nrelease_memory_every_ms = 0\n").expect("0 turns it off");
        assert_eq!(off.release_memory_every, None);
    }

    #[test]
    fn a_replica_section_is_checked_against_the_rest_of_the_file() {
        let external = "[broker]\nmode = \"external\"\n\
            [[labs]]\nid = \"lab-a\"\n[[labs.machines]]\nid = \"m\"\n";
        let config = load(&format!(
            "{external}[replica]\nid = \"hub-1\"\npostgres = \"host=/run/postgresql user=demolab\"\n"
        ))
        .expect("a valid replica");
        let replica = config.replica.expect("replica mode");
        assert_eq!(
            (replica.id.as_str(), replica.region.as_str()),
            ("hub-1", "demolab")
        );
        assert_eq!(replica.slots, 16);
        assert_eq!(replica.postgres.get_user(), Some("demolab"));

        for (file, key) in [
            (
                format!("{external}[replica]\nid = \"hub 1\"\npostgres = \"host=db\"\n"),
                "replica.id",
            ),
            (
                format!("{external}[replica]\nid = \"h\"\npostgres = \"host=db\"\nslots = 0\n"),
                "replica.slots",
            ),
            (
                format!("{external}[replica]\nid = \"h\"\npostgres = \"host='db\"\n"),
                "replica.postgres",
            ),
            (
                format!(
                    "{external}[replica]\nid = \"h\"\npostgres = \"host=db\"\npassword_env = \"DEMOLAB_TEST_UNSET_PG_PW\"\n"
                ),
                "replica.password_env",
            ),
            (
                format!("{external}[replica]\nid = \"h\"\npostgres = \"host=db\"\nshare = 1\n"),
                "share",
            ),
            // Replicas meet on a shared broker, and subscribe to listed labs only.
            (
                "[[labs]]\nid = \"lab-a\"\n[replica]\nid = \"h\"\npostgres = \"host=db\"\n"
                    .to_owned(),
                "external",
            ),
            (
                "[broker]\nmode = \"external\"\n[replica]\nid = \"h\"\npostgres = \"host=db\"\n"
                    .to_owned(),
                "[[labs]]",
            ),
        ] {
            let err = load(&file).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn http_limits_and_tls_files_are_checked_by_key() {
        let config = load("[http]\nmax_connections = 10\nmax_connections_per_client = 2\nheader_timeout_ms = 500\n")
            .expect("valid limits");
        assert_eq!(config.http.max_connections, 10);
        assert_eq!(config.http.header_timeout, Duration::from_millis(500));
        assert_eq!(config.http.idle_timeout, HttpLimits::default().idle_timeout);
        let err = load("[http]\nmax_connections = 0\n").expect_err("no connections");
        assert!(err.to_string().contains("http.max_connections"), "{err}");
        let err = load("[http]\nheader_timeout_ms = 0\n").expect_err("zero timeout");
        assert!(err.to_string().contains("http.header_timeout_ms"), "{err}");
        let err = load("[hub]\ntls_cert = \"/nonexistent/hub.pem\"\n").expect_err("no key");
        assert!(err.to_string().contains("hub.tls_key"), "{err}");
        let err = load(
            "[hub]\ntls_cert = \"/nonexistent/hub.pem\"\ntls_key = \"/nonexistent/hub.key\"\n",
        )
        .expect_err("missing file");
        let text = err.to_string();
        assert!(
            text.contains("hub.tls_cert") && text.contains("/nonexistent/hub.pem"),
            "{text}"
        );
        let err =
            load("[broker.tls]\nca_file = \"/nonexistent/ca.pem\"\n").expect_err("missing CA");
        let text = err.to_string();
        assert!(
            text.contains("broker.tls.ca_file") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );
        let err = load("[broker]\ntls_listen = \"127.0.0.1:8883\"\n").expect_err("no certificate");
        assert!(err.to_string().contains("broker.tls_cert"), "{err}");
    }
}
