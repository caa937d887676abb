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
use clap::{ArgAction, Parser};
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
    /// More log lines on stderr: `-v` what each part does (connections, births, nodes), `-vv`
    /// also debug detail. Without it only warnings and errors. `RUST_LOG`, when set, decides
    /// instead.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
}

/// Our crates, whose lifecycle lines `-v` shows.
const OUR_CRATES: [&str; 6] = [
    "demolab",
    "demolab_demo",
    "demolab_hub",
    "demolab_gateway",
    "demolab_broker",
    "demolab_simulators",
];

/// The log filter for `-v` given `verbose` times. A newcomer's terminal shows the banner and
/// anything that went wrong; the steady INFO lines of a dozen nodes and gateways starting would
/// bury it, so they wait for `-v`.
fn log_filter(verbose: u8) -> String {
    let (ours, others) = match verbose {
        0 => return "warn".to_owned(),
        1 => ("info", "warn"),
        _ => ("debug", "info"),
    };
    let mut filter = others.to_owned();
    for name in OUR_CRATES {
        filter.push_str(&format!(",{name}={ours}"));
    }
    filter
}

/// Sets the banner apart from anything else in the terminal.
const RULE: &str = "════════════════════════════════════════════════════════════════════════";

/// How long start-up may take before the banner is printed anyway, naming what is missing.
const START_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(log_filter(args.verbose))),
        )
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
    // The banner promises a running region: every URL answers and every machine is live.
    let missing = region.until_running(START_DEADLINE).await;
    if !missing.is_empty() {
        let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
        warn!(
            ?missing,
            "not every machine is online after {START_DEADLINE:?}; they may still join"
        );
    }
    println!();
    println!("{RULE}");
    for line in region.banner().lines() {
        println!("  {line}");
    }
    println!("{RULE}");
    println!("Press Ctrl-C to stop. Logs: warnings only; -v or -vv for more.");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_by_default_and_each_v_shows_more_of_our_crates() {
        assert_eq!(log_filter(0), "warn");
        let one = log_filter(1);
        assert!(
            one.starts_with("warn,") && one.contains("demolab_hub=info"),
            "{one}"
        );
        let two = log_filter(2);
        assert!(
            two.starts_with("info,") && two.contains("demolab_gateway=debug"),
            "{two}"
        );
        assert_eq!(log_filter(5), two);
        for filter in [log_filter(0), one, two] {
            assert!(EnvFilter::try_new(&filter).is_ok(), "{filter}");
        }
    }

    #[test]
    fn verbosity_counts_repeated_flags() {
        let args = Args::try_parse_from(["demolab", "-vv"]).expect("parses");
        assert_eq!(args.verbose, 2);
        let args = Args::try_parse_from(["demolab"]).expect("parses");
        assert_eq!(args.verbose, 0);
    }
}
