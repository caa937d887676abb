//! The edge gateway: one per demolab, between the lab's sensor nodes and the hub.
//!
//! Data path position: node frames arrive over MQTT (`demolab/v1/node/{hex}/up`), pass the
//! [`pipeline`] (decode, validate, map node → machine, de-duplicate) and leave as Sparkplug B 3.0
//! through the [`edge`] session: NBIRTH/DBIRTH with aliases, DDATA, NDEATH as the MQTT Will.
//!
//! ```no_run
//! # async fn demo() {
//! use demolab_gateway::{GatewayConfig, MqttEndpoint, start};
//! let broker = MqttEndpoint { host: "127.0.0.1".into(), port: 1883 };
//! let config = GatewayConfig::new("lab-a".parse().unwrap(), "gw-a".parse().unwrap(), broker);
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let gateway = start(config, cancel.clone());
//! gateway.ready().await;
//! # }
//! ```

pub mod buffer;
pub mod config;
mod core;
pub mod edge;
pub mod file;
pub mod ops;
pub mod pipeline;
pub mod record;
pub mod registry;
mod run;
pub mod source;
pub mod stats;
mod uplink;

pub use config::{GatewayConfig, MqttEndpoint};
pub use run::{GatewayError, GatewayHandle, now_ms, start};
pub use stats::{DropReason, GatewayStats, StatsSnapshot, render_prometheus};
