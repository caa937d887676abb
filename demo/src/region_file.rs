//! The region file (`demolab --config region.toml`): which labs, machines, users, games and
//! virtual production lines the all-in-one region runs, typed and checked before anything
//! starts.
//!
//! The demo's own region is [`BUILTIN`] (`demo/region.toml`, compiled in), so the default and
//! the example a lab copies are one file. Every problem is a [`RegionFileError`] naming the key
//! (`labs[1].machines[0].source.port`); nothing here panics on input.
//!
//! ```
//! let region = demolab_demo::region_file::RegionFile::parse(r#"
//!     [[labs]]
//!     id = "my-lab"
//!     gateway = "gw-my-lab"
//!     [[labs.machines]]
//!     id = "press-1"
//!     kind = "compressor"
//!     source = { type = "simulated-modbus" }
//! "#).expect("valid");
//! assert_eq!(region.labs[0].machines[0].id, "press-1");
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gateway::source::modbus::{ModbusConfigError, ModbusDevice, RegisterMap};
use gateway::source::opcua::{
    Mode, OpcUaConfigError, OpcUaMachine, OpcUaMetric, OpcUaServer, Policy, Secret,
};
use hub::auth::{GameConfig, Role};
use hub::catalogue::Catalogue;
use hub::directory::LinkConfig;
use protocol::{GatewayId, LabId, MachineId, NodeId};
use serde::Deserialize;
use simulators::machines::MachineKind;

/// The demo region, `demo/region.toml`: what `demolab` runs without `--config`.
pub const BUILTIN: &str = include_str!("../region.toml");

/// How many machines one `count` may make; a lab's gateway announces each as a device.
pub const MAX_COUNT: u16 = 48;

/// A region file that cannot run, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum RegionFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or missing, or a value has the wrong type.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key, e.g. `labs[1].machines[0].source.port`; empty for the whole file.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

impl RegionFileError {
    fn at(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The offending key, when one is known.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Read { .. } => None,
        }
    }
}

/// A whole region file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionFile {
    /// Web platform and store.
    #[serde(default)]
    pub hub: HubSection,
    /// The embedded MQTT broker.
    #[serde(default)]
    pub broker: BrokerSection,
    /// The simulated machines' clock and seed.
    #[serde(default)]
    pub simulation: SimulationSection,
    /// The labs, each with one gateway.
    #[serde(default)]
    pub labs: Vec<LabSection>,
    /// Web logins.
    #[serde(default)]
    pub users: Vec<UserSection>,
    /// Innovation games (the hub's `[[auth.games]]`).
    #[serde(default)]
    pub games: Vec<GameConfig>,
    /// Links of virtual production lines across labs (the hub's `[[links]]`).
    #[serde(default)]
    pub links: Vec<LinkConfig>,
}

/// `[hub]`; flags override each key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// Address of the web platform and of the broker.
    pub bind: Option<IpAddr>,
    /// Port of the web platform (0 picks one).
    pub http_port: Option<u16>,
    /// The embedded store, gateway buffers and generated logins.
    pub data_dir: Option<PathBuf>,
    /// More machine kinds (`*.toml` in the hub's catalogue format), added to the built-in ones
    /// or replacing them; relative to the region file.
    pub catalogue_dir: Option<PathBuf>,
}

/// `[broker]`; flags override each key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// Port of the embedded broker (0 picks one); it listens on `[hub] bind`.
    pub port: Option<u16>,
}

/// `[simulation]`; flags override each key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulationSection {
    /// Seed of the machine models.
    pub seed: Option<u64>,
    /// Milliseconds between samples of each simulated node, and Modbus polls of simulated PLCs.
    pub sample_ms: Option<u64>,
}

/// `[[labs]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabSection {
    /// The Sparkplug group id.
    pub id: LabId,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Where it is.
    #[serde(default)]
    pub location: String,
    /// The lab's gateway (Sparkplug edge node id).
    pub gateway: GatewayId,
    /// Readable without a login. Off by default: a real lab's data is not for everyone.
    #[serde(default)]
    pub public: bool,
    /// Let the hub take machines this file does not name.
    #[serde(default)]
    pub accept_new_machines: bool,
    /// `[[labs.machines]]`.
    #[serde(default)]
    pub machines: Vec<MachineSection>,
}

/// `[[labs.machines]]`: one machine, or `count` alike ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSection {
    /// The twin's machine id; with `count`, the prefix of `{id}-1` … `{id}-{count}`.
    pub id: String,
    /// Makes this many machines, numbered from 1.
    pub count: Option<u16>,
    /// A kind of the hub's catalogue (`cnc-mill`, `compressor`, …).
    pub kind: String,
    /// Display name; with `count`, each gets ` {n}` appended.
    pub name: Option<String>,
    /// Production line inside the lab.
    pub line: Option<String>,
    /// Static metadata (vendor, year, …).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Where its data comes from.
    pub source: Source,
}

/// Where a machine's data comes from. Each variant maps onto one of the gateway's sources; a
/// new one (`opcua`, `simulated-opcua`) is a variant here, its checks in `check_machine`, and
/// an arm in `LabPlan::start` (`demo/src/lab.rs`) that adds the gateway source (and starts the
/// simulator).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Source {
    /// A simulated sensor node on the broker, running the real firmware core.
    SimulatedMqtt {
        /// The machine model; default: the one for the machine's kind.
        model: Option<MachineKind>,
    },
    /// The retrofit kit (real firmware and drivers on simulated chips) on a pseudo-terminal.
    SimulatedSerial {},
    /// A real node on a serial port.
    Serial {
        /// The device, e.g. `/dev/ttyUSB0`.
        port: PathBuf,
        /// The node's hardware id (16 hex digits), as its `Hello` announces it.
        node: String,
    },
    /// A real Modbus TCP device.
    Modbus(ModbusSource),
    /// The PLC simulator (`simulators::plc`) on an ephemeral port, polled over Modbus TCP.
    SimulatedModbus {
        /// The machine model; default: the one for the machine's kind.
        model: Option<MachineKind>,
    },
    /// A real node on the region's broker; its login is generated into the data dir.
    MqttNode {
        /// The node's hardware id (16 hex digits).
        node: String,
    },
    /// A real OPC UA server holding this machine's variables, read by subscription.
    #[serde(rename = "opcua")]
    OpcUa(OpcUaSource),
    /// The simulated OPC 40501-style machine tool (`simulators::opcua`) on an ephemeral
    /// loopback port, read by subscription like a real one.
    #[serde(rename = "simulated-opcua")]
    SimulatedOpcUa {
        /// The machine model; default: the one for the machine's kind.
        model: Option<MachineKind>,
    },
}

/// An OPC UA server as the gateway's `[[opcua]]` table has it, for one machine: less `name`
/// and `machine` (the machine entry gives both) and with the machine's metrics directly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcUaSource {
    /// `opc.tcp://host:port/path`.
    pub endpoint_url: String,
    /// `None` (default), `Basic256Sha256`, `Aes128Sha256RsaOaep` or `Aes256Sha256RsaPss`.
    #[serde(default)]
    pub security_policy: Policy,
    /// `None` (default), `Sign` or `SignAndEncrypt`.
    #[serde(default)]
    pub security_mode: Mode,
    /// User name for a login; anonymous when left out.
    pub username: Option<String>,
    /// Environment variable holding the login's password.
    pub password_env: Option<String>,
    /// A user certificate (DER or PEM) for an X.509 identity instead of a user name; relative
    /// to the region file.
    pub user_certificate: Option<PathBuf>,
    /// Its private key (PEM); relative to the region file.
    pub user_private_key: Option<PathBuf>,
    /// Trust the server's certificate without it being in the gateway's `trusted/` folder.
    #[serde(default)]
    pub trust_server_certs: bool,
    /// The variables to subscribe to, each a metric with its unit.
    pub metrics: Vec<OpcUaMetric>,
}

impl OpcUaSource {
    /// The gateway's server entry for `machine`, the password read from `password_env`.
    /// Errors name the key inside the source.
    pub fn server(
        &self,
        name: &str,
        machine: MachineId,
        pki_dir: PathBuf,
    ) -> Result<OpcUaServer, (String, String)> {
        let mut server = OpcUaServer::new(
            name,
            &self.endpoint_url,
            vec![OpcUaMachine {
                machine,
                metrics: self.metrics.clone(),
            }],
        );
        server.security_policy = self.security_policy;
        server.security_mode = self.security_mode;
        server.username = self.username.clone();
        server.password_env = self.password_env.clone();
        server.trust_server_certs = self.trust_server_certs;
        server.user_certificate = self.user_certificate.clone();
        server.user_private_key = self.user_private_key.clone();
        server.pki_dir = pki_dir;
        if let Some(var) = &self.password_env {
            let password = std::env::var(var).map_err(|e| {
                (
                    "password_env".to_owned(),
                    format!("environment variable {var:?}: {e}"),
                )
            })?;
            server.password = Some(Secret(password));
        }
        server
            .validate()
            .map_err(|e| (opcua_key(&e), e.to_string()))?;
        Ok(server)
    }
}

/// The key inside an `opcua` source that a gateway check refers to: the gateway's file nests
/// metrics under `machines[0]`, the region file puts them in the source itself.
fn opcua_key(error: &OpcUaConfigError) -> String {
    let inner = |key: &str| key.strip_prefix("machines[0].").unwrap_or(key).to_owned();
    match error {
        OpcUaConfigError::BadUrl { .. } => "endpoint_url".into(),
        OpcUaConfigError::SecurityMismatch { .. } => "security_mode".into(),
        OpcUaConfigError::TwoIdentities { .. } => "user_certificate".into(),
        OpcUaConfigError::HalfLogin { key, .. } | OpcUaConfigError::Zero { key, .. } => {
            (*key).to_owned()
        }
        OpcUaConfigError::Empty { key, .. }
        | OpcUaConfigError::TooManyMetrics { key, .. }
        | OpcUaConfigError::Duplicate { key, .. }
        | OpcUaConfigError::BadNodeId { key, .. } => inner(key),
        _ => "type".into(),
    }
}

/// A Modbus TCP device as the gateway's `[[modbus]]` table has it, less `name` and `machine`
/// (the machine entry gives both).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSource {
    /// `host:port`.
    pub address: String,
    /// Modbus unit id; the gateway's default when left out.
    pub unit_id: Option<u8>,
    /// Milliseconds between polls; the gateway's default when left out.
    pub poll_interval_ms: Option<u64>,
    /// Milliseconds to wait for a connection or response; the gateway's default when left out.
    pub timeout_ms: Option<u64>,
    /// The gateway's register map, one metric each.
    pub registers: Vec<RegisterMap>,
}

impl ModbusSource {
    /// The gateway's device for `machine`, with the gateway's defaults for what is left out.
    pub fn device(&self, name: String, machine: MachineId) -> ModbusDevice {
        let mut device = ModbusDevice::with_defaults(
            name,
            machine,
            self.address.clone(),
            self.registers.clone(),
        );
        if let Some(unit_id) = self.unit_id {
            device.unit_id = unit_id;
        }
        if let Some(ms) = self.poll_interval_ms {
            device.poll_interval_ms = ms;
        }
        if let Some(ms) = self.timeout_ms {
            device.timeout_ms = ms;
        }
        device
    }
}

/// `[[users]]`: a web login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    /// Login name.
    pub name: String,
    /// `student`, `operator` or `admin` (the hub's roles; teachers run games as operators).
    pub role: Role,
    /// Environment variable holding the password; a new random one when unset or empty.
    pub password_env: Option<String>,
    /// For students: the game whose labs they read.
    pub game: Option<String>,
}

/// One machine of a lab after `count` is expanded.
#[derive(Debug, Clone)]
pub struct PlannedMachine {
    /// Its id.
    pub id: MachineId,
    /// Display name.
    pub name: Option<String>,
    /// Index of its `[[labs.machines]]` entry.
    pub entry: usize,
    /// The entry it came from.
    pub section: MachineSection,
}

impl RegionFile {
    /// Makes the OPC UA sources' user certificate paths absolute from `base`, the file's
    /// folder: the gateway would otherwise take them from its `opcua-pki` folder.
    fn resolve_user_certificates(&mut self, base: &Path) {
        let sources = self
            .labs
            .iter_mut()
            .flat_map(|lab| lab.machines.iter_mut())
            .filter_map(|machine| match &mut machine.source {
                Source::OpcUa(opcua) => Some(opcua),
                _ => None,
            });
        for opcua in sources {
            for path in [&mut opcua.user_certificate, &mut opcua.user_private_key]
                .into_iter()
                .flatten()
            {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
    }

    /// The demo region ([`BUILTIN`]).
    pub fn builtin() -> Result<Self, RegionFileError> {
        Self::parse(BUILTIN)
    }

    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, RegionFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegionFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut file = Self::parse_unchecked(&text)?;
        // A lab keeps its catalogue beside its region file, wherever demolab is started.
        if let (Some(dir), Some(base)) = (&mut file.hub.catalogue_dir, path.parent())
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        if let Some(base) = path.parent() {
            file.resolve_user_certificates(base);
        }
        file.validate()?;
        Ok(file)
    }

    /// The catalogue the file's kinds come from: the built-in kinds plus `[hub] catalogue_dir`.
    pub fn catalogue(&self) -> Result<Catalogue, RegionFileError> {
        match &self.hub.catalogue_dir {
            None => Ok(Catalogue::builtin()),
            Some(dir) => Catalogue::with_dir(dir)
                .map_err(|e| RegionFileError::at("hub.catalogue_dir", e.to_string())),
        }
    }

    /// Parses and checks a region file's text; a relative `catalogue_dir` is taken from the
    /// working directory.
    pub fn parse(text: &str) -> Result<Self, RegionFileError> {
        let file = Self::parse_unchecked(text)?;
        file.validate()?;
        Ok(file)
    }

    fn parse_unchecked(text: &str) -> Result<Self, RegionFileError> {
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| RegionFileError::at("", e.to_string()))?;
        let file: RegionFile = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().message().to_owned();
            // serde names a missing or unknown key only in its message; put it in the path.
            let named = ["missing field `", "unknown field `"]
                .iter()
                .find_map(|prefix| message.strip_prefix(prefix)?.split('`').next());
            let key = match (named, key.as_str()) {
                (Some(field), ".") => field.to_owned(),
                (Some(field), _) if !key.ends_with(&format!(".{field}")) && key != field => {
                    format!("{key}.{field}")
                }
                (_, ".") => String::new(),
                _ => key,
            };
            RegionFileError::at(key, message)
        })?;
        Ok(file)
    }

    /// Sets every `count` (the demo's `--machines-per-lab`).
    pub fn set_counts(&mut self, count: u16) -> Result<(), RegionFileError> {
        for lab in &mut self.labs {
            for machine in &mut lab.machines {
                if machine.count.is_some() {
                    machine.count = Some(count);
                }
            }
        }
        self.validate()
    }

    /// Checks everything [`Region`](crate::region::Region) relies on, against
    /// [`RegionFile::catalogue`]; the first problem found is returned.
    pub fn validate(&self) -> Result<(), RegionFileError> {
        let catalogue = self.catalogue()?;
        let mut labs = HashSet::new();
        let mut gateways = HashSet::new();
        let mut twins = HashSet::new();
        for (l, lab) in self.labs.iter().enumerate() {
            if !labs.insert(&lab.id) {
                return Err(RegionFileError::at(
                    format!("labs[{l}].id"),
                    format!("lab {} is listed twice", lab.id),
                ));
            }
            // Each gateway has its own buffer directory and Sparkplug session.
            if !gateways.insert(&lab.gateway) {
                return Err(RegionFileError::at(
                    format!("labs[{l}].gateway"),
                    format!("gateway {} serves another lab already", lab.gateway),
                ));
            }
            let mut nodes = HashSet::new();
            let mut ports = HashSet::new();
            for (m, section) in lab.machines.iter().enumerate() {
                let key = format!("labs[{l}].machines[{m}]");
                check_machine(&catalogue, section, &key, &mut nodes, &mut ports)?;
            }
            let planned = lab.planned().map_err(|e| match e {
                RegionFileError::Invalid { key, problem } => {
                    RegionFileError::at(format!("labs[{l}].{key}"), problem)
                }
                other => other,
            })?;
            for machine in planned {
                if !twins.insert(format!("{}/{}", lab.id, machine.id)) {
                    return Err(RegionFileError::at(
                        format!("labs[{l}].machines[{}].id", machine.entry),
                        format!("machine {} is listed twice in lab {}", machine.id, lab.id),
                    ));
                }
            }
        }
        let mut users = HashSet::new();
        for (u, user) in self.users.iter().enumerate() {
            if user.name.is_empty() || !users.insert(&user.name) {
                return Err(RegionFileError::at(
                    format!("users[{u}].name"),
                    format!("user name {:?} is empty or listed twice", user.name),
                ));
            }
            if let Some(game) = &user.game
                && !self.games.iter().any(|g| &g.id == game)
            {
                return Err(RegionFileError::at(
                    format!("users[{u}].game"),
                    format!("no game {game:?} in [[games]]"),
                ));
            }
            if user.role == Role::Student && user.game.is_none() {
                return Err(RegionFileError::at(
                    format!("users[{u}].game"),
                    "a student needs a game",
                ));
            }
        }
        for (g, game) in self.games.iter().enumerate() {
            for (i, lab) in game.labs.iter().enumerate() {
                if !labs.contains(lab) {
                    return Err(RegionFileError::at(
                        format!("games[{g}].labs[{i}]"),
                        format!("no lab {lab} in [[labs]]"),
                    ));
                }
            }
        }
        for (i, link) in self.links.iter().enumerate() {
            for (end, twin) in [("from", &link.from), ("to", &link.to)] {
                if !twins.contains(twin) {
                    return Err(RegionFileError::at(
                        format!("links[{i}].{end}"),
                        format!("no machine {twin:?} (lab/machine) in [[labs]]"),
                    ));
                }
            }
        }
        if self.simulation.sample_ms.is_some_and(|ms| ms == 0) {
            return Err(RegionFileError::at(
                "simulation.sample_ms",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// Labs, machines and sources in a few lines (`--check-config`).
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        for lab in &self.labs {
            let machines = lab.planned().unwrap_or_default();
            lines.push(format!(
                "lab {} (gateway {}, {}): {} machines",
                lab.id,
                lab.gateway,
                if lab.public { "public" } else { "login needed" },
                machines.len()
            ));
            for machine in machines {
                lines.push(format!(
                    "  {} ({}) from {}",
                    machine.id,
                    machine.section.kind,
                    machine.section.source.describe()
                ));
            }
        }
        let users: Vec<String> = self
            .users
            .iter()
            .map(|u| format!("{} ({})", u.name, format!("{:?}", u.role).to_lowercase()))
            .collect();
        lines.push(format!("users: {}", users.join(", ")));
        let games: Vec<&str> = self.games.iter().map(|g| g.id.as_str()).collect();
        lines.push(format!("games: {}", games.join(", ")));
        lines.push(format!("links: {}", self.links.len()));
        lines.join("\n")
    }
}

impl LabSection {
    /// The lab's machines with every `count` expanded, in file order.
    pub fn planned(&self) -> Result<Vec<PlannedMachine>, RegionFileError> {
        let mut planned = Vec::new();
        for (m, section) in self.machines.iter().enumerate() {
            let ids: Vec<(String, Option<String>)> = match section.count {
                None => vec![(section.id.clone(), section.name.clone())],
                Some(count) => (1..=count)
                    .map(|n| {
                        (
                            format!("{}-{n}", section.id),
                            section.name.as_ref().map(|name| format!("{name} {n}")),
                        )
                    })
                    .collect(),
            };
            for (id, name) in ids {
                let id = id.parse().map_err(|e| {
                    RegionFileError::at(format!("machines[{m}].id"), format!("{e}"))
                })?;
                planned.push(PlannedMachine {
                    id,
                    name,
                    entry: m,
                    section: section.clone(),
                });
            }
        }
        Ok(planned)
    }
}

impl Source {
    /// How the `--check-config` summary and the banner name it.
    pub fn describe(&self) -> String {
        match self {
            Source::SimulatedMqtt { .. } => "a simulated node over MQTT".into(),
            Source::SimulatedSerial {} => "a simulated retrofit kit on a pseudo-terminal".into(),
            Source::Serial { port, node } => format!("node {node} on serial {}", port.display()),
            Source::Modbus(modbus) => format!("Modbus TCP {}", modbus.address),
            Source::SimulatedModbus { .. } => "a simulated PLC over Modbus TCP".into(),
            Source::MqttNode { node } => format!("node {node} over MQTT"),
            Source::OpcUa(opcua) => format!("OPC UA {}", opcua.endpoint_url),
            Source::SimulatedOpcUa { .. } => "a simulated machine tool over OPC UA".into(),
        }
    }

    /// The model a simulated source runs.
    pub fn model(&self, kind: &str) -> Option<MachineKind> {
        match self {
            Source::SimulatedMqtt { model }
            | Source::SimulatedModbus { model }
            | Source::SimulatedOpcUa { model } => {
                model.or_else(|| MachineKind::ALL.into_iter().find(|m| m.id() == kind))
            }
            _ => None,
        }
    }
}

fn check_machine(
    catalogue: &Catalogue,
    section: &MachineSection,
    key: &str,
    nodes: &mut HashSet<NodeId>,
    ports: &mut HashSet<PathBuf>,
) -> Result<(), RegionFileError> {
    let at = |sub: &str, problem: String| RegionFileError::at(format!("{key}.{sub}"), problem);
    if catalogue.get(&section.kind).is_none() {
        let known: Vec<&str> = catalogue.kinds().map(|k| k.id.as_str()).collect();
        return Err(at(
            "kind",
            format!(
                "no kind {:?} in the catalogue (known: {})",
                section.kind,
                known.join(", ")
            ),
        ));
    }
    match section.count {
        Some(count) if count == 0 || count > MAX_COUNT => {
            return Err(at("count", format!("must be 1 to {MAX_COUNT}")));
        }
        _ => {}
    }
    let mut node = |text: &str| -> Result<(), RegionFileError> {
        let id: NodeId = text
            .parse()
            .map_err(|e| at("source.node", format!("{text:?}: {e}")))?;
        if !nodes.insert(id) {
            return Err(at(
                "source.node",
                format!("node {id} serves another machine"),
            ));
        }
        Ok(())
    };
    let single = |source: &str| {
        if section.count.is_some() {
            return Err(at(
                "count",
                format!("a `{source}` source is one device; list each machine"),
            ));
        }
        Ok(())
    };
    match &section.source {
        Source::SimulatedMqtt { .. }
        | Source::SimulatedModbus { .. }
        | Source::SimulatedOpcUa { .. } => {
            if section.source.model(&section.kind).is_none() {
                let models: Vec<&str> = MachineKind::ALL.iter().map(|m| m.id()).collect();
                return Err(at(
                    "source.model",
                    format!(
                        "kind {:?} has no simulator; name a `model` ({})",
                        section.kind,
                        models.join(", ")
                    ),
                ));
            }
        }
        Source::SimulatedSerial {} => {}
        Source::Serial { port, node: id } => {
            single("serial")?;
            if port.as_os_str().is_empty() {
                return Err(at("source.port", "must name a device".into()));
            }
            if !ports.insert(port.clone()) {
                return Err(at(
                    "source.port",
                    format!("{} is read for another machine", port.display()),
                ));
            }
            node(id)?;
        }
        Source::MqttNode { node: id } => {
            single("mqtt-node")?;
            node(id)?;
        }
        Source::Modbus(modbus) => {
            single("modbus")?;
            let machine: MachineId = section.id.parse().map_err(|e| at("id", format!("{e}")))?;
            modbus
                .device(section.id.clone(), machine)
                .validate()
                .map_err(|e| at(&format!("source.{}", modbus_key(&e)), e.to_string()))?;
        }
        Source::OpcUa(opcua) => {
            single("opcua")?;
            let machine: MachineId = section.id.parse().map_err(|e| at("id", format!("{e}")))?;
            opcua
                .server(&section.id, machine, PathBuf::from("opcua-pki"))
                .map_err(|(sub, problem)| at(&format!("source.{sub}"), problem))?;
        }
    }
    Ok(())
}

/// The key inside a `modbus` source that a gateway check refers to.
fn modbus_key(error: &ModbusConfigError) -> &'static str {
    match error {
        ModbusConfigError::EmptyName => "name",
        ModbusConfigError::BadAddress { .. } => "address",
        ModbusConfigError::ZeroPollInterval { .. } => "poll_interval_ms",
        ModbusConfigError::ZeroTimeout { .. } => "timeout_ms",
        ModbusConfigError::NoRegisters { .. }
        | ModbusConfigError::TooManyRegisters { .. }
        | ModbusConfigError::DuplicateMetric { .. }
        | ModbusConfigError::UnknownUnit { .. }
        | ModbusConfigError::SpanOverflow { .. }
        | ModbusConfigError::NotFinite { .. } => "registers",
    }
}

#[cfg(test)]
mod tests;
