//! One lab of a region: its gateway and the sources of its machines. [`LabPlan`] decides node
//! ids and seeds before anything starts (the broker's logins need the node ids first);
//! [`LabPlan::start`] turns each machine's [`Source`] into the gateway source that reads it and,
//! for simulated machines, the simulator that feeds it.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use gateway::source::modbus::{RegisterMap, RegisterTable, RegisterType, virtual_node_id};
use gateway::source::opcua::{OpcUaMachine, OpcUaMetric, OpcUaServer, opcua_node_id};
use gateway::source::serial::SerialConfig;
use gateway::{GatewayConfig, GatewayHandle, MqttCredentials, MqttEndpoint};
use hub::broker::access::generated::GeneratedCredentials;
use hub::twin::TwinKey;
use protocol::{GatewayId, LabId, MachineId, NodeId};
use serialport::{SerialPort, TTYPort};
use simulators::kit_node::{KitNodeConfig, KitNodeHandle, spawn_serial_kit_node};
use simulators::machines::{CncMill, CncParams, Machine, MachineKind};
use simulators::node::{
    MqttNodeConfig, NodeLogin, NodeReport, SimError, fresh_boot_id, run_controlled_node,
};
use simulators::opcua::{OpcUaSimConfig, RunningOpcUaSim, start_opcua_sim};
use simulators::plc::{Plc, Snapshot};
use simulators::timeline::{LiveControl, Timeline};
use tokio_util::sync::CancellationToken;

use crate::region::{RegionOptions, kit_node_id, mqtt_node_id};
use crate::region_file::{LabSection, PlannedMachine, Source};

type NodeTask = Pin<Box<dyn Future<Output = Result<NodeReport, SimError>> + Send>>;
type PlcTask = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// A machine with what it needs before start: its node id (if it speaks node frames) and
/// the model of a simulated one.
#[derive(Debug, Clone)]
pub struct MachinePlan {
    /// The machine as the file has it.
    pub planned: PlannedMachine,
    /// The node whose frames carry its data; `None` for Modbus (the gateway's virtual node).
    pub node: Option<NodeId>,
    /// The simulated model, for simulated sources.
    pub model: Option<MachineKind>,
}

/// A lab before it starts.
#[derive(Debug, Clone)]
pub struct LabPlan {
    /// The lab.
    pub lab: LabId,
    /// Its gateway.
    pub gateway: GatewayId,
    /// Its machines, `count`s expanded.
    pub machines: Vec<MachinePlan>,
}

/// What a started lab hands to the region to own.
pub struct Started {
    /// The gateway.
    pub gateway: GatewayHandle,
    /// Simulated MQTT nodes, to spawn.
    pub nodes: Vec<NodeTask>,
    /// Simulated PLCs, to spawn.
    pub plcs: Vec<PlcTask>,
    /// Simulated retrofit kits with the pseudo-terminal end that must stay open.
    pub serial_nodes: Vec<(TTYPort, KitNodeHandle)>,
    /// Simulated OPC UA servers, running.
    pub opcua_sims: Vec<RunningOpcUaSim>,
    /// The banner's line for the lab.
    pub line: String,
}

impl LabPlan {
    /// Numbers the lab's simulated nodes in file order, so the built-in region keeps the ids
    /// it always had (its mills first, then compressor and printer; one kit per lab).
    pub fn new(index: usize, lab: &LabSection) -> anyhow::Result<Self> {
        let (mut mqtt, mut kits) = (0, 0);
        let mut machines = Vec::new();
        for planned in lab.planned()? {
            let source = &planned.section.source;
            let node = match source {
                Source::SimulatedMqtt { .. } => {
                    mqtt += 1;
                    Some(mqtt_node_id(index, mqtt - 1))
                }
                Source::SimulatedSerial {} => {
                    kits += 1;
                    Some(kit_node_id(index, kits - 1))
                }
                Source::Serial { node, .. } | Source::MqttNode { node } => Some(node.parse()?),
                Source::Modbus(_)
                | Source::SimulatedModbus { .. }
                | Source::OpcUa(_)
                | Source::SimulatedOpcUa { .. } => None,
            };
            let model = source.model(&planned.section.kind);
            machines.push(MachinePlan {
                planned,
                node,
                model,
            });
        }
        Ok(Self {
            lab: lab.id.clone(),
            gateway: lab.gateway.clone(),
            machines,
        })
    }

    /// The twin of `machine` in this lab.
    pub fn twin(&self, machine: &MachineId) -> TwinKey {
        TwinKey {
            lab: self.lab.clone(),
            machine: machine.clone(),
        }
    }

    /// Every node the gateway maps to a machine.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, MachineId)> + '_ {
        self.machines
            .iter()
            .filter_map(|m| Some((m.node?, m.planned.id.clone())))
    }

    /// The nodes that log in to the broker (simulated or real).
    pub fn mqtt_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.machines
            .iter()
            .filter_map(|m| match m.planned.section.source {
                Source::SimulatedMqtt { .. } | Source::MqttNode { .. } => m.node,
                _ => None,
            })
    }

    /// Starts the simulators this lab needs, then its gateway; returns once the gateway is up.
    pub async fn start(
        &self,
        options: &RegionOptions,
        broker_addr: SocketAddr,
        accounts: &GeneratedCredentials,
        controls: &HashMap<String, LiveControl>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Started> {
        let password = |user: &str| {
            accounts
                .password(user)
                .map(ToOwned::to_owned)
                .with_context(|| format!("no generated MQTT login for {user}"))
        };
        let broker = MqttEndpoint {
            host: broker_addr.ip().to_string(),
            port: broker_addr.port(),
        };
        // All labs share the hub's broker here, so each gateway takes only its own nodes.
        let buffer_dir = options
            .data_dir
            .join("gateways")
            .join(self.gateway.as_str());
        let mut config = GatewayConfig::new(
            self.lab.clone(),
            self.gateway.clone(),
            broker.clone(),
            buffer_dir,
        );
        let login = MqttCredentials {
            username: self.gateway.to_string(),
            password: password(self.gateway.as_str())?,
        };
        config.uplink_credentials = Some(login.clone());
        config.southbound_credentials = Some(login);
        config.nodes = self.nodes().collect();
        config.accept_unconfigured_nodes = false;

        let mut nodes: Vec<NodeTask> = Vec::new();
        let mut plcs: Vec<PlcTask> = Vec::new();
        let mut opcua_sims = Vec::new();
        let opcua_pki = options
            .data_dir
            .join("gateways")
            .join(self.gateway.as_str())
            .join("opcua-pki");
        let mut kits = Vec::new();
        let mut ports: Vec<PathBuf> = Vec::new();
        let mut line = Line::default();
        for machine in &self.machines {
            let id = &machine.planned.id;
            let seed_of = |node: NodeId| model_seed(options.seed, node);
            match (&machine.planned.section.source, machine.node, machine.model) {
                (Source::SimulatedMqtt { .. }, Some(node), Some(kind)) => {
                    let seed = seed_of(node);
                    let model = node_model(kind, seed);
                    let control = controls
                        .get(&self.twin(id).to_string())
                        .cloned()
                        .unwrap_or_default();
                    let node_config = MqttNodeConfig {
                        node,
                        machine: id.clone(),
                        boot: fresh_boot_id(node),
                        seed,
                        sample_period: options.sample_period,
                        tick_interval: options.sample_period,
                        max_samples: None,
                        broker_host: broker.host.clone(),
                        broker_port: broker.port,
                        login: Some(NodeLogin {
                            username: node.to_string(),
                            password: password(&node.to_string())?,
                        }),
                    };
                    nodes.push(Box::pin(run_controlled_node(
                        node_config,
                        model,
                        control,
                        cancel.clone(),
                    )));
                    line.mqtt(&machine.planned);
                }
                (Source::SimulatedSerial {}, Some(node), _) => {
                    // The real firmware runtime and drivers on simulated chips, writing to a
                    // real pseudo-terminal the gateway reads.
                    let (mut master, slave) =
                        TTYPort::pair().context("cannot create a pseudo-terminal")?;
                    let tty = slave.name().context("pseudo-terminal without a name")?;
                    master
                        .set_timeout(Duration::from_millis(20))
                        .context("pseudo-terminal timeout")?;
                    ports.push(tty.clone().into());
                    kits.push((slave, node, id.clone(), master));
                    line.push(format!("{id} on serial {tty}"));
                }
                (Source::Serial { port, .. }, Some(_), _) => {
                    ports.push(port.clone());
                    line.push(format!("{id} on serial {}", port.display()));
                }
                (Source::MqttNode { .. }, Some(node), _) => {
                    line.push(format!("{id} (node {node}) over MQTT"));
                }
                (Source::Modbus(modbus), _, _) => {
                    config
                        .modbus
                        .push(modbus.device(format!("{}/{id}", self.lab), id.clone()));
                    line.push(format!("{id} over Modbus TCP {}", modbus.address));
                }
                (Source::SimulatedModbus { .. }, _, Some(kind)) => {
                    let name = format!("{}/{id}", self.lab);
                    let seed = seed_of(virtual_node_id(&name));
                    let plc =
                        Plc::new(kind.build(seed), Timeline::default(), options.sample_period);
                    // Loopback and an ephemeral port: the PLC is the gateway's alone.
                    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
                    let address = listener.local_addr()?;
                    let registers = plc_registers(&plc.memory().snapshot())?;
                    let mut device = gateway::source::modbus::ModbusDevice::with_defaults(
                        name,
                        id.clone(),
                        address.to_string(),
                        registers,
                    );
                    device.poll_interval_ms =
                        u64::try_from(options.sample_period.as_millis()).unwrap_or(u64::MAX);
                    config.modbus.push(device);
                    let run = plc.run(listener, Some(options.sample_period), cancel.clone());
                    let (lab, machine) = (self.lab.clone(), id.clone());
                    plcs.push(Box::pin(async move {
                        let result = run.await;
                        // Only cancellation ends a PLC cleanly; otherwise its twin goes quiet,
                        // which an operator should hear about.
                        if let Err(error) = &result {
                            tracing::error!(%lab, %machine, %error, "simulated PLC stopped");
                        }
                        result
                    }));
                    line.push(format!("{id} on a simulated PLC (Modbus TCP {address})"));
                }
                (Source::OpcUa(opcua), _, _) => {
                    let name = format!("{}/{id}", self.lab);
                    let server = opcua.server(&name, id.clone(), opcua_pki.clone()).map_err(
                        |(key, problem)| anyhow::anyhow!("machine {id}: source.{key}: {problem}"),
                    )?;
                    config.opcua.push(server);
                    line.push(format!("{id} over OPC UA {}", opcua.endpoint_url));
                }
                (Source::SimulatedOpcUa { .. }, _, Some(kind)) => {
                    let name = format!("{}/{id}", self.lab);
                    let seed = seed_of(opcua_node_id(&name, id));
                    let mut sim = OpcUaSimConfig::new(
                        id.as_str(),
                        options
                            .data_dir
                            .join("opcua-sims")
                            .join(self.lab.as_str())
                            .join(id.as_str()),
                    );
                    sim.kind = kind;
                    sim.seed = seed;
                    sim.step = options.sample_period;
                    sim.update_interval = Some(options.sample_period);
                    let running = start_opcua_sim(sim, cancel.clone())
                        .await
                        .with_context(|| format!("cannot start the OPC UA simulator of {id}"))?;
                    let metrics = kind
                        .build(seed)
                        .metrics()
                        .iter()
                        .map(|(metric, unit)| {
                            Ok(OpcUaMetric {
                                node_id: running.node_id(metric),
                                metric: metric.parse()?,
                                unit: unit.symbol().into(),
                            })
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    let mut server = OpcUaServer::new(
                        &name,
                        running.endpoint_url(),
                        vec![OpcUaMachine {
                            machine: id.clone(),
                            metrics,
                        }],
                    );
                    server.pki_dir = opcua_pki.clone();
                    server.publishing_interval_ms =
                        u64::try_from(options.sample_period.as_millis()).unwrap_or(u64::MAX);
                    config.opcua.push(server);
                    line.push(format!(
                        "{id} on a simulated OPC UA server ({})",
                        running.endpoint_url()
                    ));
                    opcua_sims.push(running);
                }
                (source, _, _) => {
                    // `LabPlan::new` and the file's validation make every source above whole.
                    anyhow::bail!("machine {id}: incomplete plan for {}", source.describe());
                }
            }
        }
        // As the gateway's own file does: a Modbus device speaks as a virtual node, and with
        // unconfigured nodes refused, that node must be mapped too.
        for device in &config.modbus {
            config
                .nodes
                .insert(device.node_id(), device.machine.clone());
        }
        for server in &config.opcua {
            for machine in &server.machines {
                config.nodes.insert(
                    opcua_node_id(&server.name, &machine.machine),
                    machine.machine.clone(),
                );
            }
        }
        if !ports.is_empty() {
            config.serial = Some(SerialConfig {
                ports,
                ..SerialConfig::default()
            });
        }
        let gateway_id = &self.gateway;
        let gateway = gateway::start(config, cancel.clone())
            .with_context(|| format!("cannot start gateway {gateway_id}"))?;
        tokio::time::timeout(Duration::from_secs(10), gateway.ready())
            .await
            .with_context(|| format!("gateway {gateway_id} did not come up within 10 s"))?;
        let serial_nodes = kits
            .into_iter()
            .map(|(slave, node, machine, master)| {
                let kit = KitNodeConfig {
                    node,
                    machine,
                    boot: fresh_boot_id(node),
                    seed: kit_seed(options.seed, node),
                    sample_period: options.sample_period,
                    tick_interval: options.sample_period,
                    max_samples: None,
                };
                (slave, spawn_serial_kit_node(kit, master))
            })
            .collect();
        Ok(Started {
            gateway,
            nodes,
            plcs,
            serial_nodes,
            opcua_sims,
            line: format!(
                "lab: {} (gateway {}, {})",
                self.lab,
                self.gateway,
                line.finish()
            ),
        })
    }
}

/// The seed of the model behind a simulated node, PLC or OPC UA server of a run with `seed`.
pub(crate) fn model_seed(seed: u64, node: NodeId) -> u64 {
    seed.wrapping_mul(1_000_003)
        .wrapping_add(node.0 & 0xffff_ffff)
}

/// The seed of a simulated retrofit kit (its mill and its vibration noise) of a run with `seed`.
pub(crate) fn kit_seed(seed: u64, node: NodeId) -> u64 {
    seed.wrapping_add(0x5e).wrapping_add(node.0 & 0xffff_ffff)
}

/// The model behind a simulated MQTT node.
pub(crate) fn node_model(kind: MachineKind, seed: u64) -> Box<dyn Machine> {
    match kind {
        // The mill keeps its tuned demo parameters.
        MachineKind::CncMill => Box::new(CncMill::new(seed, CncParams::default())),
        other => other.build(seed),
    }
}

/// The simulated PLC's register map in the gateway's terms: each metric an `f32` in two input
/// registers, in the model's metric order (see `simulators::plc`).
fn plc_registers(snapshot: &Snapshot) -> anyhow::Result<Vec<RegisterMap>> {
    snapshot
        .values
        .iter()
        .enumerate()
        .map(|(i, &(metric, unit, _))| {
            Ok(RegisterMap {
                metric: metric.parse()?,
                unit: unit.symbol().to_owned(),
                table: RegisterTable::Input,
                address: u16::try_from(2 * i)?,
                data_type: RegisterType::F32,
                word_order: Default::default(),
                byte_order: Default::default(),
                scale: 1.0,
                offset: 0.0,
            })
        })
        .collect()
}

/// The banner's words for a lab's machines: simulated MQTT machines in one list ("3 CNC mills,
/// compressor-1 and printer-1 over MQTT"), then each other machine with where it is read.
#[derive(Default)]
struct Line {
    mqtt: Vec<String>,
    counted: Vec<usize>,
    others: Vec<String>,
}

impl Line {
    fn mqtt(&mut self, machine: &PlannedMachine) {
        let section = &machine.section;
        match section.count {
            Some(count) if !self.counted.contains(&machine.entry) => {
                self.counted.push(machine.entry);
                let name = section.name.as_deref().unwrap_or(&section.id);
                self.mqtt.push(format!("{count} {name}s"));
            }
            Some(_) => {}
            None => self.mqtt.push(machine.id.to_string()),
        }
    }

    fn push(&mut self, words: String) {
        self.others.push(words);
    }

    fn finish(self) -> String {
        let mut parts = Vec::new();
        if let Some((last, rest)) = self.mqtt.split_last() {
            let list = if rest.is_empty() {
                last.clone()
            } else {
                format!("{} and {last}", rest.join(", "))
            };
            parts.push(format!("{list} over MQTT"));
        }
        parts.extend(self.others);
        parts.join(", ")
    }
}
