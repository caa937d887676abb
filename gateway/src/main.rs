//! `demolab-gateway` — the edge gateway of one lab, as a standalone service.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use demolab_gateway::file::GatewayFile;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Run a Demolab lab gateway: sensor nodes (MQTT, serial), Modbus and OPC UA machines in,
/// Sparkplug B to the hub out, with a disk buffer that keeps every sample while the hub is away.
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
    let mut loaded = GatewayFile::load(&args.config)?;
    // A lab without a broker: the gateway brings one for its network nodes.
    let embedded = match loaded.embedded_broker.filter(|_| !args.check_config) {
        Some(bind) => {
            // A broker we start never takes anonymous clients: the gateway and each listed node
            // get a generated login.
            let accounts = lab_broker_accounts(&loaded.gateway)?;
            // Only listed nodes have a login, so only they can send: listen for them alone
            // (the gateway's grant covers exactly their topics).
            loaded.gateway.accept_unconfigured_nodes = false;
            loaded.gateway.southbound_credentials = Some(demolab_gateway::MqttCredentials {
                username: loaded.gateway.gateway.to_string(),
                password: accounts
                    .password(loaded.gateway.gateway.as_str())
                    .context("no generated password for the gateway")?
                    .to_owned(),
            });
            println!(
                "lab broker logins: one per listed node in {} (owner-only); unlisted nodes cannot connect",
                accounts.secrets_path().display()
            );
            let broker = broker::EmbeddedBroker::start(broker::BrokerConfig {
                bind,
                access: Some(accounts.access().clone()),
                ..broker::BrokerConfig::default()
            })
            .await
            .context("cannot start the embedded broker for the lab's nodes")?;
            let port = broker.local_addr().port();
            let host = if bind.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                bind.ip().to_string()
            };
            loaded.gateway.southbound = Some(demolab_gateway::MqttEndpoint { host, port });
            Some(broker)
        }
        None => None,
    };
    let config = &loaded.gateway;
    let ops_listener = match args.check_config {
        true => None,
        false => Some(
            tokio::net::TcpListener::bind(loaded.ops_listen)
                .await
                .with_context(|| {
                    format!("cannot bind the ops endpoint to {}", loaded.ops_listen)
                })?,
        ),
    };
    let ops_addr = ops_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(loaded.ops_listen);
    let summary = format!(
        "lab: {}\ngateway: {}\nuplink: mqtt://{}:{}\nsouthbound: {}\nserial: {}\nmodbus devices: {}\nopcua servers: {}\nbuffer: {} (cap {} MiB)\nops: http://{}",
        config.lab,
        config.gateway,
        config.uplink.host,
        config.uplink.port,
        config
            .southbound
            .as_ref()
            .map_or("none".to_owned(), |s| format!(
                "mqtt://{}:{}{}",
                s.host,
                s.port,
                if embedded.is_some() {
                    " (embedded broker)"
                } else {
                    ""
                }
            )),
        config.serial.as_ref().map_or("none".to_owned(), |s| {
            let ports: Vec<String> = s.ports.iter().map(|p| p.display().to_string()).collect();
            match (s.scan, ports.is_empty()) {
                (true, true) => format!("scanning {}", s.scan_patterns.join(", ")),
                (true, false) => format!(
                    "{} and scanning {}",
                    ports.join(", "),
                    s.scan_patterns.join(", ")
                ),
                (false, _) => ports.join(", "),
            }
        }),
        config.modbus.len(),
        config.opcua.len(),
        config.buffer.dir.display(),
        config.buffer.max_bytes >> 20,
        ops_addr,
    );
    if args.check_config {
        println!("{} is valid\n{summary}", args.config.display());
        return Ok(());
    }

    let listener = ops_listener.context("ops endpoint")?;
    let cancel = CancellationToken::new();
    let handle = demolab_gateway::start(loaded.gateway.clone(), cancel.clone())?;
    let ops = tokio::spawn(demolab_gateway::ops::serve(
        listener,
        config.lab.clone(),
        config.gateway.clone(),
        handle.stats().clone(),
        handle.status().clone(),
        cancel.clone(),
    ));
    // Nodes may publish as soon as they see the banner: be subscribed first.
    if tokio::time::timeout(std::time::Duration::from_secs(10), handle.sources_ready())
        .await
        .is_err()
    {
        tracing::warn!("the lab broker has not answered yet; still trying");
    }
    println!("demolab-gateway is running\n{summary}\nPress Ctrl-C to stop.");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    handle.shutdown().await?;
    cancel.cancel();
    ops.await?;
    if let Some(broker) = embedded {
        broker.shutdown().await?;
    }
    println!("demolab-gateway stopped; buffer flushed");
    Ok(())
}

/// The logins of the lab broker this gateway runs: itself, each configured node, and a
/// read-only viewer; kept beside the disk buffer.
fn lab_broker_accounts(
    config: &demolab_gateway::GatewayConfig,
) -> anyhow::Result<broker::access::generated::GeneratedCredentials> {
    use broker::access::UserEntry;
    let mut nodes: Vec<String> = config.nodes.keys().map(ToString::to_string).collect();
    nodes.sort();
    let mut wanted = vec![
        UserEntry {
            name: config.gateway.to_string(),
            role: "gateway".into(),
            lab: Some(config.lab.to_string()),
            nodes: nodes.clone(),
            ..UserEntry::default()
        },
        UserEntry {
            name: "viewer".into(),
            role: "viewer".into(),
            ..UserEntry::default()
        },
    ];
    wanted.extend(nodes.into_iter().map(|node| UserEntry {
        name: node,
        role: "node".into(),
        ..UserEntry::default()
    }));
    let dir = config.buffer.dir.with_file_name("lab-broker");
    broker::access::generated::GeneratedCredentials::ensure(&dir, &wanted)
        .with_context(|| format!("cannot set up the lab broker's logins in {}", dir.display()))
}
