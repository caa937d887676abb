//! What a lab writes to attach the machines behind one OPC UA server, and the checks run before
//! connecting to it.

use std::collections::HashSet;
use std::path::PathBuf;

use opcua::crypto::SecurityPolicy;
use opcua::types::{MessageSecurityMode, NodeId as UaNodeId};
use protocol::frame::MAX_METRICS;
use protocol::{MachineId, MetricName, NodeId, Unit};
use serde::Deserialize;

/// One OPC UA server (an `[[opcua]]` table in the gateway's TOML) and the machines read from it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaServer {
    /// The server's name in this gateway; its [`SourceId::OpcUa`](crate::source::SourceId::OpcUa)
    /// and, with each machine, the seed of that machine's virtual node id.
    pub name: String,
    /// `opc.tcp://host:port/path` of the server.
    pub endpoint_url: String,
    /// `None`, `Basic256Sha256`, `Aes128Sha256RsaOaep` or `Aes256Sha256RsaPss`; default `None`.
    #[serde(default)]
    pub security_policy: Policy,
    /// `None`, `Sign` or `SignAndEncrypt`; default `None`. Must be `None` exactly when the
    /// policy is.
    #[serde(default)]
    pub security_mode: Mode,
    /// User name to activate the session with; anonymous when absent.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable that holds the password (never the password itself).
    #[serde(default)]
    pub password_env: Option<String>,
    /// The password read from `password_env` when the file was loaded.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// A user certificate (DER or PEM) to activate the session with an X.509 identity instead
    /// of a user name; relative to `pki_dir`. The server must know the certificate.
    #[serde(default)]
    pub user_certificate: Option<PathBuf>,
    /// Its private key (PEM), relative to `pki_dir`; it signs the identity token.
    #[serde(default)]
    pub user_private_key: Option<PathBuf>,
    /// Where the gateway keeps its application certificate (`own/`, `private/`) and the
    /// server certificates it trusts (`trusted/`) or refused (`rejected/`). A certificate is
    /// created on first start. Default `opcua-pki` beside the config file.
    #[serde(default = "default_pki_dir")]
    pub pki_dir: PathBuf,
    /// The gateway's own certificate (DER), relative to `pki_dir`; default `own/cert.der`.
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// Its private key (PEM), relative to `pki_dir`; default `private/private.pem`.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// Trust any server certificate. Convenient against a simulator; against a real machine
    /// leave it off and copy the server's certificate into `pki_dir/trusted/`.
    #[serde(default)]
    pub trust_server_certs: bool,
    /// How often the server sends what changed, milliseconds; default 500.
    #[serde(default = "default_publishing_interval_ms")]
    pub publishing_interval_ms: u64,
    /// How often the server samples each node, milliseconds; default 100. 0 asks for every
    /// change (servers that cannot raise it to their minimum). Changes faster than the interval
    /// the server grants are sampled away on the server, as OPC UA defines.
    #[serde(default = "default_sampling_interval_ms")]
    pub sampling_interval_ms: u64,
    /// Changes the server queues per node between publishes; default 100. With fewer, changes
    /// faster than the publishing interval are lost on the server (the oldest go first).
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// The machines whose variables this server exposes.
    pub machines: Vec<OpcUaMachine>,
}

/// One machine: a set of variables, each a metric.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaMachine {
    /// The machine (digital twin).
    pub machine: MachineId,
    /// Its metrics; their order is the metric index order.
    pub metrics: Vec<OpcUaMetric>,
}

/// One subscribed variable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaMetric {
    /// The variable's node id in OPC UA string form, e.g. `ns=2;s=Spindle.Speed`.
    pub node_id: String,
    /// The metric's name, `feature.property`.
    pub metric: MetricName,
    /// The metric's unit symbol as [`Unit::symbol`] writes it; default `""` (dimensionless).
    #[serde(default)]
    pub unit: String,
}

/// A password that never shows in a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The security policies offered; the deprecated ones (Basic128Rsa15, Basic256) are left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Policy {
    /// No security.
    #[default]
    None,
    /// RSA 2048+ with SHA-256.
    Basic256Sha256,
    /// RSA-OAEP with AES-128.
    Aes128Sha256RsaOaep,
    /// RSA-PSS with AES-256.
    Aes256Sha256RsaPss,
}

impl Policy {
    /// The crate's policy.
    pub fn to_ua(self) -> SecurityPolicy {
        match self {
            Policy::None => SecurityPolicy::None,
            Policy::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
            Policy::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
            Policy::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss,
        }
    }
}

/// Message security mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Mode {
    /// Plain messages.
    #[default]
    None,
    /// Signed messages.
    Sign,
    /// Signed and encrypted messages.
    SignAndEncrypt,
}

impl Mode {
    /// The crate's mode.
    pub fn to_ua(self) -> MessageSecurityMode {
        match self {
            Mode::None => MessageSecurityMode::None,
            Mode::Sign => MessageSecurityMode::Sign,
            Mode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
        }
    }
}

fn default_pki_dir() -> PathBuf {
    PathBuf::from("opcua-pki")
}

fn default_publishing_interval_ms() -> u64 {
    500
}

fn default_sampling_interval_ms() -> u64 {
    100
}

fn default_queue_size() -> u32 {
    100
}

/// An [`OpcUaServer`] that cannot be used; the message names the server and the offending key
/// (relative to its `[[opcua]]` table).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpcUaConfigError {
    /// `name` is empty.
    #[error("opcua server with empty `name`")]
    EmptyName,
    /// `endpoint_url` is not `opc.tcp://host:port[/path]`.
    #[error("opcua server `{server}`: `endpoint_url` {url:?} is not opc.tcp://host:port[/path]")]
    BadUrl {
        /// The server.
        server: String,
        /// What was configured.
        url: String,
    },
    /// A policy without a mode or a mode without a policy.
    #[error(
        "opcua server `{server}`: `security_mode` {mode:?} does not fit `security_policy` \
         {policy:?} (None goes only with None)"
    )]
    SecurityMismatch {
        /// The server.
        server: String,
        /// The policy.
        policy: Policy,
        /// The mode.
        mode: Mode,
    },
    /// `username` without `password`, or the other way round.
    #[error("opcua server `{server}`: `{key}` is required with `{with}`")]
    HalfLogin {
        /// The server.
        server: String,
        /// The missing key.
        key: &'static str,
        /// The key that was given.
        with: &'static str,
    },
    /// Both a user name and a user certificate: a session has one identity.
    #[error(
        "opcua server `{server}`: `username` and `user_certificate` are two identities; \
         give one"
    )]
    TwoIdentities {
        /// The server.
        server: String,
    },
    /// An interval or the queue size is 0.
    #[error("opcua server `{server}`: `{key}` must be greater than 0")]
    Zero {
        /// The server.
        server: String,
        /// The key.
        key: &'static str,
    },
    /// No machines, or a machine without metrics.
    #[error("opcua server `{server}`: `{key}` is empty")]
    Empty {
        /// The server.
        server: String,
        /// `machines` or `machines[i].metrics`.
        key: String,
    },
    /// The same machine twice on one server.
    #[error("opcua server `{server}`: `machines[{index}].machine` {machine} is listed twice")]
    DuplicateMachine {
        /// The server.
        server: String,
        /// Its index.
        index: usize,
        /// The machine.
        machine: MachineId,
    },
    /// More metrics than one node may announce.
    #[error("opcua server `{server}`: `{key}` has {count} entries; a node has at most {max}")]
    TooManyMetrics {
        /// The server.
        server: String,
        /// `machines[i].metrics`.
        key: String,
        /// How many.
        count: usize,
        /// [`MAX_METRICS`].
        max: usize,
    },
    /// A metric or node id used twice in one machine.
    #[error("opcua server `{server}`: `{key}` {value:?} is mapped twice")]
    Duplicate {
        /// The server.
        server: String,
        /// `machines[i].metrics[j].metric` or `.node_id`.
        key: String,
        /// The repeated value.
        value: String,
    },
    /// A node id that does not parse.
    #[error("opcua server `{server}`: `{key}` {value:?} is not an OPC UA node id (ns=2;s=Name)")]
    BadNodeId {
        /// The server.
        server: String,
        /// `machines[i].metrics[j].node_id`.
        key: String,
        /// What was configured.
        value: String,
    },
    /// A unit symbol not in the catalogue.
    #[error("opcua server `{server}`: `{key}`: unknown unit symbol {symbol:?}")]
    UnknownUnit {
        /// The server.
        server: String,
        /// `machines[i].metrics[j].unit`.
        key: String,
        /// What was configured.
        symbol: String,
    },
}

impl OpcUaServer {
    /// A server with defaults for everything but what identifies it.
    pub fn new(name: &str, endpoint_url: &str, machines: Vec<OpcUaMachine>) -> Self {
        Self {
            name: name.to_owned(),
            endpoint_url: endpoint_url.to_owned(),
            security_policy: Policy::None,
            security_mode: Mode::None,
            username: None,
            password_env: None,
            password: None,
            user_certificate: None,
            user_private_key: None,
            pki_dir: default_pki_dir(),
            certificate_file: None,
            private_key_file: None,
            trust_server_certs: false,
            publishing_interval_ms: default_publishing_interval_ms(),
            sampling_interval_ms: default_sampling_interval_ms(),
            queue_size: default_queue_size(),
            machines,
        }
    }

    /// Checks everything the client relies on; the first problem found is returned.
    pub fn validate(&self) -> Result<(), OpcUaConfigError> {
        let server = || self.name.clone();
        if self.name.is_empty() {
            return Err(OpcUaConfigError::EmptyName);
        }
        if !is_opc_tcp_url(&self.endpoint_url) {
            return Err(OpcUaConfigError::BadUrl {
                server: server(),
                url: self.endpoint_url.clone(),
            });
        }
        if (self.security_policy == Policy::None) != (self.security_mode == Mode::None) {
            return Err(OpcUaConfigError::SecurityMismatch {
                server: server(),
                policy: self.security_policy,
                mode: self.security_mode,
            });
        }
        // Each identity comes as a pair of keys: one without the other names the missing one.
        let pairs = [
            (
                ("username", self.username.is_some()),
                ("password_env", self.password.is_some()),
            ),
            (
                ("user_certificate", self.user_certificate.is_some()),
                ("user_private_key", self.user_private_key.is_some()),
            ),
        ];
        for ((first, has_first), (second, has_second)) in pairs {
            if has_first != has_second {
                let (key, with) = if has_first {
                    (second, first)
                } else {
                    (first, second)
                };
                return Err(OpcUaConfigError::HalfLogin {
                    server: server(),
                    key,
                    with,
                });
            }
        }
        if self.username.is_some() && self.user_certificate.is_some() {
            return Err(OpcUaConfigError::TwoIdentities { server: server() });
        }
        for (key, value) in [
            ("publishing_interval_ms", self.publishing_interval_ms),
            ("queue_size", u64::from(self.queue_size)),
        ] {
            if value == 0 {
                return Err(OpcUaConfigError::Zero {
                    server: server(),
                    key,
                });
            }
        }
        if self.machines.is_empty() {
            return Err(OpcUaConfigError::Empty {
                server: server(),
                key: "machines".into(),
            });
        }
        let mut machines = HashSet::new();
        for (i, machine) in self.machines.iter().enumerate() {
            if !machines.insert(&machine.machine) {
                return Err(OpcUaConfigError::DuplicateMachine {
                    server: server(),
                    index: i,
                    machine: machine.machine.clone(),
                });
            }
            machine.validate(&self.name, i)?;
        }
        Ok(())
    }
}

impl OpcUaMachine {
    fn validate(&self, server: &str, i: usize) -> Result<(), OpcUaConfigError> {
        let server = || server.to_owned();
        let key = format!("machines[{i}].metrics");
        if self.metrics.is_empty() {
            return Err(OpcUaConfigError::Empty {
                server: server(),
                key,
            });
        }
        if self.metrics.len() > MAX_METRICS {
            return Err(OpcUaConfigError::TooManyMetrics {
                server: server(),
                key,
                count: self.metrics.len(),
                max: MAX_METRICS,
            });
        }
        let mut names = HashSet::new();
        let mut nodes = HashSet::new();
        for (j, metric) in self.metrics.iter().enumerate() {
            let key = |field: &str| format!("machines[{i}].metrics[{j}].{field}");
            let Ok(node) = metric.node_id.parse::<UaNodeId>() else {
                return Err(OpcUaConfigError::BadNodeId {
                    server: server(),
                    key: key("node_id"),
                    value: metric.node_id.clone(),
                });
            };
            if !nodes.insert(node) {
                return Err(OpcUaConfigError::Duplicate {
                    server: server(),
                    key: key("node_id"),
                    value: metric.node_id.clone(),
                });
            }
            if !names.insert(&metric.metric) {
                return Err(OpcUaConfigError::Duplicate {
                    server: server(),
                    key: key("metric"),
                    value: metric.metric.to_string(),
                });
            }
            if Unit::from_symbol(&metric.unit).is_none() {
                return Err(OpcUaConfigError::UnknownUnit {
                    server: server(),
                    key: key("unit"),
                    symbol: metric.unit.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The [`NodeId`] machine `machine` of OPC UA server `server` speaks as: FNV-1a 64 of
/// `opcua:{server}/{machine}`, stable across restarts like a Modbus device's.
pub fn opcua_node_id(server: &str, machine: &MachineId) -> NodeId {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = b"opcua:"
        .iter()
        .chain(server.as_bytes())
        .chain(b"/")
        .chain(machine.as_str().as_bytes())
        .fold(OFFSET_BASIS, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
        });
    NodeId(hash)
}

/// `opc.tcp://` with a host and a non-zero port; DNS is left to connect time.
fn is_opc_tcp_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("opc.tcp://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|port| port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> OpcUaServer {
        OpcUaServer::new(
            "cell",
            "opc.tcp://127.0.0.1:4840/",
            vec![OpcUaMachine {
                machine: "cnc-7".parse().expect("valid"),
                metrics: vec![OpcUaMetric {
                    node_id: "ns=2;s=Spindle.Speed".into(),
                    metric: "spindle.speed_rpm".parse().expect("valid"),
                    unit: "rpm".into(),
                }],
            }],
        )
    }

    #[test]
    fn a_plain_server_validates() {
        assert_eq!(server().validate(), Ok(()));
    }

    #[test]
    fn every_mistake_names_its_key() {
        let mut s = server();
        s.endpoint_url = "http://x:1".into();
        assert!(
            s.validate()
                .expect_err("bad")
                .to_string()
                .contains("`endpoint_url`")
        );

        let mut s = server();
        s.security_policy = Policy::Basic256Sha256;
        assert!(matches!(
            s.validate(),
            Err(OpcUaConfigError::SecurityMismatch { .. })
        ));

        let mut s = server();
        s.username = Some("op".into());
        assert!(
            s.validate()
                .expect_err("half")
                .to_string()
                .contains("`password_env`")
        );

        let mut s = server();
        s.machines[0].metrics[0].node_id = "ns=x;q".into();
        assert!(
            s.validate()
                .expect_err("node id")
                .to_string()
                .contains("`machines[0].metrics[0].node_id`")
        );

        let mut s = server();
        s.machines[0].metrics[0].unit = "furlong".into();
        assert!(
            s.validate()
                .expect_err("unit")
                .to_string()
                .contains(".unit`")
        );

        let mut s = server();
        let again = s.machines[0].metrics[0].clone();
        s.machines[0].metrics.push(again);
        assert!(matches!(
            s.validate(),
            Err(OpcUaConfigError::Duplicate { .. })
        ));

        let mut s = server();
        s.user_certificate = Some("user.der".into());
        assert!(
            s.validate()
                .expect_err("no key")
                .to_string()
                .contains("`user_private_key` is required with `user_certificate`")
        );
        s.user_private_key = Some("user.pem".into());
        assert_eq!(s.validate(), Ok(()));
        s.username = Some("op".into());
        s.password = Some(Secret("pw".into()));
        assert!(matches!(
            s.validate(),
            Err(OpcUaConfigError::TwoIdentities { .. })
        ));

        let mut s = server();
        s.queue_size = 0;
        assert!(
            s.validate()
                .expect_err("zero")
                .to_string()
                .contains("`queue_size`")
        );
    }

    #[test]
    fn virtual_node_ids_differ_per_server_and_machine_and_stay_put() {
        let m: MachineId = "cnc-7".parse().expect("valid");
        let n: MachineId = "cnc-8".parse().expect("valid");
        assert_eq!(opcua_node_id("a", &m), opcua_node_id("a", &m));
        assert_ne!(opcua_node_id("a", &m), opcua_node_id("b", &m));
        assert_ne!(opcua_node_id("a", &m), opcua_node_id("a", &n));
    }
}
