//! The region as one value: the hub with its embedded broker and store, and per lab a gateway
//! with the machines a [`RegionFile`] lists — simulated sensor nodes (MQTT), retrofit kits
//! (serial), PLC simulators (Modbus TCP), or real nodes, ports and devices. `main.rs` starts it
//! from the command line; end-to-end tests start the very same wiring on port 0.
//!
//! The embedded broker takes no anonymous clients here either: the hub, each gateway, each
//! MQTT node and a read-only viewer get their own generated login
//! (`{data_dir}/mqtt/secrets.toml`), each allowed only its own topics.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use gateway::{GatewayHandle, GatewayStats};
use hub::auth::{AuthConfig, Role, UserConfig, hash_password};
use hub::broker::BrokerConfig;
use hub::broker::access::UserEntry;
use hub::broker::access::generated::GeneratedCredentials;
use hub::directory::{Directory, LabConfig, MachineConfig};
use hub::mqtt_accounts::{VIEWER, secure_embedded_broker};
use hub::twin::TwinKey;
use hub::{BrokerSetting, Hub, HubConfig, MetricsSource};
use protocol::{GatewayId, LabId, NodeId};
use serialport::TTYPort;
use simulators::kit::{KIT_METRICS, RetrofitKit};
use simulators::kit_node::KitNodeHandle;
use simulators::machines::{CncMill, CncParams, Machine};
use simulators::node::{NodeReport, SimError};
use simulators::timeline::LiveControl;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::lab::{LabPlan, Started, kit_seed, model_seed, node_model};
use crate::region_file::{RegionFile, Source, UserSection};
use crate::scenarios::SimulatedScenarios;

type GatewayCounters = (LabId, GatewayId, Arc<GatewayStats>);

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
    /// Simulated CNC mills per lab of the built-in region ([`Region::start`]); a region file's
    /// own `count`s are set with [`RegionFile::set_counts`] instead.
    pub machines_per_lab: u16,
    /// Time between samples of each simulated node, and between polls of simulated PLCs.
    pub sample_period: Duration,
    /// Seed of the machine simulations.
    pub seed: u64,
    /// The password of the user named `operator`; else its `password_env`, else a random one.
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

/// A web login the banner shows.
#[derive(Clone)]
pub struct WebLogin {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Password.
    pub password: String,
    /// `(game, its labs)` for students.
    pub game: Option<(String, Vec<LabId>)>,
}

impl std::fmt::Debug for WebLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebLogin({}, ***)", self.name)
    }
}

/// A running region.
#[derive(Debug)]
pub struct Region {
    hub: Hub,
    gateways: Vec<GatewayHandle>,
    nodes: JoinSet<Result<NodeReport, SimError>>,
    plcs: JoinSet<std::io::Result<()>>,
    serial_nodes: Vec<(TTYPort, KitNodeHandle)>,
    opcua_sims: Vec<simulators::opcua::RunningOpcUaSim>,
    cancel: CancellationToken,
    accounts: GeneratedCredentials,
    logins: Vec<WebLogin>,
    service_logins: String,
    lab_lines: Vec<String>,
    machines: Vec<TwinKey>,
    data_dir: PathBuf,
}

/// The hub's directory of `file`'s labs, machines and links.
pub fn directory(file: &RegionFile) -> anyhow::Result<Directory> {
    let mut labs = Vec::new();
    for lab in &file.labs {
        let machines = lab
            .planned()?
            .into_iter()
            .map(|m| MachineConfig {
                id: m.id,
                kind: Some(m.section.kind.clone()),
                name: m.name,
                line: m.section.line.clone(),
                attributes: m.section.attributes.clone(),
            })
            .collect();
        labs.push(LabConfig {
            id: lab.id.clone(),
            name: lab.name.clone(),
            location: lab.location.clone(),
            gateways: vec![lab.gateway.clone()],
            machines,
            accept_new_machines: lab.accept_new_machines,
        });
    }
    Ok(Directory::new(file.catalogue()?, labs, file.links.clone())?)
}

/// A simulated machine of a region, built with the seed and parameters [`Region::start`] gives
/// it, to drive in simulated time without sockets (the alarm acceptance test does).
#[derive(Debug)]
pub struct SimulatedMachine {
    /// Its twin.
    pub twin: TwinKey,
    /// Its catalogue kind.
    pub kind: String,
    /// What produces its values.
    pub model: SimulatedModel,
}

/// What produces a simulated machine's values.
#[derive(Debug)]
pub enum SimulatedModel {
    /// The model behind a simulated MQTT node: its values as they are.
    Node(Box<dyn Machine>),
    /// A retrofit kit on a mill (a simulated serial source): the kit's firmware drivers read
    /// the mill through simulated chips.
    Kit {
        /// The machine (boxed, as the kit: both are far larger than the other variant).
        mill: Box<CncMill>,
        /// The kit on it.
        kit: Box<RetrofitKit>,
        /// The node's clock.
        uptime_ms: u64,
    },
}

impl SimulatedModel {
    /// Advances simulated time by `dt`; returns the metrics the node would send.
    pub fn step(&mut self, dt: Duration) -> Vec<(&'static str, f64)> {
        match self {
            SimulatedModel::Node(model) => {
                model.step(dt);
                model
                    .values()
                    .into_iter()
                    .map(|(name, _, value)| (name, f64::from(value)))
                    .collect()
            }
            SimulatedModel::Kit {
                mill,
                kit,
                uptime_ms,
            } => {
                *uptime_ms += u64::try_from(dt.as_millis()).unwrap_or(u64::MAX);
                let reading = mill.step(dt);
                kit.sense(*uptime_ms, &reading)
                    .readings
                    .into_iter()
                    .filter_map(|(index, value)| {
                        let (_, name, _) = KIT_METRICS.iter().find(|(i, _, _)| *i == index)?;
                        Some((*name, f64::from(value)))
                    })
                    .collect()
            }
        }
    }
}

/// Every simulated MQTT node and retrofit kit of `file` as a run with `seed` builds them (PLC
/// and OPC UA simulators aside).
pub fn simulated_machines(file: &RegionFile, seed: u64) -> anyhow::Result<Vec<SimulatedMachine>> {
    let mut machines = Vec::new();
    for (index, lab) in file.labs.iter().enumerate() {
        let plan = LabPlan::new(index, lab)?;
        for machine in &plan.machines {
            let model = match (&machine.planned.section.source, machine.node, machine.model) {
                (Source::SimulatedMqtt { .. }, Some(node), Some(kind)) => {
                    SimulatedModel::Node(node_model(kind, model_seed(seed, node)))
                }
                (Source::SimulatedSerial {}, Some(node), _) => {
                    let seed = kit_seed(seed, node);
                    SimulatedModel::Kit {
                        mill: Box::new(CncMill::new(seed, CncParams::default())),
                        kit: Box::new(RetrofitKit::new(seed)),
                        uptime_ms: 0,
                    }
                }
                _ => continue,
            };
            machines.push(SimulatedMachine {
                twin: plan.twin(&machine.planned.id),
                kind: machine.planned.section.kind.clone(),
                model,
            });
        }
    }
    Ok(machines)
}

/// The hardware id of the `index`-th simulated retrofit kit of lab `lab_index`.
pub fn kit_node_id(lab_index: usize, index: usize) -> NodeId {
    NodeId(0xd3_5e00_0000 | (index as u64) << 16 | lab_index as u64)
}

/// The hardware id of the `machine_index`-th simulated MQTT node of lab `lab_index`.
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

/// A user's password: the command line's for `operator`, else the named variable, else new.
fn password_of(user: &UserSection, options: &RegionOptions) -> String {
    if user.name == "operator"
        && let Some(password) = &options.operator_password
    {
        return password.clone();
    }
    user.password_env
        .as_deref()
        .and_then(|name| std::env::var(name).ok())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(random_password)
}

/// Each gateway reads its own lab's nodes, and each MQTT node has a login of its own.
fn node_accounts(wanted: &mut Vec<UserEntry>, plans: &[LabPlan]) {
    for plan in plans {
        for entry in wanted
            .iter_mut()
            .filter(|e| e.name == plan.gateway.as_str())
        {
            // The gateway listens for every node it is configured with, serial ones too.
            entry.nodes = plan.nodes().map(|(node, _)| node.to_string()).collect();
        }
        wanted.extend(plan.mqtt_nodes().map(|node| UserEntry {
            name: node.to_string(),
            role: "node".into(),
            ..UserEntry::default()
        }));
    }
}

impl Region {
    /// Starts the built-in demo region (`demo/region.toml`) with `machines_per_lab` mills per
    /// lab; returns once all parts are up.
    pub async fn start(options: RegionOptions) -> anyhow::Result<Region> {
        let mut file = RegionFile::builtin().context("the built-in region")?;
        file.set_counts(options.machines_per_lab)
            .context("--machines-per-lab")?;
        Self::start_with(options, file).await
    }

    /// Starts the hub, then each lab of `file` with its gateway and machines; returns once all
    /// are up. `options` decide addresses, data dir, clock and seed (the caller merges the
    /// file's `[hub]`, `[broker]` and `[simulation]` into them).
    pub async fn start_with(options: RegionOptions, file: RegionFile) -> anyhow::Result<Region> {
        file.validate()?;
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

        let plans = file
            .labs
            .iter()
            .enumerate()
            .map(|(index, lab)| LabPlan::new(index, lab))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Every simulated machine on MQTT can run a demo scenario: register them before the
        // hub starts, so its API can offer them, and give each node its control.
        let mut simulated = SimulatedScenarios::default();
        let mut controls: HashMap<String, LiveControl> = HashMap::new();
        for plan in &plans {
            for machine in &plan.machines {
                if let (Source::SimulatedMqtt { .. }, Some(model)) =
                    (&machine.planned.section.source, machine.model)
                {
                    let key = plan.twin(&machine.planned.id);
                    controls.insert(key.to_string(), simulated.add_machine(&key, model));
                }
            }
        }
        let mut logins = Vec::new();
        let mut users = Vec::new();
        for user in &file.users {
            let password = password_of(user, &options);
            users.push(UserConfig {
                name: user.name.clone(),
                role: user.role,
                password_hash: hash_password(&password)?,
                game: user.game.clone(),
            });
            let game = user.game.as_ref().and_then(|id| {
                let game = file.games.iter().find(|g| &g.id == id)?;
                Some((game.id.clone(), game.labs.clone()))
            });
            logins.push(WebLogin {
                name: user.name.clone(),
                role: user.role,
                password,
                game,
            });
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
            directory: Arc::new(directory(&file)?),
            auth: AuthConfig {
                public_labs: file
                    .labs
                    .iter()
                    .filter(|lab| lab.public)
                    .map(|lab| lab.id.to_string())
                    .collect(),
                token_ttl_s: 12 * 3600,
                users,
                games: file.games.clone(),
                ..AuthConfig::default()
            },
            ..HubConfig::default()
        };
        let accounts = secure_embedded_broker(&mut config, |wanted| node_accounts(wanted, &plans))?
            .context("the region's embedded broker has no accounts")?;
        let hub = Hub::start(config)
            .await
            .context("cannot start the hub (choose other ports with --http-port / --mqtt-port)")?;
        tokio::time::timeout(Duration::from_secs(10), hub.ready())
            .await
            .context("the hub did not connect to its own broker within 10 s")?;

        let mut service_logins = vec!["hub".to_owned(), "gateways".into(), "nodes".into()];
        service_logins.extend(file.games.iter().map(|g| format!("game-{}", g.id)));
        let mut region = Region {
            hub,
            gateways: Vec::new(),
            nodes: JoinSet::new(),
            plcs: JoinSet::new(),
            serial_nodes: Vec::new(),
            opcua_sims: Vec::new(),
            cancel: CancellationToken::new(),
            accounts,
            logins,
            service_logins: service_logins.join(", "),
            lab_lines: Vec::new(),
            machines: Vec::new(),
            data_dir: options.data_dir.clone(),
        };
        let mut counters = Vec::new();
        for plan in plans {
            let broker = region.hub.mqtt_addr();
            let started = plan
                .start(
                    &options,
                    broker,
                    &region.accounts,
                    &controls,
                    &region.cancel,
                )
                .await?;
            let Started {
                gateway,
                nodes,
                plcs,
                serial_nodes,
                opcua_sims,
                line,
            } = started;
            counters.push((
                plan.lab.clone(),
                plan.gateway.clone(),
                gateway.stats().clone(),
            ));
            region.gateways.push(gateway);
            for node in nodes {
                region.nodes.spawn(node);
            }
            for plc in plcs {
                region.plcs.spawn(plc);
            }
            region.serial_nodes.extend(serial_nodes);
            region.opcua_sims.extend(opcua_sims);
            region.lab_lines.push(line);
            region
                .machines
                .extend(plan.machines.iter().map(|m| plan.twin(&m.planned.id)));
        }
        let _ = gateway_stats.set(counters);
        Ok(region)
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
    pub fn logins(&self) -> &[WebLogin] {
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
        ];
        for login in &self.logins {
            let role = format!("{:?}", login.role).to_lowercase();
            let mut line = format!("{role} login: {} / {}", login.name, login.password);
            if let Some((game, labs)) = &login.game {
                let labs: Vec<&str> = labs.iter().map(LabId::as_str).collect();
                line.push_str(&format!(" (game {game}: {})", labs.join(", ")));
            }
            lines.push(line);
        }
        lines.extend([
            format!(
                "mqtt logins: {} (owner-only; {})",
                self.accounts.secrets_path().display(),
                self.service_logins
            ),
            format!(
                "watch (read-only): mosquitto_sub -h {} -p {} -u {VIEWER} -P {} -t 'spBv1.0/#' -t 'demolab/#' -v",
                mqtt.ip(),
                mqtt.port(),
                self.accounts.password(VIEWER).unwrap_or("?"),
            ),
        ]);
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
        while self.plcs.join_next().await.is_some() {}
        for (_slave, node) in self.serial_nodes {
            // The node thread notices within one sample period.
            let _ = tokio::task::spawn_blocking(move || node.join()).await;
        }
        for gateway in self.gateways {
            gateway.shutdown().await?;
        }
        // After the gateways, so none counts a lost connection on the way out.
        for sim in self.opcua_sims {
            sim.stop().await;
        }
        self.hub.shutdown().await?;
        Ok(())
    }
}
