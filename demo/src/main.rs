//! `demolab` — the all-in-one demo region, and the composition root of the workspace.
//!
//! It wires, in one process: the hub (with its embedded MQTT broker and store), and per lab one
//! gateway plus simulated sensor nodes that run the real firmware core against machine models.
//! Nothing else in the workspace imports every crate; the parts still meet only over MQTT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use demolab_demo::scenarios::SimulatedScenarios;
use gateway::source::serial::SerialConfig;
use gateway::{GatewayConfig, MqttEndpoint};
use hub::auth::{AuthConfig, GameConfig, Role, UserConfig, hash_password};
use hub::broker::BrokerConfig;
use hub::catalogue::Catalogue;
use hub::directory::{Directory, LabConfig, LinkConfig, MachineConfig};
use hub::twin::TwinKey;
use hub::{BrokerSetting, Hub, HubConfig, MetricsSource};
use protocol::{GatewayId, LabId, NodeId};
use serialport::SerialPort;
use simulators::kit_node::{KitNodeConfig, spawn_serial_kit_node};
use simulators::machines::{CncMill, CncParams};
use simulators::machines::{Machine, MachineKind};
use simulators::node::{MqttNodeConfig, fresh_boot_id, run_controlled_node};
use simulators::timeline::LiveControl;
use std::collections::HashMap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// The labs of the demo region: (lab, gateway, machine name prefix).
const LABS: [(&str, &str); 2] = [
    ("aarhus-machining", "gw-aarhus"),
    ("odense-machining", "gw-odense"),
];

type GatewayCounters = (LabId, GatewayId, Arc<gateway::GatewayStats>);

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

/// Names, kinds and lines of the demo region's machines, and a virtual production line from
/// Aarhus to Odense.
fn region(machines_per_lab: u16) -> anyhow::Result<Directory> {
    let mut labs = Vec::new();
    for (index, ((lab, gateway), (name, location))) in LABS
        .into_iter()
        .zip([
            ("Aarhus machining lab", "Aarhus"),
            ("Odense machining lab", "Odense"),
        ])
        .enumerate()
    {
        let line = format!("line-{}", char::from(b'a' + index as u8));
        let mut machines: Vec<MachineConfig> = (1..=machines_per_lab)
            .map(|n| {
                Ok(MachineConfig {
                    id: format!("mill-{n}").parse()?,
                    kind: Some("cnc-mill".into()),
                    name: Some(format!("CNC mill {n}")),
                    line: Some(line.clone()),
                    attributes: [("simulated".to_owned(), "yes".to_owned())].into(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        machines.push(MachineConfig {
            id: "compressor-1".parse()?,
            kind: Some("compressor".into()),
            name: Some("Air compressor".into()),
            line: None,
            attributes: [("simulated".to_owned(), "yes".to_owned())].into(),
        });
        machines.push(MachineConfig {
            id: "printer-1".parse()?,
            kind: Some("3d-printer".into()),
            name: Some("FDM 3D printer".into()),
            line: Some(line.clone()),
            attributes: [("simulated".to_owned(), "yes".to_owned())].into(),
        });
        machines.push(MachineConfig {
            id: "lathe-1".parse()?,
            kind: Some("retrofit-lathe".into()),
            name: Some("Lathe with retrofit kit".into()),
            line: Some(line),
            attributes: [("link".to_owned(), "serial".to_owned())].into(),
        });
        labs.push(LabConfig {
            id: lab.parse()?,
            name: name.into(),
            location: location.into(),
            gateways: vec![gateway.parse()?],
            machines,
        });
    }
    let links = vec![LinkConfig {
        line: "virtual-line-1".into(),
        from: format!("{}/mill-1", LABS[0].0),
        to: format!("{}/lathe-1", LABS[1].0),
    }];
    Ok(Directory::new(Catalogue::builtin(), labs, links)?)
}

/// The machines of each demo lab whose sensor nodes talk MQTT, with their models.
fn simulated_machines(mills: u16) -> Vec<(String, MachineKind)> {
    let mut machines: Vec<(String, MachineKind)> = (1..=mills)
        .map(|n| (format!("mill-{n}"), MachineKind::CncMill))
        .collect();
    machines.push(("compressor-1".into(), MachineKind::Compressor));
    machines.push(("printer-1".into(), MachineKind::Printer3d));
    machines
}

fn random_password() -> String {
    use std::fmt::Write;
    let bytes: [u8; 6] = rand::random();
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
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

    // The gateways start after the hub; their counters join the hub's /metrics once they exist.
    let gateway_stats: Arc<OnceLock<Vec<GatewayCounters>>> = Arc::default();
    let scrape = gateway_stats.clone();
    let extra_metrics = MetricsSource(Arc::new(move || {
        let Some(gateways) = scrape.get() else {
            return String::new();
        };
        let snapshots: Vec<_> = gateways
            .iter()
            .map(|(lab, gw, stats)| (lab, gw, stats.snapshot()))
            .collect();
        gateway::render_prometheus(&snapshots)
    }));

    let operator_password = args
        .operator_password
        .clone()
        .unwrap_or_else(random_password);
    let student_password = random_password();
    // Every simulated machine on MQTT can run a demo scenario: register them before the hub
    // starts, so its API can offer them, and give each node its control.
    let mut simulated = SimulatedScenarios::default();
    let mut controls: HashMap<String, LiveControl> = HashMap::new();
    for (lab, _) in LABS {
        for (machine, kind) in simulated_machines(args.machines_per_lab) {
            let key = TwinKey::parse(&format!("{lab}/{machine}")).context("demo machine id")?;
            controls.insert(key.to_string(), simulated.add_machine(&key, kind));
        }
    }
    let hub = Hub::start(HubConfig {
        scenarios: Some(Arc::new(simulated)),
        http_bind: SocketAddr::new(args.bind, args.http_port),
        broker: BrokerSetting::Embedded(BrokerConfig {
            bind: SocketAddr::new(args.bind, args.mqtt_port),
            ..BrokerConfig::default()
        }),
        data_dir: args.data_dir.clone(),
        extra_metrics: Some(extra_metrics),
        directory: Arc::new(region(args.machines_per_lab)?),
        auth: AuthConfig {
            // The demo's labs are simulated and shown to anyone on purpose (the big screen).
            public_labs: LABS.iter().map(|(lab, _)| (*lab).to_owned()).collect(),
            token_ttl_s: 12 * 3600,
            users: vec![
                UserConfig {
                    name: "operator".into(),
                    role: Role::Operator,
                    password_hash: hash_password(&operator_password)?,
                    game: None,
                },
                UserConfig {
                    name: "student".into(),
                    role: Role::Student,
                    password_hash: hash_password(&student_password)?,
                    game: Some("energy-hunt".into()),
                },
            ],
            games: vec![GameConfig {
                id: "energy-hunt".into(),
                name: "Find the energy waste".into(),
                labs: vec![LABS[0].0.parse()?],
            }],
            ..AuthConfig::default()
        },
        ..HubConfig::default()
    })
    .await
    .context("cannot start the hub (choose other ports with --http-port / --mqtt-port)")?;
    tokio::time::timeout(Duration::from_secs(10), hub.ready())
        .await
        .context("the hub did not connect to its own broker within 10 s")?;

    let cancel = CancellationToken::new();
    let broker = MqttEndpoint {
        host: hub.mqtt_addr().ip().to_string(),
        port: hub.mqtt_addr().port(),
    };
    let mut gateways = Vec::new();
    let mut nodes = JoinSet::new();
    let mut lab_lines = Vec::new();
    let mut counters = Vec::new();
    let mut serial_nodes = Vec::new();
    for (lab_index, (lab, gateway)) in LABS.into_iter().enumerate() {
        let lab: LabId = lab.parse()?;
        let gateway: GatewayId = gateway.parse()?;
        let mut node_configs = Vec::new();
        for (machine_index, (machine, kind)) in simulated_machines(args.machines_per_lab)
            .into_iter()
            .enumerate()
        {
            let node_number = (lab_index as u64) << 16 | machine_index as u64;
            let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(node_number);
            let model: Box<dyn Machine> = match kind {
                // The mill keeps its tuned demo parameters.
                MachineKind::CncMill => Box::new(CncMill::new(seed, CncParams::default())),
                other => other.build(seed),
            };
            let control = controls
                .get(&format!("{lab}/{machine}"))
                .cloned()
                .unwrap_or_default();
            node_configs.push((
                MqttNodeConfig {
                    node: NodeId(0xd3_0000_0000 | node_number),
                    machine: machine.parse()?,
                    boot: fresh_boot_id(NodeId(0xd3_0000_0000 | node_number)),
                    seed,
                    sample_period: Duration::from_millis(args.sample_ms),
                    tick_interval: Duration::from_millis(args.sample_ms),
                    max_samples: None,
                    broker_host: broker.host.clone(),
                    broker_port: broker.port,
                },
                model,
                control,
            ));
        }
        // All labs share the hub's broker here, so each gateway takes only its own nodes.
        let buffer_dir = args.data_dir.join("gateways").join(gateway.as_str());
        let mut config =
            GatewayConfig::new(lab.clone(), gateway.clone(), broker.clone(), buffer_dir);
        config.nodes = node_configs
            .iter()
            .map(|(n, _, _)| (n.node, n.machine.clone()))
            .collect();
        config.accept_unconfigured_nodes = false;
        // Each lab also has one retrofit kit on a serial line: the real firmware runtime and
        // drivers on simulated chips, writing to a real pseudo-terminal the gateway reads.
        let kit_node = NodeId(0xd3_5e00_0000 | lab_index as u64);
        let (master, slave) =
            serialport::TTYPort::pair().context("cannot create a pseudo-terminal")?;
        let tty = slave.name().context("pseudo-terminal without a name")?;
        config.serial = Some(SerialConfig {
            ports: vec![tty.clone().into()],
            ..SerialConfig::default()
        });
        config.nodes.insert(kit_node, "lathe-1".parse()?);
        let handle = gateway::start(config, cancel.clone())
            .with_context(|| format!("cannot start gateway {gateway}"))?;
        tokio::time::timeout(Duration::from_secs(10), handle.ready())
            .await
            .with_context(|| format!("gateway {gateway} did not come up within 10 s"))?;
        counters.push((lab.clone(), gateway.clone(), handle.stats().clone()));
        gateways.push(handle);
        for (config, model, control) in node_configs {
            nodes.spawn(run_controlled_node(config, model, control, cancel.clone()));
        }
        let mut master = master;
        master
            .set_timeout(Duration::from_millis(20))
            .context("pseudo-terminal timeout")?;
        serial_nodes.push((
            slave,
            spawn_serial_kit_node(
                KitNodeConfig {
                    node: kit_node,
                    machine: "lathe-1".parse()?,
                    boot: fresh_boot_id(kit_node),
                    seed: args.seed.wrapping_add(0x5e + lab_index as u64),
                    sample_period: Duration::from_millis(args.sample_ms),
                    tick_interval: Duration::from_millis(args.sample_ms),
                    max_samples: None,
                },
                master,
            ),
        ));
        lab_lines.push(format!(
            "lab: {lab} (gateway {gateway}, {} CNC mills, compressor-1 and printer-1 over MQTT, lathe-1 on serial {tty})",
            args.machines_per_lab
        ));
    }

    let _ = gateway_stats.set(counters);

    println!();
    println!("Demolab demo region is running");
    println!("web: http://{}", hub.http_addr());
    println!("mqtt: mqtt://{}", hub.mqtt_addr());
    println!("api: http://{}/api/docs", hub.http_addr());
    println!("stream: ws://{}/api/v1/stream", hub.http_addr());
    println!("data: {}", args.data_dir.display());
    println!("operator login: operator / {operator_password}");
    println!(
        "student login: student / {student_password} (game energy-hunt: {})",
        LABS[0].0
    );
    for line in &lab_lines {
        println!("{line}");
    }
    println!("Press Ctrl-C to stop.");
    println!();

    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
        Some(result) = nodes.join_next() => {
            // A node ending on its own means it hit an error; say so and stop cleanly.
            warn!(?result, "a simulated node stopped unexpectedly; shutting down");
        }
    }
    info!("shutting down");
    cancel.cancel();
    while nodes.join_next().await.is_some() {}
    for (_slave, node) in serial_nodes {
        // The node thread notices within one sample period.
        let _ = tokio::task::spawn_blocking(move || node.join()).await;
    }
    for gateway in gateways {
        gateway.shutdown().await?;
    }
    hub.shutdown().await?;
    println!(
        "Demolab stopped; twins saved in {}",
        args.data_dir.display()
    );
    Ok(())
}
