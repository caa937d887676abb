//! The gateway's configuration file (`gateway.toml`): typed, defaults for everything optional,
//! unknown keys refused, and every validation error naming the key that is wrong.
//!
//! `deploy/gateway.toml` is the commented example; a test checks that it loads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::{GatewayId, HostId, LabId, MachineId, NodeId};
use serde::Deserialize;

use broker::tls::ClientTlsFiles;

use crate::buffer::{BufferConfig, FsyncPolicy};
use crate::config::{GatewayConfig, MqttEndpoint};
use crate::source::modbus::ModbusDevice;
use crate::source::opcua::{OpcUaServer, Secret};
use crate::source::serial::SerialConfig;

/// Why a configuration file was refused.
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
    /// Not valid TOML, or a key has the wrong type or is unknown.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML reader said, with the key and line.
        message: String,
    },
    /// A value is out of range or inconsistent; `key` is its dotted path.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key, e.g. `nodes[2].node`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// The lab (Sparkplug group id).
    pub lab: String,
    /// This gateway (Sparkplug edge node id).
    pub gateway: String,
    /// The hub's Sparkplug host id; data is held back while its STATE says offline.
    #[serde(default)]
    pub primary_host: Option<String>,
    /// Seconds of silence before a machine's data is marked stale.
    #[serde(default = "default_liveness")]
    pub liveness_timeout_s: u64,
    /// The hub's broker.
    pub uplink: Broker,
    /// The lab's broker for network nodes; omit for serial and Modbus only.
    #[serde(default)]
    pub southbound: Option<Southbound>,
    /// The store-and-forward buffer.
    #[serde(default)]
    pub buffer: BufferSection,
    /// The operations HTTP endpoint.
    #[serde(default)]
    pub ops: OpsSection,
    /// Node → machine assignments.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    /// Serial ports. Absent, the gateway still scans the default patterns: on an edge box a
    /// node plugged into USB is meant to be taken (`[serial] scan = false` opts out).
    #[serde(default)]
    pub serial: Option<SerialSection>,
    /// Modbus TCP machines.
    #[serde(default)]
    pub modbus: Vec<ModbusDevice>,
    /// OPC UA servers (`[[opcua]]`, each with `[[opcua.machines]]` and
    /// `[[opcua.machines.metrics]]`).
    #[serde(default)]
    pub opcua: Vec<OpcUaServer>,
}

fn default_liveness() -> u64 {
    10
}

/// A broker address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// Host name or IP.
    pub host: String,
    /// Port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Username to log in with; on the hub's broker, the gateway id.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password (never the password itself: this file
    /// is world-readable on most edge boxes).
    #[serde(default)]
    pub password_env: Option<String>,
    /// `[uplink.tls]`: connect over TLS, verifying the broker against `ca_file`.
    #[serde(default)]
    pub tls: Option<ClientTlsFiles>,
    /// `[[uplink.failover]]`: more nodes of the same broker cluster, tried in turn after this
    /// one whenever the connection is lost (same login and TLS settings).
    #[serde(default)]
    pub failover: Vec<BrokerAddress>,
    /// QoS of the command and STATE subscriptions: 1 (default) or 0 (RabbitMQ 3.10 clusters,
    /// see `SubscribeQos`).
    #[serde(default = "default_subscribe_qos")]
    pub subscribe_qos: u8,
}

fn default_subscribe_qos() -> u8 {
    1
}

/// `[[uplink.failover]]`: another node of the uplink's broker cluster.
#[derive(Debug, Deserialize)]
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

/// The lab broker section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Southbound {
    /// Host name or IP of the lab's broker; with `embedded_listen`, the embedded one is used.
    #[serde(default = "default_local")]
    pub host: String,
    /// Run an embedded MQTT broker for the lab's nodes on this address (a lab without a broker).
    #[serde(default)]
    pub embedded_listen: Option<String>,
    /// Port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Take nodes that are not listed under `[[nodes]]` (mapped by their `Hello`).
    #[serde(default = "default_true")]
    pub accept_unconfigured_nodes: bool,
    /// Username on the lab's broker (not with `embedded_listen`, whose logins are generated).
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding that password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// `[southbound.tls]`: connect to the lab's broker over TLS.
    #[serde(default)]
    pub tls: Option<ClientTlsFiles>,
}

/// A login from `{section}.username` and the variable `{section}.password_env` names; both or
/// neither.
fn credentials(
    path: &Path,
    section: &str,
    username: Option<String>,
    password_env: Option<&str>,
) -> Result<Option<crate::config::MqttCredentials>, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        message,
    };
    match (username, password_env) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(
            &format!("{section}.password_env"),
            format!("required with {section}.username"),
        )),
        (None, Some(_)) => Err(invalid(
            &format!("{section}.username"),
            format!("required with {section}.password_env"),
        )),
        (Some(username), Some(var)) => {
            let password = std::env::var(var).map_err(|e| {
                invalid(
                    &format!("{section}.password_env"),
                    format!("environment variable {var:?}: {e}"),
                )
            })?;
            Ok(Some(crate::config::MqttCredentials { username, password }))
        }
    }
}

fn default_local() -> String {
    "127.0.0.1".to_owned()
}

fn default_true() -> bool {
    true
}

/// The `[buffer]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferSection {
    /// Directory of the segments.
    #[serde(default = "default_buffer_dir")]
    pub dir: PathBuf,
    /// Cap on disk, MiB; beyond it the oldest samples are dropped (and counted).
    #[serde(default = "default_max_mb")]
    pub max_mb: u64,
    /// Segment size, MiB.
    #[serde(default = "default_segment_mb")]
    pub segment_mb: u64,
    /// `every-record`, `every-batch` or `never`.
    #[serde(default = "default_fsync")]
    pub fsync: String,
    /// Group commit (`every-batch`): an fsync starts at once when this many node messages wait
    /// for one. Keep it below the lab broker's window of unacknowledged messages per client.
    #[serde(default = "default_commit_batch")]
    pub commit_batch: usize,
    /// Group commit: the longest a node message waits for company before its fsync starts, ms.
    #[serde(default = "default_commit_wait_ms")]
    pub commit_wait_ms: u64,
}

impl Default for BufferSection {
    fn default() -> Self {
        Self {
            dir: default_buffer_dir(),
            max_mb: default_max_mb(),
            segment_mb: default_segment_mb(),
            fsync: default_fsync(),
            commit_batch: default_commit_batch(),
            commit_wait_ms: default_commit_wait_ms(),
        }
    }
}

/// Largest `buffer.commit_batch`: no broker lets more messages go unacknowledged per client
/// (MQTT packet ids are 16-bit).
const MAX_COMMIT_BATCH: usize = 65_535;
/// Largest `buffer.commit_wait_ms`.
const MAX_COMMIT_WAIT_MS: u64 = 1000;

fn default_buffer_dir() -> PathBuf {
    PathBuf::from("buffer")
}
fn default_max_mb() -> u64 {
    256
}
fn default_segment_mb() -> u64 {
    8
}
fn default_fsync() -> String {
    "every-batch".to_owned()
}
fn default_commit_batch() -> usize {
    crate::config::DEFAULT_COMMIT_BATCH
}
fn default_commit_wait_ms() -> u64 {
    crate::config::DEFAULT_COMMIT_WAIT.as_millis() as u64
}

/// The `[ops]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsSection {
    /// Where `/metrics`, `/healthz`, `/readyz` and the lab's local status view (`/`,
    /// `/api/v1/machines`) listen; loopback by default, the lab network to show it to lab staff.
    #[serde(default = "default_ops_listen")]
    pub listen: String,
}

impl Default for OpsSection {
    fn default() -> Self {
        Self {
            listen: default_ops_listen(),
        }
    }
}

fn default_ops_listen() -> String {
    "127.0.0.1:9100".to_owned()
}

/// One `[[nodes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node's hardware id, 16 hex digits.
    pub node: String,
    /// Its machine.
    pub machine: String,
}

/// The `[serial]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSection {
    /// Ports that are always wanted.
    #[serde(default)]
    pub ports: Vec<PathBuf>,
    /// Also use every port matching `scan_patterns` (plug-and-play); on unless set to false.
    #[serde(default = "default_true")]
    pub scan: bool,
    /// Patterns with one `*` in the file name.
    #[serde(default)]
    pub scan_patterns: Option<Vec<String>>,
    /// Line speed.
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_baud() -> u32 {
    115_200
}

impl Default for SerialSection {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            scan: true,
            scan_patterns: None,
            baud: default_baud(),
        }
    }
}

/// Why a scan pattern cannot work, if it cannot: the scan lists one directory and matches file
/// names with at most one `*`.
fn pattern_problem(pattern: &str) -> Option<&'static str> {
    let path = Path::new(pattern);
    let name = path.file_name().and_then(|n| n.to_str());
    if pattern.is_empty() || name.is_none() {
        return Some("must name a device path such as \"/dev/ttyUSB*\"");
    }
    let dir = path
        .parent()
        .map(|p| p.to_string_lossy())
        .unwrap_or_default();
    if dir.contains('*') {
        return Some("a `*` may only stand in the file name, the directory is literal");
    }
    if name.is_some_and(|n| n.matches('*').count() > 1) {
        return Some("at most one `*`");
    }
    None
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What the gateway runs with.
    pub gateway: GatewayConfig,
    /// Where the operations endpoint listens.
    pub ops_listen: SocketAddr,
    /// Where to run an embedded broker for the lab's nodes, if the lab has none.
    pub embedded_broker: Option<SocketAddr>,
}

impl GatewayFile {
    /// Reads and validates a file; relative paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses and validates TOML text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Loaded, ConfigError> {
        let file: GatewayFile = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        file.validate(path, base)
    }

    fn validate(self, path: &Path, base: &Path) -> Result<Loaded, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let lab: LabId = self
            .lab
            .parse()
            .map_err(|e: protocol::IdError| invalid("lab", e.to_string()))?;
        let gateway: GatewayId = self
            .gateway
            .parse()
            .map_err(|e: protocol::IdError| invalid("gateway", e.to_string()))?;
        let primary_host = self
            .primary_host
            .as_deref()
            .map(str::parse::<HostId>)
            .transpose()
            .map_err(|e| invalid("primary_host", e.to_string()))?;
        if self.liveness_timeout_s == 0 {
            return Err(invalid(
                "liveness_timeout_s",
                "must be at least 1 second".into(),
            ));
        }
        if self.uplink.host.is_empty() {
            return Err(invalid("uplink.host", "must not be empty".into()));
        }
        if let Some(i) = self.uplink.failover.iter().position(|b| b.host.is_empty()) {
            return Err(invalid(
                &format!("uplink.failover[{i}].host"),
                "must not be empty".into(),
            ));
        }
        let fsync = match self.buffer.fsync.as_str() {
            "every-record" => FsyncPolicy::EveryRecord,
            "every-batch" => FsyncPolicy::EveryBatch,
            "never" => FsyncPolicy::Never,
            other => {
                return Err(invalid(
                    "buffer.fsync",
                    format!("{other:?} is not one of every-record, every-batch, never"),
                ));
            }
        };
        if self.buffer.max_mb == 0
            || self.buffer.segment_mb == 0
            || self.buffer.segment_mb > self.buffer.max_mb
        {
            return Err(invalid(
                "buffer.segment_mb",
                "must be at least 1 and at most buffer.max_mb".into(),
            ));
        }
        if !(1..=MAX_COMMIT_BATCH).contains(&self.buffer.commit_batch) {
            return Err(invalid(
                "buffer.commit_batch",
                format!("must be between 1 and {MAX_COMMIT_BATCH}"),
            ));
        }
        if self.buffer.commit_wait_ms > MAX_COMMIT_WAIT_MS {
            return Err(invalid(
                "buffer.commit_wait_ms",
                format!(
                    "must be at most {MAX_COMMIT_WAIT_MS} (a node message waits this long before its fsync)"
                ),
            ));
        }
        let ops_listen: SocketAddr = self
            .ops
            .listen
            .parse()
            .map_err(|e| invalid("ops.listen", format!("{:?}: {e}", self.ops.listen)))?;
        let mut nodes = HashMap::new();
        for (i, entry) in self.nodes.iter().enumerate() {
            let node: NodeId = entry.node.parse().map_err(|e: protocol::IdError| {
                invalid(&format!("nodes[{i}].node"), e.to_string())
            })?;
            let machine: MachineId = entry.machine.parse().map_err(|e: protocol::IdError| {
                invalid(&format!("nodes[{i}].machine"), e.to_string())
            })?;
            if nodes.insert(node, machine).is_some() {
                return Err(invalid(
                    &format!("nodes[{i}].node"),
                    format!("node {node} is listed twice"),
                ));
            }
        }
        for (i, device) in self.modbus.iter().enumerate() {
            device
                .validate()
                .map_err(|e| invalid(&format!("modbus[{i}]"), e.to_string()))?;
        }
        let mut opcua = self.opcua;
        for (i, server) in opcua.iter_mut().enumerate() {
            let section = format!("opcua[{i}]");
            if let Some(var) = &server.password_env {
                let password = std::env::var(var).map_err(|e| {
                    invalid(
                        &format!("{section}.password_env"),
                        format!("environment variable {var:?}: {e}"),
                    )
                })?;
                server.password = Some(Secret(password));
            }
            // Like the buffer directory, relative paths are taken from the file's directory.
            server.pki_dir = base.join(&server.pki_dir);
            server
                .validate()
                .map_err(|e| invalid(&section, e.to_string()))?;
        }
        let uplink_credentials = credentials(
            path,
            "uplink",
            self.uplink.username,
            self.uplink.password_env.as_deref(),
        )?;
        let load_tls = |files: &Option<ClientTlsFiles>, prefix: &str| {
            files
                .as_ref()
                .map(|files| {
                    // Like the buffer directory, relative paths are taken from the file's
                    // directory.
                    let resolved = ClientTlsFiles {
                        ca_file: base.join(&files.ca_file),
                        cert_file: files.cert_file.as_ref().map(|p| base.join(p)),
                        key_file: files.key_file.as_ref().map(|p| base.join(p)),
                        server_name: files.server_name.clone(),
                    };
                    resolved.load(prefix)
                })
                .transpose()
                .map_err(|err| {
                    let text = err.to_string();
                    let message = text
                        .strip_prefix(&format!("{}: ", err.key()))
                        .map(str::to_owned)
                        .unwrap_or(text);
                    invalid(err.key(), message)
                })
        };
        let uplink_tls = load_tls(&self.uplink.tls, "uplink.tls")?;
        let southbound_tls = match &self.southbound {
            Some(s) => load_tls(&s.tls, "southbound.tls")?,
            None => None,
        };
        let uplink = MqttEndpoint {
            host: self.uplink.host,
            port: self.uplink.port,
        };
        let uplink_subscribe_qos = match self.uplink.subscribe_qos {
            0 => crate::config::SubscribeQos::AtMostOnce,
            1 => crate::config::SubscribeQos::AtLeastOnce,
            other => {
                return Err(invalid(
                    "uplink.subscribe_qos",
                    format!("{other} is neither 0 nor 1"),
                ));
            }
        };
        let uplink_failover = self
            .uplink
            .failover
            .into_iter()
            .map(|b| MqttEndpoint {
                host: b.host,
                port: b.port,
            })
            .collect();
        let mut embedded_broker = None;
        let mut southbound_credentials = None;
        let (southbound, accept_unconfigured_nodes) = match self.southbound {
            Some(s) => {
                if let Some(listen) = &s.embedded_listen {
                    let addr: SocketAddr = listen.parse().map_err(|e| {
                        invalid("southbound.embedded_listen", format!("{listen:?}: {e}"))
                    })?;
                    if s.username.is_some() {
                        return Err(invalid(
                            "southbound.username",
                            "the embedded lab broker generates its logins; remove this key".into(),
                        ));
                    }
                    embedded_broker = Some(addr);
                }
                southbound_credentials =
                    credentials(path, "southbound", s.username, s.password_env.as_deref())?;
                (
                    Some(MqttEndpoint {
                        host: s.host,
                        port: s.port,
                    }),
                    s.accept_unconfigured_nodes,
                )
            }
            None => (None, true),
        };
        let serial = serial_config(self.serial.unwrap_or_default(), &invalid)?;
        let mut config = GatewayConfig::new(lab, gateway, uplink, base.join(&self.buffer.dir));
        config.uplink_credentials = uplink_credentials;
        config.uplink_failover = uplink_failover;
        config.uplink_subscribe_qos = uplink_subscribe_qos;
        config.southbound_credentials = southbound_credentials;
        config.uplink_tls = uplink_tls;
        config.southbound_tls = southbound_tls;
        config.southbound = southbound;
        config.accept_unconfigured_nodes = accept_unconfigured_nodes;
        config.primary_host = primary_host;
        // Modbus devices are virtual nodes: list them so a closed gateway still takes them.
        for device in &self.modbus {
            nodes.insert(device.node_id(), device.machine.clone());
        }
        for server in &opcua {
            for machine in &server.machines {
                nodes.insert(
                    crate::source::opcua::opcua_node_id(&server.name, &machine.machine),
                    machine.machine.clone(),
                );
            }
        }
        config.nodes = nodes;
        config.serial = serial;
        config.modbus = self.modbus;
        config.opcua = opcua;
        config.buffer = BufferConfig {
            dir: base.join(&self.buffer.dir),
            max_bytes: self.buffer.max_mb << 20,
            segment_bytes: self.buffer.segment_mb << 20,
            fsync,
        };
        config.liveness_timeout = Duration::from_secs(self.liveness_timeout_s);
        config.commit_batch = self.buffer.commit_batch;
        config.commit_wait = Duration::from_millis(self.buffer.commit_wait_ms);
        Ok(Loaded {
            gateway: config,
            ops_listen,
            embedded_broker,
        })
    }
}

/// The serial source a `[serial]` section asks for; `None` when it has neither ports nor
/// scanning.
fn serial_config(
    s: SerialSection,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<SerialConfig>, ConfigError> {
    let defaults = SerialConfig::default();
    if s.baud == 0 {
        return Err(invalid("serial.baud", "must be at least 1".into()));
    }
    for (i, port) in s.ports.iter().enumerate() {
        if port.as_os_str().is_empty() {
            return Err(invalid(
                &format!("serial.ports[{i}]"),
                "must not be empty".into(),
            ));
        }
    }
    let scan_patterns = s.scan_patterns.unwrap_or(defaults.scan_patterns);
    if s.scan {
        if scan_patterns.is_empty() {
            return Err(invalid(
                "serial.scan_patterns",
                "scanning needs at least one pattern; set `serial.scan = false` to turn it off"
                    .into(),
            ));
        }
        for (i, pattern) in scan_patterns.iter().enumerate() {
            if let Some(problem) = pattern_problem(pattern) {
                return Err(invalid(
                    &format!("serial.scan_patterns[{i}]"),
                    format!("{pattern:?}: {problem}"),
                ));
            }
        }
    }
    if !s.scan && s.ports.is_empty() {
        return Ok(None);
    }
    Ok(Some(SerialConfig {
        ports: s.ports,
        scan: s.scan,
        scan_patterns,
        baud: s.baud,
        reopen_interval: defaults.reopen_interval,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
lab = "lab-a"
gateway = "gw-a"
[uplink]
host = "127.0.0.1"
"#;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        GatewayFile::parse(text, Path::new("gateway.toml"), Path::new("/etc/demolab"))
    }

    #[test]
    fn uplink_failover_lists_more_nodes_of_the_cluster_in_order() {
        let loaded = parse(&format!(
            "{MINIMAL}[[uplink.failover]]\nhost = \"b\"\nport = 1884\n[[uplink.failover]]\nhost = \"c\"\n"
        ))
        .expect("valid");
        let failover: Vec<_> = loaded
            .gateway
            .uplink_failover
            .iter()
            .map(|b| (b.host.as_str(), b.port))
            .collect();
        assert_eq!(failover, [("b", 1884), ("c", 1883)]);
        assert!(
            parse(MINIMAL)
                .expect("valid")
                .gateway
                .uplink_failover
                .is_empty()
        );
        let qos0 =
            parse(&MINIMAL.replace("[uplink]", "[uplink]\nsubscribe_qos = 0")).expect("valid");
        assert_eq!(
            qos0.gateway.uplink_subscribe_qos,
            crate::config::SubscribeQos::AtMostOnce
        );
    }

    #[test]
    fn a_minimal_file_gets_every_default() {
        let loaded = parse(MINIMAL).expect("valid");
        assert_eq!(loaded.gateway.uplink.port, 1883);
        assert!(loaded.gateway.southbound.is_none());
        assert_eq!(
            loaded.gateway.buffer.dir,
            PathBuf::from("/etc/demolab/buffer")
        );
        assert_eq!(loaded.gateway.buffer.fsync, FsyncPolicy::EveryBatch);
        assert_eq!(
            loaded.gateway.commit_batch,
            crate::config::DEFAULT_COMMIT_BATCH
        );
        assert_eq!(
            loaded.gateway.commit_wait,
            crate::config::DEFAULT_COMMIT_WAIT
        );
        assert_eq!(loaded.ops_listen, "127.0.0.1:9100".parse().expect("valid"));
    }

    #[test]
    fn serial_nodes_are_scanned_for_unless_turned_off() {
        let scanning = parse(MINIMAL)
            .expect("valid")
            .gateway
            .serial
            .expect("a serial source without a [serial] section");
        assert!(scanning.scan);
        assert!(scanning.ports.is_empty());
        assert_eq!(
            scanning.scan_patterns,
            SerialConfig::default().scan_patterns
        );

        let patterns =
            format!("{MINIMAL}[serial]\nscan_patterns = [\"/dev/serial/by-id/usb-demolab*\"]\n");
        let own = parse(&patterns)
            .expect("valid")
            .gateway
            .serial
            .expect("serial");
        assert!(own.scan);
        assert_eq!(own.scan_patterns, ["/dev/serial/by-id/usb-demolab*"]);

        let off = format!("{MINIMAL}[serial]\nscan = false\n");
        assert!(parse(&off).expect("valid").gateway.serial.is_none());

        let fixed = format!("{MINIMAL}[serial]\nscan = false\nports = [\"/dev/ttyS1\"]\n");
        let fixed = parse(&fixed)
            .expect("valid")
            .gateway
            .serial
            .expect("serial");
        assert!(!fixed.scan);
        assert_eq!(fixed.ports, [PathBuf::from("/dev/ttyS1")]);
    }

    #[test]
    fn the_shipped_example_loads() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/gateway.toml");
        let loaded = GatewayFile::load(Path::new(example)).expect("deploy/gateway.toml is valid");
        assert!(!loaded.gateway.nodes.is_empty());
        let serial = loaded.gateway.serial.expect("the example has serial nodes");
        assert!(serial.scan, "the edge box adopts plugged-in nodes");
        assert_eq!(loaded.gateway.modbus.len(), 1);
        let opcua = &loaded.gateway.opcua;
        assert_eq!(opcua.len(), 1);
        assert_eq!(opcua[0].machines[0].metrics.len(), 2);
        assert!(opcua[0].pki_dir.is_absolute(), "relative to the file");
        let node = crate::source::opcua::opcua_node_id("cell-a", &opcua[0].machines[0].machine);
        assert!(loaded.gateway.nodes.contains_key(&node));
    }

    #[test]
    fn the_readme_opcua_machine_loads() {
        let readme = include_str!("../../deploy/README.md");
        let block = readme
            .split("**An OPC UA machine**")
            .nth(1)
            .and_then(|rest| rest.split("```toml").nth(1))
            .and_then(|rest| rest.split("```").next())
            .expect("deploy/README.md shows an OPC UA machine");
        let loaded = parse(&format!("{MINIMAL}{block}")).expect("the README's TOML is valid");
        assert_eq!(loaded.gateway.opcua[0].machines[0].metrics.len(), 1);
    }

    #[test]
    fn an_opcua_login_takes_its_password_from_the_named_variable_and_errors_name_the_server() {
        let server = r#"
[[opcua]]
name = "cell"
endpoint_url = "opc.tcp://127.0.0.1:4840/"
username = "op"
password_env = "CARGO_PKG_NAME"
[[opcua.machines]]
machine = "cnc-7"
[[opcua.machines.metrics]]
node_id = "ns=2;s=Speed"
metric = "spindle.speed_rpm"
unit = "rpm"
"#;
        let loaded = parse(&format!("{MINIMAL}{server}")).expect("valid");
        let password = loaded.gateway.opcua[0].password.clone().expect("read");
        assert_eq!(password.0, env!("CARGO_PKG_NAME"));
        assert!(!format!("{:?}", loaded.gateway.opcua).contains(env!("CARGO_PKG_NAME")));

        let unset = server.replace("CARGO_PKG_NAME", "DEMOLAB_TEST_SURELY_UNSET_42");
        let err = parse(&format!("{MINIMAL}{unset}")).expect_err("unset variable");
        assert!(err.to_string().contains("`opcua[0].password_env`"), "{err}");

        let bad_node = server.replace("ns=2;s=Speed", "ns=two");
        let err = parse(&format!("{MINIMAL}{bad_node}")).expect_err("bad node id");
        assert!(
            err.to_string()
                .contains("`opcua[0]`: opcua server `cell`: `machines[0].metrics[0].node_id`"),
            "{err}"
        );
    }

    #[test]
    fn the_uplink_login_takes_its_password_from_the_named_variable() {
        // Cargo sets CARGO_PKG_NAME for the test process too; tests cannot set variables
        // (unsafe in edition 2024, and racy).
        let text = MINIMAL.replace(
            "host = \"127.0.0.1\"",
            "host = \"127.0.0.1\"\nusername = \"gw-a\"\npassword_env = \"CARGO_PKG_NAME\"",
        );
        let credentials = parse(&text)
            .expect("valid")
            .gateway
            .uplink_credentials
            .expect("a login");
        assert_eq!(credentials.username, "gw-a");
        assert_eq!(credentials.password, env!("CARGO_PKG_NAME"));
        assert!(!format!("{credentials:?}").contains(env!("CARGO_PKG_NAME")));
        assert!(
            parse(MINIMAL)
                .expect("valid")
                .gateway
                .uplink_credentials
                .is_none()
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (MINIMAL.replace("lab-a", "Lab A"), "`lab`"),
            (
                MINIMAL.replace("[uplink]", "[uplink]\nusername = \"gw-a\""),
                "`uplink.password_env`",
            ),
            (
                MINIMAL.replace(
                    "[uplink]",
                    "[uplink]\nusername = \"gw-a\"\npassword_env = \"DEMOLAB_TEST_SURELY_UNSET_42\"",
                ),
                "`uplink.password_env`",
            ),
            (
                format!("{MINIMAL}[buffer]\nfsync = \"sometimes\"\n"),
                "`buffer.fsync`",
            ),
            (
                format!("{MINIMAL}[buffer]\ncommit_batch = 0\n"),
                "`buffer.commit_batch`",
            ),
            (
                format!("{MINIMAL}[buffer]\ncommit_wait_ms = 60000\n"),
                "`buffer.commit_wait_ms`",
            ),
            (
                format!("{MINIMAL}[[nodes]]\nnode = \"xyz\"\nmachine = \"m\"\n"),
                "`nodes[0].node`",
            ),
            (
                format!("{MINIMAL}[ops]\nlisten = \"nowhere\"\n"),
                "`ops.listen`",
            ),
            (format!("{MINIMAL}colour = \"red\"\n"), "colour"),
            (
                format!("{MINIMAL}[serial]\nscan_patterns = []\n"),
                "`serial.scan_patterns`",
            ),
            (
                format!("{MINIMAL}[serial]\nscan_patterns = [\"/dev/ttyUSB*\", \"/dev/*/tty*\"]\n"),
                "`serial.scan_patterns[1]`",
            ),
            (
                format!("{MINIMAL}[serial]\nscan_patterns = [\"/dev/tty*USB*\"]\n"),
                "`serial.scan_patterns[0]`",
            ),
            (format!("{MINIMAL}[serial]\nbaud = 0\n"), "`serial.baud`"),
            (format!("{MINIMAL}[serial]\nscan = \"yes\"\n"), "scan"),
            (
                format!("{MINIMAL}[uplink.tls]\nca_file = \"/nonexistent/hub-ca.pem\"\n"),
                "`uplink.tls.ca_file`: cannot read /nonexistent/hub-ca.pem",
            ),
            (
                format!("{MINIMAL}[uplink.tls]\nca_file = \"ca.pem\"\nsecret = 1\n"),
                "secret",
            ),
            (
                MINIMAL.replace("[uplink]\nhost = \"127.0.0.1\"", "[uplink]\nport = \"x\""),
                "port = \"x\"",
            ),
            (
                format!("{MINIMAL}[[uplink.failover]]\nhost = \"b\"\n[[uplink.failover]]\nhost = \"\"\n"),
                "`uplink.failover[1].host`",
            ),
            (
                format!("{MINIMAL}[[uplink.failover]]\nhost = \"b\"\nusername = \"x\"\n"),
                "username",
            ),
            (
                MINIMAL.replace("[uplink]", "[uplink]\nsubscribe_qos = 2"),
                "`uplink.subscribe_qos`",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).expect_err(key).to_string();
            assert!(err.contains(key), "{key} not named in: {err}");
        }
    }
}
