//! A simulated lab: one [`run_mqtt_node`] task per machine, all on one broker.

use std::time::Duration;

use protocol::{MachineId, NodeId};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::node::{MqttNodeConfig, NodeReport, SimError, fresh_boot_id, run_mqtt_node};

/// The machines of a lab and the node settings they share.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// One simulated CNC mill node per entry: the machine, its node's id, the model seed.
    pub machines: Vec<(MachineId, NodeId, u64)>,
    /// Simulated time between samples (see [`MqttNodeConfig::sample_period`]).
    pub sample_period: Duration,
    /// Wall time between ticks (see [`MqttNodeConfig::tick_interval`]).
    pub tick_interval: Duration,
    /// Samples per node before it stops; `None` runs until cancelled.
    pub max_samples: Option<u32>,
}

impl LabSpec {
    /// The configuration of every node, in `machines` order.
    pub fn node_configs(&self, broker_host: &str, broker_port: u16) -> Vec<MqttNodeConfig> {
        self.machines
            .iter()
            .map(|(machine, node, seed)| MqttNodeConfig {
                node: *node,
                machine: machine.clone(),
                boot: fresh_boot_id(*node),
                seed: *seed,
                sample_period: self.sample_period,
                tick_interval: self.tick_interval,
                max_samples: self.max_samples,
                broker_host: broker_host.to_owned(),
                broker_port,
                login: None,
            })
            .collect()
    }
}

/// Starts one node task per machine; `cancel` stops them all. Each task's report carries its
/// node id. Must be called inside a Tokio runtime.
pub fn spawn_lab(
    spec: &LabSpec,
    broker_host: &str,
    broker_port: u16,
    cancel: &CancellationToken,
) -> JoinSet<Result<NodeReport, SimError>> {
    let mut nodes = JoinSet::new();
    for config in spec.node_configs(broker_host, broker_port) {
        nodes.spawn(run_mqtt_node(config, cancel.clone()));
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_machine_gets_its_own_node_with_the_shared_settings() {
        let spec = LabSpec {
            machines: vec![
                (MachineId::new("mill-1").expect("valid"), NodeId(1), 11),
                (MachineId::new("mill-2").expect("valid"), NodeId(2), 22),
            ],
            sample_period: Duration::from_millis(500),
            tick_interval: Duration::from_millis(50),
            max_samples: Some(7),
        };
        let configs = spec.node_configs("broker.local", 1884);
        let ids: Vec<_> = configs
            .iter()
            .map(|c| (c.machine.as_str(), c.node, c.seed))
            .collect();
        assert_eq!(ids, [("mill-1", NodeId(1), 11), ("mill-2", NodeId(2), 22)]);
        assert!(configs.iter().all(|c| c.sample_period == spec.sample_period
            && c.tick_interval == spec.tick_interval
            && c.max_samples == Some(7)
            && c.broker_host == "broker.local"
            && c.broker_port == 1884));
    }
}
