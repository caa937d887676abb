//! The demo region as one value: the hub with its embedded broker and store, and per lab a
//! gateway with simulated sensor nodes (MQTT) and a retrofit kit (serial). `main.rs` starts it
//! from the command line; end-to-end tests start the very same wiring on port 0.
//!
//! The embedded broker takes no anonymous clients here either: the hub, each gateway, each
//! simulated node and a read-only viewer get their own generated login
//! (`{data_dir}/mqtt/secrets.toml`), each allowed only its own topics.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use gateway::source::serial::SerialConfig;
use gateway::{GatewayConfig, GatewayHandle, MqttCredentials, MqttEndpoint};
use hub::auth::{AuthConfig, GameConfig, Role, UserConfig, hash_password};
use hub::broker::BrokerConfig;
use hub::broker::access::UserEntry;
use hub::broker::access::generated::GeneratedCredentials;
use hub::catalogue::Catalogue;
use hub::directory::{Directory, LabConfig, LinkConfig, MachineConfig};
use hub::mqtt_accounts::{VIEWER, secure_embedded_broker};
use hub::twin::TwinKey;
use hub::{BrokerSetting, Hub, HubConfig, MetricsSource};
use protocol::{GatewayId, LabId, NodeId};
use serialport::TTYPort;
use simulators::kit_node::{KitNodeConfig, KitNodeHandle, spawn_serial_kit_node};
use simulators::machines::{CncMill, CncParams, Machine, MachineKind};
use simulators::node::{
    MqttNodeConfig, NodeLogin, NodeReport, SimError, fresh_boot_id, run_controlled_node,
};
use simulators::timeline::LiveControl;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::scenarios::SimulatedScenarios;

/// The labs of the demo region: (lab, gateway).
pub const LABS: [(&str, &str); 2] = [
    ("aarhus-machining", "gw-aarhus"),
    ("odense-machining", "gw-odense"),
];

/// The demo's game, which the student login plays.
pub const GAME: &str = "energy-hunt";

type GatewayCounters = (LabId, GatewayId, Arc<gateway::GatewayStats>);

/// What the command line (or a test) chooses.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    /// Address the web platform and the MQTT broker listen on.
    pub bind: IpAddr,
    /// Port of the web platform (0 picks one).
    pub http_port: u16,
    /// Port of the embedded broker (0 picks one).
    pub mqtt_port: u16,
    /// The embedded store, the gateways' buffers and the generated logins.
    pub data_dir: PathBuf,
    /// Simulated CNC mills per lab.
    pub machines_per_lab: u16,
    /// Time between samples of each node.
    pub sample_period: Duration,
    /// Seed of the machine simulations.
    pub seed: u64,
    /// The operator's password; a random one when `None`.
    pub operator_password: Option<String>,
}

impl Default for RegionOptions {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            http_port: 8080,
            mqtt_port: 1883,
            data_dir: PathBuf::from("data"),
            machines_per_lab: 3,
            sample_period: Duration::from_secs(1),
            seed: 1,
            operator_password: None,
        }
    }
}

/// The web logins the banner shows.
#[derive(Clone)]
pub struct WebLogins {
    /// The operator's password.
    pub operator: String,
    /// The student's password.
    pub student: String,
}

impl std::fmt::Debug for WebLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebLogins(***)")
    }
}

/// A running demo region.
#[derive(Debug)]
pub struct Region {
    hub: Hub,
    gateways: Vec<GatewayHandle>,
    nodes: JoinSet<Result<NodeReport, SimError>>,
    serial_nodes: Vec<(TTYPort, KitNodeHandle)>,
    cancel: CancellationToken,
    accounts: GeneratedCredentials,
    logins: WebLogins,
    lab_lines: Vec<String>,
    machines: Vec<TwinKey>,
    data_dir: PathBuf,
}

/// Names, kinds and lines of the demo region's machines, and a virtual production line from
/// Aarhus to Odense.
pub fn directory(machines_per_lab: u16) -> anyhow::Result<Directory> {
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
            accept_new_machines: false,
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
pub fn simulated_machines(mills: u16) -> Vec<(String, MachineKind)> {
    let mut machines: Vec<(String, MachineKind)> = (1..=mills)
        .map(|n| (format!("mill-{n}"), MachineKind::CncMill))
        .collect();
    machines.push(("compressor-1".into(), MachineKind::Compressor));
    machines.push(("printer-1".into(), MachineKind::Printer3d));
    machines
}

/// The hardware id of the retrofit kit on the serial line of lab `lab_index`.
pub fn kit_node_id(lab_index: usize) -> NodeId {
    NodeId(0xd3_5e00_0000 | lab_index as u64)
}

/// The hardware id of the MQTT node on machine number `machine_index` of lab `lab_index`.
pub fn mqtt_node_id(lab_index: usize, machine_index: usize) -> NodeId {
    NodeId(0xd3_0000_0000 | (lab_index as u64) << 16 | machine_index as u64)
}

fn random_password() -> String {
    use std::fmt::Write;
    let bytes: [u8; 6] = rand::random();
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Each demo gateway reads its own lab's nodes, and each node has a login of its own.
fn demo_accounts(wanted: &mut Vec<UserEntry>, machines_per_lab: u16) {
    let mills = simulated_machines(machines_per_lab).len();
    for (lab_index, (_, gateway)) in LABS.into_iter().enumerate() {
        let nodes: Vec<String> = (0..mills)
            .map(|m| mqtt_node_id(lab_index, m).to_string())
            .collect();
        for entry in wanted.iter_mut().filter(|e| e.name == gateway) {
            // The gateway listens for every node it is configured with, the serial kit too.
            entry.nodes = nodes.clone();
            entry.nodes.push(kit_node_id(lab_index).to_string());
        }
        wanted.extend(nodes.into_iter().map(|node| UserEntry {
            name: node,
            role: "node".into(),
            ..UserEntry::default()
        }));
    }
}

impl Region {
    /// Starts the hub, then each lab's gateway and nodes; returns once all are up.
    pub async fn start(options: RegionOptions) -> anyhow::Result<Region> {
        // The gateways start after the hub; their counters join the hub's /metrics once they
        // exist.
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

        let logins = WebLogins {
            operator: options
                .operator_password
                .clone()
                .unwrap_or_else(random_password),
            student: random_password(),
        };
        // Every simulated machine on MQTT can run a demo scenario: register them before the
        // hub starts, so its API can offer them, and give each node its control.
        let mut simulated = SimulatedScenarios::default();
        let mut controls: HashMap<String, LiveControl> = HashMap::new();
        for (lab, _) in LABS {
            for (machine, kind) in simulated_machines(options.machines_per_lab) {
                let key = TwinKey::parse(&format!("{lab}/{machine}")).context("demo machine id")?;
                controls.insert(key.to_string(), simulated.add_machine(&key, kind));
            }
        }
        let mut config = HubConfig {
            scenarios: Some(Arc::new(simulated)),
            http_bind: SocketAddr::new(options.bind, options.http_port),
            broker: BrokerSetting::Embedded(BrokerConfig {
                bind: SocketAddr::new(options.bind, options.mqtt_port),
                ..BrokerConfig::default()
            }),
            data_dir: options.data_dir.clone(),
            extra_metrics: Some(extra_metrics),
            directory: Arc::new(directory(options.machines_per_lab)?),
            auth: AuthConfig {
                // The demo's labs are simulated and shown to anyone on purpose (the big screen).
                public_labs: LABS.iter().map(|(lab, _)| (*lab).to_owned()).collect(),
                token_ttl_s: 12 * 3600,
                users: vec![
                    UserConfig {
                        name: "operator".into(),
                        role: Role::Operator,
                        password_hash: hash_password(&logins.operator)?,
                        game: None,
                    },
                    UserConfig {
                        name: "student".into(),
                        role: Role::Student,
                        password_hash: hash_password(&logins.student)?,
                        game: Some(GAME.into()),
                    },
                ],
                games: vec![GameConfig {
                    id: GAME.into(),
                    name: "Find the energy waste".into(),
                    labs: vec![LABS[0].0.parse()?],
                }],
                ..AuthConfig::default()
            },
            ..HubConfig::default()
        };
        let accounts = secure_embedded_broker(&mut config, |wanted| {
            demo_accounts(wanted, options.machines_per_lab)
        })?
        .context("the demo's embedded broker has no accounts")?;
        let hub = Hub::start(config)
            .await
            .context("cannot start the hub (choose other ports with --http-port / --mqtt-port)")?;
        tokio::time::timeout(Duration::from_secs(10), hub.ready())
            .await
            .context("the hub did not connect to its own broker within 10 s")?;

        let mut region = Region {
            hub,
            gateways: Vec::new(),
            nodes: JoinSet::new(),
            serial_nodes: Vec::new(),
            cancel: CancellationToken::new(),
            accounts,
            logins,
            lab_lines: Vec::new(),
            machines: Vec::new(),
            data_dir: options.data_dir.clone(),
        };
        let mut counters = Vec::new();
        for (lab_index, (lab, gateway)) in LABS.into_iter().enumerate() {
            let stats = region
                .start_lab(
                    &options,
                    lab_index,
                    lab.parse()?,
                    gateway.parse()?,
                    &controls,
                )
                .await?;
            counters.push(stats);
        }
        let _ = gateway_stats.set(counters);
        Ok(region)
    }

    async fn start_lab(
        &mut self,
        options: &RegionOptions,
        lab_index: usize,
        lab: LabId,
        gateway: GatewayId,
        controls: &HashMap<String, LiveControl>,
    ) -> anyhow::Result<GatewayCounters> {
        let broker = MqttEndpoint {
            host: self.hub.mqtt_addr().ip().to_string(),
            port: self.hub.mqtt_addr().port(),
        };
        let mut node_configs = Vec::new();
        for (machine_index, (machine, kind)) in simulated_machines(options.machines_per_lab)
            .into_iter()
            .enumerate()
        {
            let node = mqtt_node_id(lab_index, machine_index);
            let seed = options
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(node.0 & 0xffff_ffff);
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
                    node,
                    machine: machine.parse()?,
                    boot: fresh_boot_id(node),
                    seed,
                    sample_period: options.sample_period,
                    tick_interval: options.sample_period,
                    max_samples: None,
                    broker_host: broker.host.clone(),
                    broker_port: broker.port,
                    login: Some(NodeLogin {
                        username: node.to_string(),
                        password: self.password(&node.to_string())?,
                    }),
                },
                model,
                control,
            ));
        }
        // All labs share the hub's broker here, so each gateway takes only its own nodes.
        let buffer_dir = options.data_dir.join("gateways").join(gateway.as_str());
        let mut config =
            GatewayConfig::new(lab.clone(), gateway.clone(), broker.clone(), buffer_dir);
        let login = MqttCredentials {
            username: gateway.to_string(),
            password: self.password(gateway.as_str())?,
        };
        config.uplink_credentials = Some(login.clone());
        config.southbound_credentials = Some(login);
        config.nodes = node_configs
            .iter()
            .map(|(n, _, _)| (n.node, n.machine.clone()))
            .collect();
        config.accept_unconfigured_nodes = false;
        // Each lab also has one retrofit kit on a serial line: the real firmware runtime and
        // drivers on simulated chips, writing to a real pseudo-terminal the gateway reads.
        let kit_node = kit_node_id(lab_index);
        let (master, slave) = TTYPort::pair().context("cannot create a pseudo-terminal")?;
        let tty = slave.name().context("pseudo-terminal without a name")?;
        config.serial = Some(SerialConfig {
            ports: vec![tty.clone().into()],
            ..SerialConfig::default()
        });
        config.nodes.insert(kit_node, "lathe-1".parse()?);
        let handle = gateway::start(config, self.cancel.clone())
            .with_context(|| format!("cannot start gateway {gateway}"))?;
        tokio::time::timeout(Duration::from_secs(10), handle.ready())
            .await
            .with_context(|| format!("gateway {gateway} did not come up within 10 s"))?;
        let counters = (lab.clone(), gateway.clone(), handle.stats().clone());
        self.gateways.push(handle);
        for (config, model, control) in node_configs {
            self.nodes.spawn(run_controlled_node(
                config,
                model,
                control,
                self.cancel.clone(),
            ));
        }
        let mut master = master;
        use serialport::SerialPort;
        master
            .set_timeout(Duration::from_millis(20))
            .context("pseudo-terminal timeout")?;
        self.serial_nodes.push((
            slave,
            spawn_serial_kit_node(
                KitNodeConfig {
                    node: kit_node,
                    machine: "lathe-1".parse()?,
                    boot: fresh_boot_id(kit_node),
                    seed: options.seed.wrapping_add(0x5e + lab_index as u64),
                    sample_period: options.sample_period,
                    tick_interval: options.sample_period,
                    max_samples: None,
                },
                master,
            ),
        ));
        for (machine, _) in simulated_machines(options.machines_per_lab) {
            self.machines
                .extend(TwinKey::parse(&format!("{lab}/{machine}")));
        }
        self.machines
            .extend(TwinKey::parse(&format!("{lab}/lathe-1")));
        self.lab_lines.push(format!(
            "lab: {lab} (gateway {gateway}, {} CNC mills, compressor-1 and printer-1 over MQTT, lathe-1 on serial {tty})",
            options.machines_per_lab
        ));
        Ok(counters)
    }

    fn password(&self, user: &str) -> anyhow::Result<String> {
        self.accounts
            .password(user)
            .map(ToOwned::to_owned)
            .with_context(|| format!("no generated MQTT login for {user}"))
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The generated MQTT logins.
    pub fn accounts(&self) -> &GeneratedCredentials {
        &self.accounts
    }

    /// The web logins.
    pub fn logins(&self) -> &WebLogins {
        &self.logins
    }

    /// Every machine of the region (MQTT nodes and serial kits), as twins.
    pub fn machines(&self) -> &[TwinKey] {
        &self.machines
    }

    /// Waits until every machine of the region has an online twin (its node connected, its
    /// gateway born it on the hub), or `deadline` passes; returns the machines still missing,
    /// none when the region is fully running. It wakes on the hub's twin changes, so it returns
    /// as soon as the last machine is born.
    pub async fn until_running(&self, deadline: Duration) -> Vec<TwinKey> {
        let twins = self.hub.twins();
        // Subscribed before the first look, so a birth between the two is not missed.
        let mut changes = twins.subscribe();
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let missing: Vec<TwinKey> = self
                .machines
                .iter()
                .filter(|key| !twins.get(key).is_some_and(|t| t.connectivity.online))
                .cloned()
                .collect();
            if missing.is_empty() {
                return missing;
            }
            match tokio::time::timeout_at(until, changes.recv()).await {
                // A change, or several missed while lagging: look again either way.
                Ok(Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => {
                    return missing;
                }
            }
        }
    }

    /// What the demo prints once everything runs: where each part is and how to log in.
    pub fn banner(&self) -> String {
        let http = self.hub.http_addr();
        let mqtt = self.hub.mqtt_addr();
        let mut lines = vec![
            "Demolab demo region is running".to_owned(),
            format!("web: http://{http}"),
            format!("mqtt: mqtt://{mqtt} (no anonymous clients: every service has its own login)"),
            format!("api: http://{http}/api/docs"),
            format!("stream: ws://{http}/api/v1/stream"),
            format!("data: {}", self.data_dir.display()),
            format!("operator login: operator / {}", self.logins.operator),
            format!(
                "student login: student / {} (game {GAME}: {})",
                self.logins.student, LABS[0].0
            ),
            format!(
                "mqtt logins: {} (owner-only; hub, gateways, nodes, game-{GAME})",
                self.accounts.secrets_path().display()
            ),
            format!(
                "watch (read-only): mosquitto_sub -h {} -p {} -u {VIEWER} -P {} -t 'spBv1.0/#' -t 'demolab/#' -v",
                mqtt.ip(),
                mqtt.port(),
                self.accounts.password(VIEWER).unwrap_or("?"),
            ),
        ];
        lines.extend(self.lab_lines.iter().cloned());
        lines.join("\n")
    }

    /// Waits until a simulated node stops on its own, which means it hit an error.
    pub async fn node_stopped(&mut self) -> Option<Result<Result<NodeReport, SimError>, String>> {
        let result = self.nodes.join_next().await?;
        Some(result.map_err(|e| e.to_string()))
    }

    /// Stops the nodes, then the gateways, then the hub (which saves the twins).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.cancel.cancel();
        while self.nodes.join_next().await.is_some() {}
        for (_slave, node) in self.serial_nodes {
            // The node thread notices within one sample period.
            let _ = tokio::task::spawn_blocking(move || node.join()).await;
        }
        for gateway in self.gateways {
            gateway.shutdown().await?;
        }
        self.hub.shutdown().await?;
        Ok(())
    }
}
