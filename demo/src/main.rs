//! `demolab` — the all-in-one demo region, and the composition root of the workspace.
//!
//! It wires, in one process: the hub (with its embedded MQTT broker and store), and per lab one
//! gateway plus simulated sensor nodes that run the real firmware core against machine models
//! ([`demolab_demo::region`]). Nothing else in the workspace imports every crate; the parts
//! still meet only over MQTT.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use demolab_demo::region::{Region, RegionOptions};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Run the Demolab demo region: hub, embedded MQTT broker, and simulated labs with their gateways.
#[derive(Debug, Parser)]
#[command(name = "demolab", version, about, long_about = None)]
struct Args {
    /// Address the web platform and the MQTT broker listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port of the web platform and REST API (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Port of the embedded MQTT broker (0 picks a free one).
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// Directory of the embedded store; twins survive restarts here.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Simulated machines per lab.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=48))]
    machines_per_lab: u16,
    /// Milliseconds between samples of each sensor node.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    sample_ms: u64,
    /// Seed of the machine simulations; the same seed replays the same machine behaviour.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Password of the `operator` user (default: a new random one, printed at start).
    #[arg(long, env = "DEMOLAB_OPERATOR_PASSWORD")]
    operator_password: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new("warn,demolab=info,demolab_hub=info,demolab_gateway=info")
        }))
        .init();

    let mut region = Region::start(RegionOptions {
        bind: args.bind,
        http_port: args.http_port,
        mqtt_port: args.mqtt_port,
        data_dir: args.data_dir.clone(),
        machines_per_lab: args.machines_per_lab,
        sample_period: Duration::from_millis(args.sample_ms),
        seed: args.seed,
        operator_password: args.operator_password.clone(),
    })
    .await?;
    println!();
    println!("{}", region.banner());
    println!("Press Ctrl-C to stop.");
    println!();

    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        Some(result) = region.node_stopped() => {
            // A node ending on its own means it hit an error; say so and stop cleanly.
            warn!(?result, "a simulated node stopped unexpectedly; shutting down");
        }
    }
    info!("shutting down");
    region.shutdown().await?;
    println!(
        "Demolab stopped; twins saved in {}",
        args.data_dir.display()
    );
    Ok(())
}
