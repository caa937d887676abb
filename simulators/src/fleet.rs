//! Fleet mode: many simulated MQTT nodes from one process, for load tests and benchmarks.
//!
//! Each node is a full [`run_machine_node`] (its own MQTT session, firmware core and machine
//! model); the payload mix comes from cycling through the given machine kinds, whose frames
//! differ in size (5 to 8 readings). Connections are opened at a bounded pace so a broker is
//! not hit by thousands of CONNECTs in the same millisecond.

use std::time::Duration;

use protocol::{MachineId, NodeId};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::machines::MachineKind;
use crate::node::{
    MqttNodeConfig, NodeLogin, NodeReport, SimError, fresh_boot_id, run_machine_node,
};
use crate::rng::SimRng;
use crate::timeline::Timeline;

/// The high 32 bits of fleet node ids, so they never collide with scenario or demo nodes.
pub const FLEET_NODE_PREFIX: u64 = 0xf1ee_7000_0000_0000;

/// What a fleet runs.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Number of nodes.
    pub nodes: u32,
    /// Samples per second per node.
    pub rate_hz: f64,
    /// Samples per node before it stops; `None` runs until cancelled.
    pub samples: Option<u32>,
    /// The machine kinds, assigned round-robin.
    pub kinds: Vec<MachineKind>,
    /// Seed of every model.
    pub seed: u64,
    /// New connections per second.
    pub connect_rate: u32,
    /// Broker host.
    pub broker_host: String,
    /// Broker port.
    pub broker_port: u16,
    /// The login every node uses, when the broker wants one (a `simulator` account).
    pub login: Option<NodeLogin>,
}

/// Why a fleet cannot start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FleetError {
    /// A setting out of range.
    #[error("fleet: `{key}` {message}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl FleetConfig {
    /// The sample period implied by the rate, checked against the firmware minimum.
    pub fn period(&self) -> Result<Duration, FleetError> {
        let invalid = |key, message: String| FleetError::Invalid { key, message };
        if self.nodes == 0 {
            return Err(invalid("nodes", "must be at least 1".into()));
        }
        if self.kinds.is_empty() {
            return Err(invalid(
                "kinds",
                "must name at least one machine kind".into(),
            ));
        }
        let max_hz = 1000.0 / f64::from(firmware::MIN_PERIOD_MS);
        if !(self.rate_hz > 0.0 && self.rate_hz <= max_hz) {
            return Err(invalid(
                "rate",
                format!("{} Hz is outside (0, {max_hz}]", self.rate_hz),
            ));
        }
        // Whole milliseconds, as node periods are.
        Ok(Duration::from_millis((1000.0 / self.rate_hz).round() as u64))
    }

    /// Node `i`'s id, machine and kind.
    pub fn node(&self, i: u32) -> (NodeId, MachineId, MachineKind) {
        let kind = self.kinds[i as usize % self.kinds.len().max(1)];
        let machine = MachineId::new(&format!("fleet-{i:05}"))
            .unwrap_or_else(|_| unreachable!("fleet-NNNNN is a valid machine id"));
        (NodeId(FLEET_NODE_PREFIX | u64::from(i)), machine, kind)
    }

    /// Starts every node at the configured connection pace; returns once all are started.
    pub async fn spawn(
        &self,
        cancel: &CancellationToken,
    ) -> Result<JoinSet<Result<NodeReport, SimError>>, FleetError> {
        let period = self.period()?;
        let pace = Duration::from_secs(1) / self.connect_rate.max(1);
        let mut ticker = tokio::time::interval(pace);
        let mut nodes = JoinSet::new();
        for i in 0..self.nodes {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let (node, machine, kind) = self.node(i);
            let seed = SimRng::new(self.seed ^ u64::from(i)).next_u64();
            let config = MqttNodeConfig {
                node,
                machine,
                boot: fresh_boot_id(node),
                seed,
                sample_period: period,
                tick_interval: period,
                max_samples: self.samples,
                broker_host: self.broker_host.clone(),
                broker_port: self.broker_port,
                login: self.login.clone(),
            };
            nodes.spawn(run_machine_node(
                config,
                kind.build(seed),
                Timeline::default(),
                cancel.clone(),
            ));
        }
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FleetConfig {
        FleetConfig {
            nodes: 10,
            rate_hz: 2.0,
            samples: Some(1),
            kinds: MachineKind::ALL.to_vec(),
            seed: 1,
            connect_rate: 100,
            broker_host: "127.0.0.1".into(),
            broker_port: 1883,
            login: None,
        }
    }

    #[test]
    fn nodes_get_distinct_ids_and_a_round_robin_kind_mix() {
        let c = config();
        assert_eq!(c.period(), Ok(Duration::from_millis(500)));
        let (n0, m0, k0) = c.node(0);
        let (n6, m6, k6) = c.node(6);
        assert_ne!(n0, n6);
        assert_eq!((m0.as_str(), m6.as_str()), ("fleet-00000", "fleet-00006"));
        assert_eq!((k0, k6), (MachineKind::CncMill, MachineKind::Printer3d));
    }

    #[test]
    fn bad_settings_name_the_key() {
        let mut c = config();
        c.rate_hz = 500.0;
        assert!(
            c.period()
                .expect_err("too fast")
                .to_string()
                .contains("`rate`")
        );
        c.rate_hz = 1.0;
        c.nodes = 0;
        assert!(
            c.period()
                .expect_err("none")
                .to_string()
                .contains("`nodes`")
        );
    }
}
