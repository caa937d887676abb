//! What a gateway needs to know: who it is, where its nodes talk, where the hub listens.

use std::collections::HashMap;

use protocol::{GatewayId, LabId, MachineId, NodeId};

/// An MQTT broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// A gateway's configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The lab (Sparkplug group).
    pub lab: LabId,
    /// This gateway (Sparkplug edge node).
    pub gateway: GatewayId,
    /// The broker the lab's network nodes publish to.
    pub southbound: MqttEndpoint,
    /// The broker the hub listens on.
    pub uplink: MqttEndpoint,
    /// Node → machine assignments that override what nodes announce.
    pub nodes: HashMap<NodeId, MachineId>,
    /// Most samples held in memory while the uplink is down before the oldest are dropped.
    pub offline_queue: usize,
}

impl GatewayConfig {
    /// A configuration with one broker for both sides (the demo and most small labs).
    pub fn new(lab: LabId, gateway: GatewayId, broker: MqttEndpoint) -> Self {
        Self {
            lab,
            gateway,
            southbound: broker.clone(),
            uplink: broker,
            nodes: HashMap::new(),
            offline_queue: 100_000,
        }
    }
}
