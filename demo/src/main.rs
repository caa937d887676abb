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
use demolab_demo::region_file::RegionFile;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Run the Demolab demo region: hub, embedded MQTT broker, and simulated labs with their gateways.
///
/// Without `--config` it runs the built-in region (`demo/region.toml`). Flags override the
/// region file's `[hub]`, `[broker]` and `[simulation]`; `--machines-per-lab` sets every
/// `count` in it.
#[derive(Debug, Parser)]
#[command(name = "demolab", version, about, long_about = None)]
struct Args {
    /// The region to run: labs, machines and their sources, users, games, lines.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the region file (or the built-in one), print a summary and exit.
    #[arg(long)]
    check_config: bool,
    /// Address the web platform and the MQTT broker listen on [default: 127.0.0.1].
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Port of the web platform and REST API (0 picks a free one) [default: 8080].
    #[arg(long)]
    http_port: Option<u16>,
    /// Port of the embedded MQTT broker (0 picks a free one) [default: 1883].
    #[arg(long)]
    mqtt_port: Option<u16>,
    /// Directory of the embedded store; twins survive restarts here [default: data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Simulated machines per lab: every `count` of the region file (3 CNC mills in the
    /// built-in region).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=48))]
    machines_per_lab: Option<u16>,
    /// Milliseconds between samples of each sensor node [default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    sample_ms: Option<u64>,
    /// Seed of the machine simulations; the same seed replays the same machine behaviour
    /// [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Password of the `operator` user (default: the user's `password_env`, else a new random
    /// one, printed at start).
    #[arg(long, env = "DEMOLAB_OPERATOR_PASSWORD")]
    operator_password: Option<String>,
    /// More log lines on stderr: `-v` what each part does (connections, births, nodes), `-vv`
    /// also debug detail. Without it only warnings and errors. `RUST_LOG`, when set, decides
    /// instead.
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
}

impl Args {
    /// The region file with `--machines-per-lab` applied, and the options: each flag given
    /// wins over the file, the file over the built-in defaults.
    fn region(&self) -> anyhow::Result<(RegionFile, RegionOptions)> {
        let mut file = match &self.config {
            Some(path) => {
                RegionFile::load(path).with_context(|| format!("region file {}", path.display()))?
            }
            None => RegionFile::builtin().context("the built-in region")?,
        };
        if let Some(count) = self.machines_per_lab {
            file.set_counts(count).context("--machines-per-lab")?;
        }
        let defaults = RegionOptions::default();
        let sample_ms = self.sample_ms.or(file.simulation.sample_ms);
        let options = RegionOptions {
            bind: self.bind.or(file.hub.bind).unwrap_or(defaults.bind),
            http_port: self
                .http_port
                .or(file.hub.http_port)
                .unwrap_or(defaults.http_port),
            mqtt_port: self
                .mqtt_port
                .or(file.broker.port)
                .unwrap_or(defaults.mqtt_port),
            data_dir: self
                .data_dir
                .clone()
                .or_else(|| file.hub.data_dir.clone())
                .unwrap_or(defaults.data_dir),
            machines_per_lab: self.machines_per_lab.unwrap_or(defaults.machines_per_lab),
            sample_period: sample_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.sample_period),
            seed: self.seed.or(file.simulation.seed).unwrap_or(defaults.seed),
            operator_password: self.operator_password.clone(),
        };
        Ok((file, options))
    }
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

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads: see the module's note.
    hub::malloc::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let (file, options) = args.region()?;
    if args.check_config {
        let source = args
            .config
            .as_ref()
            .map_or("the built-in region".to_owned(), |p| {
                p.display().to_string()
            });
        println!("{source} is valid");
        println!(
            "web {}:{}, mqtt {}:{}, data {}",
            options.bind,
            options.http_port,
            options.bind,
            options.mqtt_port,
            options.data_dir.display()
        );
        println!("{}", file.summary());
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(log_filter(args.verbose))),
        )
        .init();

    let data_dir = options.data_dir.clone();
    let mut region = Region::start_with(options, file).await?;
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
    println!("Demolab stopped; twins saved in {}", data_dir.display());
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

    #[test]
    fn flags_win_over_the_region_file_and_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("region.toml");
        let text = demolab_demo::region_file::BUILTIN
            .replace("http_port = 8080", "http_port = 9090")
            .replace("seed = 1", "seed = 5");
        std::fs::write(&path, text).expect("written");
        let config = path.to_str().expect("utf-8");
        let args =
            Args::try_parse_from(["demolab", "--config", config, "--seed", "9"]).expect("parses");
        let (file, options) = args.region().expect("valid");
        assert_eq!((options.http_port, options.seed), (9090, 9));
        assert_eq!(options.mqtt_port, 1883);
        assert_eq!(file.labs.len(), 2);
        let args = Args::try_parse_from(["demolab", "--machines-per-lab", "2"]).expect("parses");
        let (file, options) = args.region().expect("valid");
        assert_eq!(options.http_port, 8080);
        assert_eq!(file.labs[0].planned().expect("expands").len(), 5);
    }

    #[test]
    fn the_defaults_without_a_file_are_the_built_in_options() {
        let args = Args::try_parse_from(["demolab"]).expect("parses");
        let (_, options) = args.region().expect("valid");
        let defaults = RegionOptions::default();
        assert_eq!(
            (
                options.bind,
                options.http_port,
                options.mqtt_port,
                options.seed
            ),
            (
                defaults.bind,
                defaults.http_port,
                defaults.mqtt_port,
                defaults.seed
            )
        );
        assert_eq!(options.data_dir, defaults.data_dir);
        assert_eq!(options.sample_period, defaults.sample_period);
    }
}
