//! `demolab-hub` — the digital-twin hub as a standalone service.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use demolab_hub::config::HubFile;
use demolab_hub::{BrokerSetting, Hub};
use tracing_subscriber::EnvFilter;

/// Run the Demolab hub: the Sparkplug B primary host, digital twins of every lab's machines,
/// their history and alarms, the REST/WebSocket/SSE API and the web platform.
#[derive(Debug, Parser)]
#[command(name = "demolab-hub", version, about)]
struct Args {
    /// The configuration file (see deploy/hub.toml). Without one, the defaults run a hub with
    /// its own broker on 1883, the web platform on 8080 and storage in ./data.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only load and validate the configuration, print a summary and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a password on stdin and print its argon2 hash for `[[auth.users]] password_hash`.
    HashPassword,
    /// Print the OpenAPI document of the REST API (also served at /api/v1/openapi.json).
    Openapi,
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts its threads: see the module's note.
    demolab_hub::malloc::limit_arenas();
    let args = Args::parse();
    // Read before the runtime is built, since it says how many threads the runtime gets.
    let file = match &args.config {
        Some(path) => HubFile::load(path)?,
        None => HubFile::default(),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if file.hub.worker_threads > 0 {
        runtime.worker_threads(file.hub.worker_threads);
    }
    runtime.enable_all().build()?.block_on(run(args, file))
}

async fn run(args: Args, file: HubFile) -> anyhow::Result<()> {
    if let Some(Command::HashPassword) = args.command {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(!password.is_empty(), "the password is empty");
        println!("{}", demolab_hub::auth::hash_password(password)?);
        return Ok(());
    }
    if let Some(Command::Openapi) = args.command {
        println!(
            "{}",
            serde_json::to_string_pretty(&demolab_hub::api::openapi::openapi())?
        );
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,demolab_hub=info")),
        )
        .init();
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("(defaults)"));
    let mut config = file.into_config(&path)?;
    let broker = match &config.broker {
        BrokerSetting::Embedded(broker) if broker.access.is_none() => format!(
            "embedded, listening on {}, logins generated in {}",
            broker.bind,
            demolab_hub::mqtt_accounts::accounts_dir(&config).display()
        ),
        BrokerSetting::Embedded(broker) => format!("embedded, listening on {}", broker.bind),
        BrokerSetting::External {
            host,
            port,
            failover,
        } => {
            let mut text = format!("external mqtt://{host}:{port}");
            for (host, port) in failover {
                text.push_str(&format!(", failover mqtt://{host}:{port}"));
            }
            text
        }
    };
    let labs = config.directory.labs().count();
    let users = config.auth.users.len();
    if args.check_config {
        println!(
            "{} is valid\nhost id: {}\nweb: {}\nbroker: {broker}\ndata: {}\nlabs: {labs}\nusers: {users}\ninflux: {}",
            path.display(),
            config.host_id,
            config.http_bind,
            config.data_dir.display(),
            config.influx.as_ref().map_or("off", |i| i.url.as_str()),
        );
        return Ok(());
    }
    let data_dir = config.data_dir.clone();
    // No access file for the embedded broker: every service gets a generated login instead of
    // the broker taking anonymous clients.
    let accounts = demolab_hub::mqtt_accounts::secure_embedded_broker(&mut config, |_| {})?;
    let hub = Hub::start(config).await?;
    let web = hub.http_addr();
    let host = if web.ip().is_unspecified() {
        format!("localhost:{}", web.port())
    } else {
        web.to_string()
    };
    let logins = accounts.as_ref().map_or(String::new(), |accounts| {
        format!(
            "logins:  anonymous MQTT refused; one login per gateway and service in {} (owner-only)\nwatch:   mosquitto_sub -h {} -p {} -u {} -P <its password in that file> -t 'spBv1.0/#' -v\n",
            accounts.secrets_path().display(),
            hub.mqtt_addr().ip(),
            hub.mqtt_addr().port(),
            demolab_hub::mqtt_accounts::VIEWER,
        )
    });
    let scheme = if hub.https() { "https" } else { "http" };
    let mqtt_tls = hub
        .mqtt_tls_addr()
        .map(|addr| format!("\nmqtts:   {addr} (TLS listener)"))
        .unwrap_or_default();
    println!(
        "demolab-hub is running\nweb:     {scheme}://{host}/\napi:     {scheme}://{host}/api/docs\nmqtt:    {broker} (hub connects to {}){mqtt_tls}\n{logins}data:    {}\nlabs:    {labs} configured\nPress Ctrl-C to stop.",
        hub.mqtt_addr(),
        data_dir.display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    hub.shutdown().await?;
    println!("demolab-hub stopped; everything accepted is on disk");
    Ok(())
}
