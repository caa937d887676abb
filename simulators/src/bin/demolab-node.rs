//! `demolab-node` — one sensor node on this computer: the real firmware runtime and drivers on
//! register-level simulated chips, driven by a machine model, talking to a gateway over a serial
//! line (a real tty or pseudo-terminal) or over MQTT (the firmware's own client).
//!
//! `demolab-node --serial /dev/pts/3 --node 00c0ffee00000001 --machine mill-1`
//! `demolab-node --mqtt 127.0.0.1:1883 --machine mill-7`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use demolab_simulators::kit_node::{KitNodeConfig, spawn_mqtt_kit_node, spawn_serial_kit_node};
use demolab_simulators::node::fresh_boot_id;
use protocol::{MachineId, NodeId};

/// Run a simulated sensor node (real firmware, simulated chips) on a serial line or over MQTT.
#[derive(Debug, Parser)]
#[command(name = "demolab-node", version)]
#[command(group(clap::ArgGroup::new("link").required(true).args(["serial", "mqtt"])))]
struct Args {
    /// The serial device to write node frames to (the gateway reads the other end).
    #[arg(long)]
    serial: Option<PathBuf>,
    /// The MQTT broker the lab's gateway listens on, host:port.
    #[arg(long)]
    mqtt: Option<String>,
    /// Line speed.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// The node's hardware id, 16 hex digits.
    #[arg(long, default_value = "00c0ffee00000001")]
    node: NodeId,
    /// The machine the node is clipped to.
    #[arg(long, default_value = "mill-1")]
    machine: MachineId,
    /// Seed of the machine model: the same seed, the same machine behaviour.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Milliseconds between samples.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    period_ms: u64,
    /// Stop after this many samples (default: run until Ctrl-C).
    #[arg(long)]
    samples: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let period = Duration::from_millis(args.period_ms);
    let config = KitNodeConfig {
        node: args.node,
        machine: args.machine.clone(),
        boot: fresh_boot_id(args.node),
        seed: args.seed,
        sample_period: period,
        tick_interval: period,
        max_samples: args.samples,
    };
    let (node, target) = match (&args.serial, &args.mqtt) {
        (Some(path), _) => {
            let port = serialport::new(path.to_string_lossy(), args.baud)
                .timeout(Duration::from_millis(20))
                .open_native()
                .with_context(|| format!("cannot open {}", path.display()))?;
            (
                spawn_serial_kit_node(config, port),
                path.display().to_string(),
            )
        }
        (None, Some(broker)) => {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(broker.as_str())
                .with_context(|| format!("cannot resolve the broker {broker:?}"))?
                .next()
                .with_context(|| format!("no address for the broker {broker:?}"))?;
            (spawn_mqtt_kit_node(config, addr), format!("mqtt://{addr}"))
        }
        (None, None) => anyhow::bail!("give --serial or --mqtt"),
    };
    println!(
        "demolab-node {} ({}) is sampling to {target}; Ctrl-C stops it",
        args.node, args.machine
    );
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let tx = stop_tx.clone();
    ctrl_c(move || {
        let _ = tx.send(());
    })?;
    while stop_rx.recv_timeout(Duration::from_millis(200)).is_err() {
        if node.is_finished() {
            break;
        }
    }
    let report = node.join();
    println!("demolab-node stopped after {} samples", report.recorded);
    Ok(())
}

/// Calls `on_stop` on Ctrl-C, using the tokio signal handler on a small runtime thread.
fn ctrl_c(on_stop: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        if runtime.block_on(tokio::signal::ctrl_c()).is_ok() {
            on_stop();
        }
    });
    Ok(())
}
