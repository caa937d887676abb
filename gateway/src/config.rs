//! What a gateway needs to know: who it is, where its nodes talk, where the hub listens, where
//! it buffers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use protocol::{GatewayId, HostId, LabId, MachineId, NodeId};

use crate::buffer::{BufferConfig, FsFactory, FsyncPolicy};
use crate::source::modbus::ModbusDevice;
use crate::source::opcua::OpcUaServer;
use crate::source::serial::SerialConfig;

/// An MQTT broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// The QoS the uplink subscribes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscribeQos {
    /// QoS 0. For RabbitMQ 3.10 clusters: there a clean session's QoS 1 subscription is a
    /// durable queue on the node it was made on, and while that node is down the gateway's
    /// client id cannot subscribe anywhere (docs/architecture.md, "Broker cluster").
    AtMostOnce,
    /// QoS 1: commands queued by the broker while the gateway reconnects.
    #[default]
    AtLeastOnce,
}

/// A username and password for an MQTT CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttCredentials {
    /// The username; on the hub's broker, the gateway id (its ACL is keyed on it).
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for MqttCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Configs are logged at startup; the password must not be.
        f.debug_struct("MqttCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A gateway's configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The lab (Sparkplug group).
    pub lab: LabId,
    /// This gateway (Sparkplug edge node).
    pub gateway: GatewayId,
    /// The broker the lab's network nodes publish to; `None` for a gateway with only serial
    /// and Modbus sources.
    pub southbound: Option<MqttEndpoint>,
    /// The broker the hub listens on.
    pub uplink: MqttEndpoint,
    /// More nodes of the same broker cluster, tried in turn after `uplink` (and round again)
    /// whenever the uplink connection is lost; empty for a single broker.
    pub uplink_failover: Vec<MqttEndpoint>,
    /// The QoS of the uplink's subscriptions (NCMD, DCMD, the primary host's STATE).
    pub uplink_subscribe_qos: SubscribeQos,
    /// The uplink's login; `None` for a broker that takes anonymous clients.
    pub uplink_credentials: Option<MqttCredentials>,
    /// The lab broker's login (the gateway reads its nodes' uplinks and commands them);
    /// `None` for a broker that takes anonymous clients.
    pub southbound_credentials: Option<MqttCredentials>,
    /// Connect the uplink over TLS (verifying the hub's broker against its CA).
    pub uplink_tls: Option<broker::tls::ClientTls>,
    /// Connect to the lab's broker over TLS.
    pub southbound_tls: Option<broker::tls::ClientTls>,
    /// The hub's Sparkplug host id: when set, data is sent only while its STATE says online.
    pub primary_host: Option<HostId>,
    /// Node → machine assignments that override what nodes announce.
    pub nodes: HashMap<NodeId, MachineId>,
    /// Whether nodes missing from `nodes` are taken in (mapped by their `Hello`). Turn it off
    /// when several labs share one broker, so a gateway takes only its own lab's nodes.
    pub accept_unconfigured_nodes: bool,
    /// Serial ports with nodes on them.
    pub serial: Option<SerialConfig>,
    /// Modbus TCP machines to poll.
    pub modbus: Vec<ModbusDevice>,
    /// OPC UA servers and the machines subscribed on them.
    pub opcua: Vec<OpcUaServer>,
    /// The store-and-forward disk buffer.
    pub buffer: BufferConfig,
    /// The filesystem the buffer runs on: the real one unless a test injects disk errors with
    /// a [`FaultyFs`](crate::buffer::FaultyFs).
    pub buffer_fs: FsFactory,
    /// How long a machine may stay silent before its data is marked stale (DDEATH).
    pub liveness_timeout: Duration,
    /// Group commit: an fsync of the disk buffer starts at once when this many node messages
    /// wait for one (and none runs). Keep it below the lab broker's window of unacknowledged
    /// messages per client (Mosquitto's `max_inflight_messages`, the embedded broker's 1000),
    /// or every batch waits out `commit_wait`.
    pub commit_batch: usize,
    /// Group commit: the longest a node message waits for company before its fsync starts.
    pub commit_wait: Duration,
}

/// Default [`GatewayConfig::commit_batch`].
pub const DEFAULT_COMMIT_BATCH: usize = 256;
/// Default [`GatewayConfig::commit_wait`].
pub const DEFAULT_COMMIT_WAIT: Duration = Duration::from_millis(5);

impl GatewayConfig {
    /// A configuration with one broker for both sides (the demo and most small labs) and the
    /// disk buffer in `buffer_dir`.
    pub fn new(lab: LabId, gateway: GatewayId, broker: MqttEndpoint, buffer_dir: PathBuf) -> Self {
        Self {
            lab,
            gateway,
            southbound: Some(broker.clone()),
            uplink: broker,
            uplink_failover: Vec::new(),
            uplink_subscribe_qos: SubscribeQos::default(),
            uplink_credentials: None,
            southbound_credentials: None,
            uplink_tls: None,
            southbound_tls: None,
            primary_host: None,
            nodes: HashMap::new(),
            accept_unconfigured_nodes: true,
            serial: None,
            modbus: Vec::new(),
            opcua: Vec::new(),
            buffer: BufferConfig {
                dir: buffer_dir,
                max_bytes: 256 << 20,
                segment_bytes: 8 << 20,
                fsync: FsyncPolicy::EveryBatch,
            },
            buffer_fs: FsFactory::default(),
            liveness_timeout: Duration::from_secs(10),
            commit_batch: DEFAULT_COMMIT_BATCH,
            commit_wait: DEFAULT_COMMIT_WAIT,
        }
    }

    /// The MQTT topic filters the southbound session subscribes to: every node's uplink, or
    /// only the configured nodes' when unconfigured nodes are not accepted.
    pub fn southbound_filters(&self) -> Vec<String> {
        if self.accept_unconfigured_nodes {
            return vec![protocol::node_topic::ALL_UP.to_owned()];
        }
        let mut nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        nodes.sort();
        nodes
            .into_iter()
            .map(|node| {
                protocol::node_topic::format(node, protocol::node_topic::Direction::Up).to_string()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_that_takes_only_its_nodes_subscribes_only_to_them() {
        let broker = MqttEndpoint {
            host: "localhost".into(),
            port: 1883,
        };
        let mut config = GatewayConfig::new(
            "lab".parse().expect("valid"),
            "gw".parse().expect("valid"),
            broker,
            PathBuf::from("buffer"),
        );
        assert_eq!(config.southbound_filters(), ["demolab/v1/node/+/up"]);
        config.accept_unconfigured_nodes = false;
        config
            .nodes
            .insert(NodeId(0x2), "m-2".parse().expect("valid"));
        config
            .nodes
            .insert(NodeId(0x1), "m-1".parse().expect("valid"));
        assert_eq!(
            config.southbound_filters(),
            [
                "demolab/v1/node/0000000000000001/up",
                "demolab/v1/node/0000000000000002/up"
            ]
        );
    }
}
