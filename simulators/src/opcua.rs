//! A simulated OPC UA server exposing one machine tool in the umati / OPC 40501 style, for the
//! gateway's OPC UA source and for any OPC UA client.
//!
//! # Address space
//!
//! In namespace [`NAMESPACE_URI`] (its index is [`RunningOpcUaSim::namespace`], usually 2):
//!
//! | browse path (under `Objects`)             | node id (`s=`)                    | content |
//! |-------------------------------------------|-----------------------------------|---------|
//! | `Machines/<name>`                         | `<name>`                          | the machine object |
//! | `Machines/<name>/Identification/Manufacturer`, `Model`, `SerialNumber` | `<name>.Identification.<Browse>` | strings |
//! | `Machines/<name>/Monitoring/<metric>`     | `<name>.Monitoring.<metric>`      | the model's metric as `Double`, with an `EngineeringUnits` property |
//! | `Machines/<name>/Monitoring/Counter`      | `<name>.Monitoring.Counter`       | steps 1, 2, 3, … once per update (`Double`) |
//!
//! Values come from a seeded [`Machine`] model advanced by `step` of simulated time per
//! update. Updates run on a timer, or only when [`RunningOpcUaSim::step`] is called (the
//! deterministic mode tests count on). Security: a `None` endpoint and/or Basic256Sha256
//! `Sign` and `SignAndEncrypt` endpoints, with a self-signed certificate created in `pki_dir`;
//! the simulator trusts every client certificate, which only a simulator may do. It grants a
//! sampling interval of 0 (every change is reported, none sampled away).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opcua::crypto::{CertificateStore, SecurityPolicy, X509Data};
use opcua::nodes::{NodeType, ObjectBuilder, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle, ServerUserToken};
use opcua::types::{
    DataTypeId, DataValue, DateTime, EUInformation, ExtensionObject, LocalizedText,
    MessageSecurityMode, NodeId, ObjectId, ObjectTypeId, VariableTypeId, Variant,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::machines::{Machine, MachineKind};

/// The namespace of the simulated machines.
pub const NAMESPACE_URI: &str = "urn:demolab:sim:machines";
/// The user token id of the configured user.
const USER_TOKEN_ID: &str = "demolab-user";
const X509_USER_TOKEN_ID: &str = "demolab-x509-user";

/// What to serve.
#[derive(Debug, Clone)]
pub struct OpcUaSimConfig {
    /// The machine's name: its folder under `Machines` and the prefix of its node ids.
    pub name: String,
    /// Which model drives the values.
    pub kind: MachineKind,
    /// The model's seed.
    pub seed: u64,
    /// Address to listen on; port 0 picks a free one ([`RunningOpcUaSim::endpoint_url`] tells).
    pub listen: String,
    /// Offer the `None` security endpoint.
    pub plain: bool,
    /// Offer Basic256Sha256 `Sign` and `SignAndEncrypt` endpoints.
    pub secure: bool,
    /// Accept anonymous sessions.
    pub anonymous: bool,
    /// Accept this user name and password.
    pub user: Option<(String, String)>,
    /// Accept the holder of this user certificate (DER or PEM) under this user name: an X.509
    /// identity token, signed with the certificate's private key.
    pub x509_user: Option<(String, PathBuf)>,
    /// Where the server's certificate and key live (created on first start) and where client
    /// certificates are recorded.
    pub pki_dir: PathBuf,
    /// Simulated time per update.
    pub step: Duration,
    /// Wall time between updates; `None` updates only on [`RunningOpcUaSim::step`].
    pub update_interval: Option<Duration>,
    /// The counter's value before the first update (it reads `counter_start` until then).
    pub counter_start: u64,
    /// The address clients are told to connect to (a proxy or NAT in front of the server);
    /// default: the one it listens on. Clients follow the endpoints a server advertises.
    pub advertise: Option<std::net::SocketAddr>,
    /// How far the machine's clock is off, ms (negative: behind). Every value is stamped with
    /// it, as a PLC whose clock has drifted stamps its own: a client that dates values by their
    /// source timestamp shows it, one that dates them on receipt does not.
    pub clock_offset_ms: i64,
}

impl OpcUaSimConfig {
    /// A CNC mill named `name`, anonymous over `None`, updating every second.
    pub fn new(name: &str, pki_dir: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            kind: MachineKind::CncMill,
            seed: 1,
            listen: "127.0.0.1:0".to_owned(),
            plain: true,
            secure: false,
            anonymous: true,
            user: None,
            x509_user: None,
            pki_dir,
            step: Duration::from_secs(1),
            update_interval: Some(Duration::from_secs(1)),
            counter_start: 0,
            advertise: None,
            clock_offset_ms: 0,
        }
    }
}

/// Why the simulator did not start.
#[derive(Debug, thiserror::Error)]
pub enum OpcUaSimError {
    /// The listen address could not be bound.
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// What was asked for.
        listen: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Neither endpoint kind, or no way to log in.
    #[error("opcua simulator: {0}")]
    Config(&'static str),
    /// The server library refused the configuration.
    #[error("opcua server: {0}")]
    Server(String),
    /// A user certificate could not be made or read.
    #[error("opcua user certificate: {0}")]
    UserCertificate(String),
}

/// A user certificate and its private key for an X.509 identity, made in `dir` (as
/// `<user>.der` and `<user>.pem`) unless both are there already. Returns their paths.
pub fn user_certificate(dir: &Path, user: &str) -> Result<(PathBuf, PathBuf), OpcUaSimError> {
    let certificate = dir.join(format!("{user}.der"));
    let key = dir.join(format!("{user}.pem"));
    if certificate.is_file() && key.is_file() {
        return Ok((certificate, key));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| OpcUaSimError::UserCertificate(format!("{}: {e}", dir.display())))?;
    let mut request = X509Data {
        key_size: 2048,
        common_name: user.to_owned(),
        organization: "Demolab".to_owned(),
        organizational_unit: "OPC UA users".to_owned(),
        country: "DK".to_owned(),
        state: String::new(),
        // The type of this field is not exported; its `Default` is the empty list.
        alt_host_names: Default::default(),
        certificate_duration_days: 365,
    };
    request
        .alt_host_names
        .add_uri(&format!("urn:demolab:opcua-user:{user}"));
    CertificateStore::create_certificate_and_key(&request, true, &certificate, &key)
        .map_err(OpcUaSimError::UserCertificate)?;
    Ok((certificate, key))
}

/// The machine model and the node ids its values go to.
#[derive(Debug)]
struct Model {
    machine: Box<dyn Machine>,
    step: Duration,
    counter: u64,
    counter_node: NodeId,
    metric_nodes: Vec<NodeId>,
    clock_offset_ms: i64,
    /// The source timestamp of the values now served, Unix ms.
    stamped_ms: u64,
}

impl Model {
    fn values(&self) -> Vec<(NodeId, f64)> {
        let mut out: Vec<(NodeId, f64)> = self
            .metric_nodes
            .iter()
            .cloned()
            .zip(
                self.machine
                    .values()
                    .into_iter()
                    .map(|(_, _, v)| f64::from(v)),
            )
            .collect();
        out.push((self.counter_node.clone(), self.counter as f64));
        out
    }
}

/// A running simulator.
pub struct RunningOpcUaSim {
    endpoint_url: String,
    local_addr: std::net::SocketAddr,
    namespace: u16,
    name: String,
    handle: ServerHandle,
    manager: Arc<SimpleNodeManager>,
    model: Arc<Mutex<Model>>,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningOpcUaSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The server library's handles have no Debug.
        f.debug_struct("RunningOpcUaSim")
            .field("endpoint_url", &self.endpoint_url)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RunningOpcUaSim {
    /// `opc.tcp://host:port/` with the real port.
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint_url
    }

    /// The index of [`NAMESPACE_URI`] on this server.
    pub fn namespace(&self) -> u16 {
        self.namespace
    }

    /// The node id string (`ns=2;s=…`) of a metric, `Counter`, or an identification entry
    /// (`Identification.Model`).
    pub fn node_id(&self, leaf: &str) -> String {
        if leaf.starts_with("Identification.") {
            format!("ns={};s={}.{leaf}", self.namespace, self.name)
        } else {
            format!("ns={};s={}.Monitoring.{leaf}", self.namespace, self.name)
        }
    }

    /// The address the server listens on (differs from the endpoint's with `advertise`).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// One update now: the model steps, the counter counts, subscribers are notified. Returns
    /// the counter's new value.
    pub fn step(&self) -> u64 {
        update(&self.model, &self.manager, &self.handle)
    }

    /// The source timestamp of the values now served, Unix ms (by the machine's clock).
    pub fn stamped_unix_ms(&self) -> u64 {
        self.model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stamped_ms
    }

    /// The counter's current value.
    pub fn counter(&self) -> u64 {
        self.model
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counter
    }

    /// Stops serving and waits until the listening socket is closed.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.handle.cancel();
        let _ = self.server.await;
    }
}

fn update(model: &Mutex<Model>, manager: &SimpleNodeManager, handle: &ServerHandle) -> u64 {
    let (counter, values, now) = {
        let mut model = model.lock().unwrap_or_else(PoisonError::into_inner);
        let step = model.step;
        model.machine.step(step);
        model.counter += 1;
        let now = machine_clock(model.clock_offset_ms);
        model.stamped_ms = unix_ms(&now);
        (model.counter, model.values(), now)
    };
    let updates: Vec<(NodeId, DataValue)> = values
        .into_iter()
        .map(|(node, v)| (node, DataValue::new_at(v, now)))
        .collect();
    let result = manager.set_values(
        handle.subscriptions(),
        updates
            .iter()
            .map(|(node, value)| (node, None, value.clone())),
    );
    if let Err(status) = result {
        tracing::warn!(%status, "opcua simulator could not set its values");
    }
    counter
}

/// Now by a machine clock that is `offset_ms` off.
fn machine_clock(offset_ms: i64) -> DateTime {
    DateTime::from(
        DateTime::now()
            .ticks()
            .saturating_add(offset_ms.saturating_mul(10_000)),
    )
}

/// An OPC UA time as Unix ms (0 before 1970).
fn unix_ms(time: &DateTime) -> u64 {
    // 100 ns ticks between 1601-01-01 (the OPC UA epoch) and 1970-01-01.
    const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;
    u64::try_from(time.ticks().saturating_sub(UNIX_EPOCH_TICKS) / 10_000).unwrap_or(0)
}

/// Binds, builds the address space and serves until [`RunningOpcUaSim::stop`] or `cancel`.
pub async fn start_opcua_sim(
    config: OpcUaSimConfig,
    cancel: CancellationToken,
) -> Result<RunningOpcUaSim, OpcUaSimError> {
    if !config.plain && !config.secure {
        return Err(OpcUaSimError::Config(
            "offer at least one of plain and secure",
        ));
    }
    if !config.anonymous && config.user.is_none() && config.x509_user.is_none() {
        return Err(OpcUaSimError::Config("allow anonymous or configure a user"));
    }
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| OpcUaSimError::Bind {
                listen: config.listen.clone(),
                source,
            })?;
    let addr = listener
        .local_addr()
        .map_err(|source| OpcUaSimError::Bind {
            listen: config.listen.clone(),
            source,
        })?;
    let advertised = config.advertise.unwrap_or(addr);
    let host = advertised.ip().to_string();
    let endpoint_url = format!("opc.tcp://{host}:{}/", advertised.port());

    let mut tokens: Vec<&str> = Vec::new();
    if config.anonymous {
        tokens.push(ANONYMOUS_USER_TOKEN_ID);
    }
    if config.user.is_some() {
        tokens.push(USER_TOKEN_ID);
    }
    if config.x509_user.is_some() {
        tokens.push(X509_USER_TOKEN_ID);
    }
    let mut builder = ServerBuilder::new()
        .application_name(format!("Demolab simulated {}", config.name))
        .application_uri(format!("urn:demolab-sim:opcua:{}", config.name))
        .product_uri("urn:demolab-sim")
        .create_sample_keypair(true)
        .pki_dir(&config.pki_dir)
        // A simulator trusts every client; a real server would keep a trust list.
        .trust_client_certs(true)
        .host(host.clone())
        .port(advertised.port())
        .discovery_urls(vec![endpoint_url.clone()])
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: NAMESPACE_URI.to_owned(),
                ..Default::default()
            },
            "demolab-sim",
        ));
    if let Some((user, pass)) = &config.user {
        builder = builder.add_user_token(USER_TOKEN_ID, ServerUserToken::user_pass(user, pass));
    }
    if let Some((user, certificate)) = &config.x509_user {
        if !certificate.is_file() {
            return Err(OpcUaSimError::UserCertificate(format!(
                "{} is not a file",
                certificate.display()
            )));
        }
        builder = builder.add_user_token(
            X509_USER_TOKEN_ID,
            ServerUserToken::x509(user.as_str(), certificate),
        );
    }
    if config.plain {
        builder = builder.add_endpoint(
            "none",
            (
                "/",
                SecurityPolicy::None,
                MessageSecurityMode::None,
                &tokens as &[&str],
            ),
        );
    }
    if config.secure {
        for (id, mode) in [
            ("basic256sha256_sign", MessageSecurityMode::Sign),
            (
                "basic256sha256_sign_encrypt",
                MessageSecurityMode::SignAndEncrypt,
            ),
        ] {
            builder = builder.add_endpoint(
                id,
                (
                    "/",
                    SecurityPolicy::Basic256Sha256,
                    mode,
                    &tokens as &[&str],
                ),
            );
        }
    }
    // Sampling interval 0 means "report every change" (exception-based): a counting test needs
    // it, and the library otherwise raises 0 to its minimum and samples.
    // Queues long enough that a burst of changes between two publishes is delivered whole.
    let limits = &mut builder.limits_mut().subscriptions;
    limits.min_sampling_interval_ms = 0.0;
    limits.max_monitored_item_queue_size = 1000;
    limits.max_queued_notifications = 10_000;
    let (server, handle) = builder.build().map_err(OpcUaSimError::Server)?;
    let manager = handle
        .node_managers()
        .get_of_type::<SimpleNodeManager>()
        .ok_or(OpcUaSimError::Config("the simple node manager is missing"))?;
    let namespace = handle
        .get_namespace_index(NAMESPACE_URI)
        .ok_or(OpcUaSimError::Config("the machine namespace is missing"))?;
    let machine = config.kind.build(config.seed);
    let model = build_address_space(&config, namespace, machine, &manager);
    let model = Arc::new(Mutex::new(model));

    let server_cancel = cancel.child_token();
    let task_handle = handle.clone();
    let task_model = model.clone();
    let task_manager = manager.clone();
    let task_cancel = server_cancel.clone();
    let interval = config.update_interval.filter(|d| !d.is_zero());
    let server = tokio::spawn(async move {
        let serve = server.run_with(listener);
        tokio::pin!(serve);
        let mut ticker = interval.map(tokio::time::interval);
        loop {
            tokio::select! {
                () = task_cancel.cancelled() => {
                    task_handle.cancel();
                    // Let the server close its sockets.
                    let _ = (&mut serve).await;
                    return;
                }
                result = &mut serve => {
                    if let Err(err) = result {
                        tracing::warn!(%err, "opcua simulator stopped");
                    }
                    return;
                }
                () = async {
                    match ticker.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending().await,
                    }
                } => {
                    update(&task_model, &task_manager, &task_handle);
                }
            }
        }
    });
    Ok(RunningOpcUaSim {
        endpoint_url,
        local_addr: addr,
        namespace,
        name: config.name.clone(),
        handle,
        manager,
        model,
        cancel: server_cancel,
        server,
    })
}

/// `Objects/Machines/<name>` with `Identification` and `Monitoring`, as OPC 40501 lays out a
/// machine tool; returns the model wired to its variables.
fn build_address_space(
    config: &OpcUaSimConfig,
    ns: u16,
    machine: Box<dyn Machine>,
    manager: &SimpleNodeManager,
) -> Model {
    let name = &config.name;
    let id = |leaf: &str| NodeId::new(ns, leaf.to_owned());
    let mut space = manager.address_space().write();
    let machines = id("Machines");
    space.add_folder(
        &machines,
        "Machines",
        "Machines",
        &ObjectId::ObjectsFolder.into(),
    );
    let root = id(name);
    ObjectBuilder::new(&root, name.as_str(), name.as_str())
        .organized_by(machines.clone())
        .has_type_definition(ObjectTypeId::BaseObjectType)
        .insert(&mut *space);
    let identification = id(&format!("{name}.Identification"));
    ObjectBuilder::new(&identification, "Identification", "Identification")
        .component_of(root.clone())
        .has_type_definition(ObjectTypeId::BaseObjectType)
        .insert(&mut *space);
    let serial = format!("SIM-{:08X}", config.seed);
    for (browse, value) in [
        ("Manufacturer", "Demolab Simulators"),
        ("Model", config.kind.to_string().as_str()),
        ("SerialNumber", serial.as_str()),
    ] {
        VariableBuilder::new(
            &id(&format!("{name}.Identification.{browse}")),
            browse,
            browse,
        )
        .data_type(DataTypeId::String)
        .value(value)
        .property_of(identification.clone())
        .has_type_definition(VariableTypeId::PropertyType)
        .insert(&mut *space);
    }
    let monitoring = id(&format!("{name}.Monitoring"));
    ObjectBuilder::new(&monitoring, "Monitoring", "Monitoring")
        .component_of(root.clone())
        .has_type_definition(ObjectTypeId::BaseObjectType)
        .insert(&mut *space);
    let mut metric_nodes = Vec::new();
    for (metric, unit, value) in machine.values() {
        let node = id(&format!("{name}.Monitoring.{metric}"));
        VariableBuilder::new(&node, metric, metric)
            .data_type(DataTypeId::Double)
            .value(Variant::Double(f64::from(value)))
            .component_of(monitoring.clone())
            .has_type_definition(VariableTypeId::AnalogItemType)
            .insert(&mut *space);
        let units = EUInformation {
            // No UNECE code table here: -1 says "not given", the symbol is in the display name.
            namespace_uri: "http://www.opcfoundation.org/UA/units/un/cefact".into(),
            unit_id: -1,
            display_name: LocalizedText::from(unit.symbol()),
            description: LocalizedText::from(unit.symbol()),
        };
        VariableBuilder::new(
            &id(&format!("{name}.Monitoring.{metric}.EngineeringUnits")),
            "EngineeringUnits",
            "EngineeringUnits",
        )
        .data_type(DataTypeId::EUInformation)
        .value(ExtensionObject::from_message(units))
        .property_of(node.clone())
        .has_type_definition(VariableTypeId::PropertyType)
        .insert(&mut *space);
        metric_nodes.push(node);
    }
    let counter_node = id(&format!("{name}.Monitoring.Counter"));
    VariableBuilder::new(&counter_node, "Counter", "Counter")
        .data_type(DataTypeId::Double)
        .value(Variant::Double(config.counter_start as f64))
        .component_of(monitoring)
        .has_type_definition(VariableTypeId::BaseDataVariableType)
        .insert(&mut *space);
    let mut model = Model {
        machine,
        step: config.step,
        counter: config.counter_start,
        counter_node,
        metric_nodes,
        clock_offset_ms: config.clock_offset_ms,
        stamped_ms: 0,
    };
    // The builder stamps initial values with the server's clock; the machine's is the one that
    // counts, or its first update could look older than the initial value.
    let now = machine_clock(model.clock_offset_ms);
    model.stamped_ms = unix_ms(&now);
    for (node, value) in model.values() {
        if let Some(NodeType::Variable(variable)) = space.find_mut(&node) {
            variable.set_data_value(DataValue::new_at(value, now));
        }
    }
    drop(space);
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_reports_its_real_port_and_counts_on_demand() {
        let dir = tempfile_dir();
        let mut config = OpcUaSimConfig::new("cnc-7", dir.clone());
        config.update_interval = None;
        config.counter_start = 41;
        let sim = start_opcua_sim(config, CancellationToken::new())
            .await
            .expect("starts");
        assert!(
            !sim.endpoint_url().ends_with(":0/"),
            "{}",
            sim.endpoint_url()
        );
        assert_eq!(
            sim.node_id("Counter"),
            format!("ns={};s=cnc-7.Monitoring.Counter", sim.namespace())
        );
        assert_eq!(sim.counter(), 41);
        assert_eq!(sim.step(), 42);
        assert_eq!(sim.counter(), 42);
        sim.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn it_refuses_a_server_nobody_can_log_in_to() {
        let mut config = OpcUaSimConfig::new("cnc-7", tempfile_dir());
        config.anonymous = false;
        assert!(matches!(
            start_opcua_sim(config, CancellationToken::new()).await,
            Err(OpcUaSimError::Config(_))
        ));
    }

    /// A fresh directory under the system's temp dir (no tempfile dependency here).
    fn tempfile_dir() -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("demolab-opcua-sim-{}-{n}", std::process::id()))
    }
}
