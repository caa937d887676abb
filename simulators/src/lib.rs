//! Demolab's shop-floor simulators: machine models, and simulated sensor nodes that run the real
//! firmware core.
//!
//! Data path position: the very start, standing in for hardware. [`machines`] models turn seeded
//! randomness ([`rng`]) into physically plausible readings; a [`node`] feeds them to
//! [`firmware::NodeCore`] — the core a real sensor node runs — and publishes the node frames it
//! builds over MQTT on `demolab/v1/node/{node}/up`, where the edge gateway picks them up, maps
//! them to machines and forwards them to the hub as Sparkplug B. Commands come back on
//! `.../down`. A [`lab`] is one such node per machine.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use demolab_simulators::node::{MqttNodeConfig, fresh_boot_id, run_mqtt_node};
//! use protocol::{MachineId, NodeId};
//! use tokio_util::sync::CancellationToken;
//!
//! let config = MqttNodeConfig {
//!     node: NodeId(0x00c0_ffee_0000_0001),
//!     machine: MachineId::new("mill-1")?,
//!     boot: fresh_boot_id(NodeId(0x00c0_ffee_0000_0001)),
//!     seed: 42,
//!     sample_period: Duration::from_secs(1),
//!     // Ten simulated seconds per wall second.
//!     tick_interval: Duration::from_millis(100),
//!     max_samples: Some(600),
//!     broker_host: "127.0.0.1".to_owned(),
//!     broker_port: 1883,
//!     login: None,
//! };
//! let report = run_mqtt_node(config, CancellationToken::new()).await?;
//! assert_eq!(report.sent, 600);
//! # Ok(())
//! # }
//! ```
pub mod attack;
pub mod chips;
pub mod fleet;
pub mod kit;
pub mod kit_node;
pub mod lab;
pub mod machines;
pub mod node;
pub mod opcua;
pub mod plc;
pub mod rng;
pub mod scenario;
pub mod session;
pub mod timeline;
