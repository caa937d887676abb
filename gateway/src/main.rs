//! `demolab-gateway` — the edge gateway of one lab, as a standalone service.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use demolab_gateway::file::GatewayFile;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Run a Demolab lab gateway: sensor nodes (MQTT, serial) and Modbus machines in, Sparkplug B
/// to the hub out, with a disk buffer that keeps every sample while the hub is away.
#[derive(Debug, Parser)]
#[command(name = "demolab-gateway", version, about)]
struct Args {
    /// The configuration file (see deploy/gateway.toml).
    #[arg(long, default_value = "gateway.toml")]
    config: PathBuf,
    /// Only load and validate the configuration, print a summary and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,demolab_gateway=info")),
        )
        .init();
    let loaded = GatewayFile::load(&args.config)?;
    let config = &loaded.gateway;
    let summary = format!(
        "lab: {}\ngateway: {}\nuplink: mqtt://{}:{}\nsouthbound: {}\nserial ports: {}\nmodbus devices: {}\nbuffer: {} (cap {} MiB)\nops: http://{}",
        config.lab,
        config.gateway,
        config.uplink.host,
        config.uplink.port,
        config
            .southbound
            .as_ref()
            .map_or("none".to_owned(), |s| format!(
                "mqtt://{}:{}",
                s.host, s.port
            )),
        config.serial.as_ref().map_or(0, |s| s.ports.len()),
        config.modbus.len(),
        config.buffer.dir.display(),
        config.buffer.max_bytes >> 20,
        loaded.ops_listen,
    );
    if args.check_config {
        println!("{} is valid\n{summary}", args.config.display());
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind(loaded.ops_listen)
        .await
        .with_context(|| format!("cannot bind the ops endpoint to {}", loaded.ops_listen))?;
    let cancel = CancellationToken::new();
    let handle = demolab_gateway::start(loaded.gateway.clone(), cancel.clone())?;
    let app = demolab_gateway::ops::router(
        config.lab.clone(),
        config.gateway.clone(),
        handle.stats().clone(),
    );
    let ops_cancel = cancel.clone();
    let ops = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { ops_cancel.cancelled().await })
            .await
    });
    println!("demolab-gateway is running\n{summary}\nPress Ctrl-C to stop.");
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    handle.shutdown().await?;
    cancel.cancel();
    ops.await??;
    println!("demolab-gateway stopped; buffer flushed");
    Ok(())
}
