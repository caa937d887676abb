//! The edge gateway: one per demolab, between the lab's sensor nodes and the hub.
//!
//! Data path position: node frames arrive from the [`source`]s (MQTT nodes, serial ports, Modbus
//! TCP machines), pass the [`pipeline`] (decode, validate, map node → machine, de-duplicate),
//! are written to the disk [`buffer`] before the lab broker gets its PUBACK, and leave as
//! Sparkplug B 3.0 through the [`edge`] session: NBIRTH/DBIRTH with aliases, DDATA (historical
//! after an outage), DDEATH on silence, NDEATH as the MQTT Will. DCMDs become node [`command`]s.
//! `demolab-gateway --config gateway.toml` ([`mod@file`]) runs it as a service with an [`ops`] endpoint,
//! which also serves the lab its local [`status`] view (machines' last values, the uplink's state).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use demolab_gateway::{GatewayConfig, MqttEndpoint, start};
//! let broker = MqttEndpoint { host: "127.0.0.1".into(), port: 1883 };
//! let config = GatewayConfig::new("lab-a".parse()?, "gw-a".parse()?, broker, "buffer".into());
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let gateway = start(config, cancel.clone())?;
//! gateway.ready().await;
//! # Ok(())
//! # }
//! ```

pub mod buffer;
pub mod command;
pub mod config;
mod core;
pub mod edge;
pub mod file;
pub mod normalise;
pub mod ops;
pub mod pipeline;
pub mod record;
pub mod registry;
mod run;
pub mod source;
pub mod stats;
pub mod status;
mod uplink;

pub use config::{GatewayConfig, MqttCredentials, MqttEndpoint, SubscribeQos};
pub use run::{GatewayError, GatewayHandle, now_ms, start};
pub use stats::{DropReason, GatewayStats, OpcUaLinkEvent, StatsSnapshot, render_prometheus};
