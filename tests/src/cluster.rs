//! A three-node RabbitMQ cluster with its MQTT plugin, started as real processes on loopback for
//! the broker cluster tests (`tests/tests/broker_cluster.rs`), with one node killable by SIGKILL.
//!
//! Why RabbitMQ and these settings: `docs/architecture.md` ("Broker cluster"); the production
//! configuration is `deploy/cluster/`. Every node gets ports picked by binding port 0 and letting
//! go (RabbitMQ cannot report a port it chose), its own directory under one temp dir, and the
//! cluster its own `epmd` on a free port, so tests never meet each other or a system RabbitMQ.
//!
//! `DEMOLAB_RABBITMQ` names the `rabbitmq-server` script; use `/usr/lib/rabbitmq/bin/rabbitmq-server`
//! (Debian's `/usr/sbin/rabbitmq-server` switches to the `rabbitmq` user, which cannot read the
//! temp dirs). Without it a test is skipped with a message, except under `CI`, where it fails.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use demolab_tests::cluster::{ClusterUser, RabbitCluster, rabbitmq_binary};
//! let Some(binary) = rabbitmq_binary("demo")? else { return Ok(()) };
//! let users = [ClusterUser::hub("hub", "hub-pw"), ClusterUser::gateway("gw-a", "gw-pw", "lab-a")];
//! let mut cluster = RabbitCluster::start(&binary, &users).await?;
//! let second = cluster.mqtt_addr(1);
//! cluster.kill(0)?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::ChildProcess;
use hub::broker::{BrokerConfig, EmbeddedBroker};

/// The environment variable naming the `rabbitmq-server` script.
pub const RABBITMQ_ENV: &str = "DEMOLAB_RABBITMQ";

/// How many nodes the cluster has: the smallest that keeps a quorum (and so the sessions held
/// in quorum queues) when one node dies.
pub const NODES: usize = 3;

/// Three Erlang VMs booting one after the other on a shared two-core box take 20–60 s.
const START_DEADLINE: Duration = Duration::from_secs(180);

/// The probe user the readiness check publishes with; tests never use it.
const PROBE_USER: &str = "demolab-probe";
const PROBE_PASSWORD: &str = "probe-pw";

/// The `rabbitmq-server` script from [`RABBITMQ_ENV`]; `None` (skip, with a message) outside CI,
/// an error under `CI`: a cluster test that silently skipped would prove nothing.
pub fn rabbitmq_binary(test: &str) -> anyhow::Result<Option<PathBuf>> {
    match std::env::var_os(RABBITMQ_ENV).filter(|v| !v.is_empty()) {
        Some(path) => Ok(Some(PathBuf::from(path))),
        None if std::env::var_os("CI").is_some() => bail!(
            "CI is set but {RABBITMQ_ENV} is not: the broker cluster test must run in CI \
             (set it to /usr/lib/rabbitmq/bin/rabbitmq-server)"
        ),
        None => {
            eprintln!(
                "SKIPPED {test}: set {RABBITMQ_ENV}=/usr/lib/rabbitmq/bin/rabbitmq-server \
                 (Debian package rabbitmq-server)"
            );
            Ok(None)
        }
    }
}

/// An MQTT login of the cluster with its topic grants, written as RabbitMQ topic permissions:
/// regular expressions on the AMQP routing key, which is the MQTT topic with `/` turned into
/// `.`; with `mqtt.sparkplug = true` the namespace `spBv1.0` becomes `spBv1___0`, so
/// `spBv1.0/lab-a/NDATA/gw` is `spBv1___0.lab-a.NDATA.gw`.
#[derive(Debug, Clone)]
pub struct ClusterUser {
    /// User name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Routing keys the user may publish to (its Will included).
    pub publish: String,
    /// Routing keys the user may subscribe to.
    pub subscribe: String,
}

impl ClusterUser {
    /// The Sparkplug primary host: reads every group, publishes STATE and commands.
    pub fn hub(name: &str, password: &str) -> Self {
        Self {
            name: name.into(),
            password: password.into(),
            publish: r"^spBv1___0\.".into(),
            subscribe: r"^spBv1___0\.".into(),
        }
    }

    /// A lab's gateway: publishes only under its own group, reads its group (commands) and the
    /// primary host's STATE.
    pub fn gateway(name: &str, password: &str, lab: &str) -> Self {
        let lab = lab.replace('.', r"\.");
        Self {
            name: name.into(),
            password: password.into(),
            publish: format!(r"^spBv1___0\.{lab}\."),
            subscribe: format!(r"^spBv1___0\.({lab}|STATE)\."),
        }
    }

    /// RabbitMQ's `rabbit_password_hashing_sha256` form: base64 of a 4-byte salt followed by
    /// SHA-256(salt ‖ password). A fixed salt: these are throw-away test credentials.
    fn password_hash(&self) -> String {
        use base64ct::Encoding;
        use sha2::Digest;
        let salt = *b"dmlb";
        let digest = sha2::Sha256::new()
            .chain_update(salt)
            .chain_update(self.password.as_bytes())
            .finalize();
        let mut salted = salt.to_vec();
        salted.extend_from_slice(&digest);
        base64ct::Base64::encode_string(&salted)
    }
}

/// The definitions file every node imports at boot: the users, their queue permissions (what
/// the MQTT plugin needs for a session: its `mqtt-subscription-*` queue and `amq.topic`) and
/// their topic permissions.
fn definitions(users: &[ClusterUser]) -> serde_json::Value {
    let resources = r"^(amq\.topic|mqtt-subscription-.*)$";
    serde_json::json!({
        "vhosts": [{ "name": "/" }],
        "users": users.iter().map(|u| serde_json::json!({
            "name": u.name,
            "password_hash": u.password_hash(),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        })).collect::<Vec<_>>(),
        "permissions": users.iter().map(|u| serde_json::json!({
            "user": u.name, "vhost": "/",
            "configure": "^mqtt-subscription-", "write": resources, "read": resources,
        })).collect::<Vec<_>>(),
        "topic_permissions": users.iter().map(|u| serde_json::json!({
            "user": u.name, "vhost": "/", "exchange": "amq.topic",
            "write": u.publish, "read": u.subscribe,
        })).collect::<Vec<_>>(),
    })
}

/// One node's `rabbitmq.conf`; the settings are explained in `deploy/cluster/rabbitmq.conf`.
fn node_conf(mqtt: SocketAddr, node_names: &[String], definitions: &Path) -> String {
    let mut conf = format!(
        "listeners.tcp = none\n\
         mqtt.listeners.tcp.default = {mqtt}\n\
         mqtt.allow_anonymous = false\n\
         mqtt.durable_queue_type = quorum\n\
         mqtt.sparkplug = true\n\
         mqtt.prefetch = 100\n\
         load_definitions = {}\n\
         cluster_formation.peer_discovery_backend = classic_config\n\
         log.console = true\n\
         log.console.level = info\n\
         log.file = false\n",
        definitions.display()
    );
    for (i, name) in node_names.iter().enumerate() {
        conf.push_str(&format!(
            "cluster_formation.classic_config.nodes.{} = {name}\n",
            i + 1
        ));
    }
    conf
}

/// A free loopback port, released for the process it is handed to (the window for another
/// process to take it is tiny).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[derive(Debug)]
struct ClusterNode {
    name: String,
    mqtt: SocketAddr,
    log: PathBuf,
    process: Option<ChildProcess>,
}

/// A running three-node cluster; every process is killed when it is dropped.
#[derive(Debug)]
pub struct RabbitCluster {
    nodes: Vec<ClusterNode>,
    // Declared after the nodes: dropped (killed) after them.
    _epmd: ChildProcess,
    _dir: tempfile::TempDir,
}

impl RabbitCluster {
    /// Starts [`NODES`] nodes with `users` (plus an internal probe user) and waits until every
    /// node routes MQTT messages to the others.
    pub async fn start(binary: &Path, users: &[ClusterUser]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let epmd_port = free_port()?;
        // Its own epmd, in the foreground: Erlang would otherwise start a shared daemon on
        // 4369 that outlives the test.
        let epmd = ChildProcess(
            Command::new("epmd")
                .arg("-port")
                .arg(epmd_port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting epmd (Debian package erlang-base)")?,
        );
        let mut all_users = users.to_vec();
        all_users.push(ClusterUser {
            name: PROBE_USER.into(),
            password: PROBE_PASSWORD.into(),
            publish: r"^demolab\.probe\.".into(),
            subscribe: r"^demolab\.probe\.".into(),
        });
        let definitions_path = dir.path().join("definitions.json");
        std::fs::write(
            &definitions_path,
            serde_json::to_vec_pretty(&definitions(&all_users))?,
        )?;
        let cookie = format!("DEMOLABCLUSTER{epmd_port}");
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let names: Vec<String> = (1..=NODES)
            .map(|i| format!("demolab{i}@localhost"))
            .collect();
        let mut nodes = Vec::with_capacity(NODES);
        for name in &names {
            let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let node_dir = dir.path().join(name.split('@').next().unwrap_or("node"));
            let home = node_dir.join("home");
            std::fs::create_dir_all(&home)?;
            write_cookie(&home, &cookie)?;
            let conf = node_dir.join("rabbitmq.conf");
            std::fs::write(&conf, node_conf(mqtt, &names, &definitions_path))?;
            let plugins = node_dir.join("enabled_plugins");
            std::fs::write(&plugins, "[rabbitmq_mqtt].\n")?;
            let log = node_dir.join("console.log");
            let process = Command::new(binary)
                .env("HOME", &home)
                .env("ERL_EPMD_PORT", epmd_port.to_string())
                .env("RABBITMQ_NODENAME", name)
                .env("RABBITMQ_DIST_PORT", free_port()?.to_string())
                .env("RABBITMQ_MNESIA_BASE", node_dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", node_dir.join("log"))
                .env("RABBITMQ_CONFIG_FILE", &conf)
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
                .env("RABBITMQ_PID_FILE", node_dir.join("pid"))
                // Neither of these exists: keep /etc/rabbitmq out of the test.
                .env(
                    "RABBITMQ_ADVANCED_CONFIG_FILE",
                    node_dir.join("advanced.config"),
                )
                .env("RABBITMQ_CONF_ENV_FILE", node_dir.join("rabbitmq-env.conf"))
                // Makes the script exec the Erlang VM instead of waiting on it, so the child
                // is the node itself and SIGKILL is a real node loss.
                .env("RUNNING_UNDER_SYSTEMD", "true")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log)?)
                .stderr(std::fs::File::create(node_dir.join("stderr.log"))?)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let mut node = ClusterNode {
                name: name.clone(),
                mqtt,
                log,
                process: Some(ChildProcess(process)),
            };
            // One node at a time: nodes booting together with `classic_config` raced each
            // other here (one hung at boot, every MQTT connection to the others crashed while
            // the client-id tracker waited for it). A booted node listens for MQTT last.
            if let Err(err) = node.wait_listening(deadline).await {
                nodes.push(node);
                return Err(err.context(logs(&nodes)));
            }
            nodes.push(node);
        }
        let mut cluster = Self {
            nodes,
            _epmd: epmd,
            _dir: dir,
        };
        if let Err(err) = cluster.wait_routing(deadline).await {
            return Err(err.context(cluster.logs()));
        }
        Ok(cluster)
    }

    /// The MQTT listener of node `node` (0-based).
    pub fn mqtt_addr(&self, node: usize) -> SocketAddr {
        self.nodes[node % NODES].mqtt
    }

    /// Every node's MQTT listener, in node order.
    pub fn mqtt_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.mqtt).collect()
    }

    /// Kills node `node` with SIGKILL: no clean shutdown, no hand-over.
    pub fn kill(&mut self, node: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[node % NODES];
        let Some(mut process) = node.process.take() else {
            bail!("{} is not running", node.name)
        };
        process.kill()?;
        process.wait()?;
        Ok(())
    }

    /// The last lines of every node's console log, for a failure message.
    pub fn logs(&self) -> String {
        logs(&self.nodes)
    }

    /// Ready means clustered: a message published on every node reaches a subscriber on the
    /// next one. A node that booted alone would accept connections but route nothing across.
    async fn wait_routing(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<()> {
        for to in 0..NODES {
            let from = (to + 1) % NODES;
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                for node in &mut self.nodes {
                    if let Some(process) = &mut node.process
                        && let Some(status) = process.try_wait()?
                    {
                        bail!("{} exited with {status}", node.name);
                    }
                }
                let outcome = tokio::time::timeout(
                    Duration::from_secs(5),
                    probe(self.nodes[from].mqtt, self.nodes[to].mqtt, to, attempt),
                )
                .await;
                match outcome {
                    Ok(Ok(())) => break,
                    _ if tokio::time::Instant::now() >= deadline => {
                        bail!(
                            "the cluster did not route node {from} -> node {to} within {START_DEADLINE:?}"
                        )
                    }
                    // Not booted, not clustered yet, or the MQTT plugin still electing its
                    // client-id tracker: try again.
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        Ok(())
    }
}

impl ClusterNode {
    /// Waits until the node accepts MQTT connections, failing if it exits or `deadline` passes.
    async fn wait_listening(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<()> {
        loop {
            if tokio::net::TcpStream::connect(self.mqtt).await.is_ok() {
                return Ok(());
            }
            if let Some(process) = &mut self.process
                && let Some(status) = process.try_wait()?
            {
                bail!("{} exited with {status}", self.name);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} did not listen within {START_DEADLINE:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The last lines of every node's console log, for a failure message.
fn logs(nodes: &[ClusterNode]) -> String {
    let mut out = String::new();
    for node in nodes {
        let text = std::fs::read(&node.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("--- {} (last 40 lines)\n", node.name));
        for line in &lines[lines.len().saturating_sub(40)..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn write_cookie(home: &Path, cookie: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = home.join(".erlang.cookie");
    std::fs::write(&path, cookie)?;
    // Erlang refuses a cookie file others can read.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))?;
    Ok(())
}

fn probe_options(addr: SocketAddr, client_id: String) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_credentials(PROBE_USER, PROBE_PASSWORD);
    options.set_keep_alive(Duration::from_secs(5));
    options
}

/// Subscribes on `to`, publishes on `from`, and waits for the message.
async fn probe(from: SocketAddr, to: SocketAddr, node: usize, attempt: u32) -> anyhow::Result<()> {
    let topic = format!("demolab/probe/{node}");
    let (subscriber, mut sub_events) =
        AsyncClient::new(probe_options(to, format!("probe-sub-{node}-{attempt}")), 8);
    loop {
        match sub_events.poll().await? {
            Event::Incoming(Packet::ConnAck(_)) => {
                subscriber.try_subscribe(&topic, QoS::AtLeastOnce)?;
            }
            Event::Incoming(Packet::SubAck(_)) => break,
            _ => {}
        }
    }
    let (publisher, mut pub_events) = AsyncClient::new(
        probe_options(from, format!("probe-pub-{node}-{attempt}")),
        8,
    );
    let publishing = async {
        loop {
            match pub_events.poll().await? {
                Event::Incoming(Packet::ConnAck(_)) => {
                    publisher.try_publish(&topic, QoS::AtLeastOnce, false, "probe")?;
                }
                Event::Incoming(Packet::PubAck(_)) => {
                    // Keep the connection polled until the subscriber has the message.
                    std::future::pending::<()>().await;
                }
                _ => {}
            }
        }
    };
    let receiving = async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = sub_events.poll().await?
                && p.topic == topic
            {
                return anyhow::Ok(());
            }
        }
    };
    let outcome = tokio::select! {
        received = receiving => received,
        failed = publishing => failed,
    };
    let _ = publisher.try_disconnect();
    let _ = subscriber.try_disconnect();
    outcome
}

/// One lab: its own broker for its nodes (as a lab runs it), its gateway on the cluster.
#[derive(Debug)]
pub struct Lab {
    /// The lab id.
    pub name: &'static str,
    /// Its one machine.
    pub machine: &'static str,
    /// The machine's node id.
    pub node: u64,
    /// The lab's own broker, where its nodes publish.
    pub broker: EmbeddedBroker,
}

impl Lab {
    /// Starts the lab's broker.
    pub async fn start(
        name: &'static str,
        machine: &'static str,
        node: u64,
    ) -> anyhow::Result<Self> {
        let broker = EmbeddedBroker::start(BrokerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..BrokerConfig::default()
        })
        .await?;
        Ok(Self {
            name,
            machine,
            node,
            broker,
        })
    }

    /// Starts its machine's node: `samples` samples, one every 2 ms, to the lab's broker.
    pub fn stream(
        &self,
        seed: u64,
        samples: u32,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<
        tokio::task::JoinHandle<Result<simulators::node::NodeReport, simulators::node::SimError>>,
    > {
        let mut node = crate::burst_node(
            self.broker.local_addr().port(),
            self.node,
            self.machine,
            seed,
            samples,
        )?;
        node.tick_interval = Duration::from_millis(2);
        Ok(tokio::spawn(simulators::node::run_mqtt_node(
            node,
            cancel.clone(),
        )))
    }

    /// Starts its gateway on cluster node `first` (then the others), logged in as `user`,
    /// buffering under `dir`.
    pub async fn start_gateway(
        &self,
        cluster: &RabbitCluster,
        first: usize,
        user: &ClusterUser,
        dir: &Path,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<gateway::GatewayHandle> {
        let buffer = dir.join(format!("buffer-{}", self.name));
        let config = gateway_on(cluster, first, self, user, &buffer)?;
        crate::start_gateway_with(config, cancel).await
    }

    /// The twin of its machine.
    pub fn key(&self) -> anyhow::Result<hub::twin::TwinKey> {
        Ok(hub::twin::TwinKey {
            lab: self.name.parse()?,
            machine: self.machine.parse()?,
        })
    }
}

/// The gateway of `lab` on cluster node `first` (then the others), logged in as `user`.
pub fn gateway_on(
    cluster: &RabbitCluster,
    first: usize,
    lab: &Lab,
    user: &ClusterUser,
    buffer: &std::path::Path,
) -> anyhow::Result<gateway::GatewayConfig> {
    let endpoint = |addr: SocketAddr| gateway::MqttEndpoint {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let mut config = crate::gateway_config(
        lab.broker.local_addr().port(),
        lab.name,
        user.name.as_str(),
        buffer,
    )?;
    config.uplink = endpoint(cluster.mqtt_addr(first));
    config.uplink_failover = (1..NODES)
        .map(|i| endpoint(cluster.mqtt_addr(first + i)))
        .collect();
    // RabbitMQ 3.10 keeps a clean session's QoS 1 subscription in a durable queue on its node:
    // while that node is down, the client id could not subscribe on any other.
    config.uplink_subscribe_qos = gateway::SubscribeQos::AtMostOnce;
    config.uplink_credentials = Some(gateway::MqttCredentials {
        username: user.name.clone(),
        password: user.password.clone(),
    });
    Ok(config)
}

/// A lab of a region as the hub replicas' config lists it.
#[derive(Debug, Clone)]
pub struct RegionLab {
    /// The lab id.
    pub lab: String,
    /// Its gateway (Sparkplug edge node) id.
    pub gateway: String,
    /// Its machines.
    pub machines: Vec<String>,
}

/// The `hub.toml` of replica `id` of region `region`: on the cluster (node 0 first, the others
/// as failover) as `user`, whose password is in the environment variable `password_env`, with
/// its own files in `data_dir` and the region's twins in the PostgreSQL at `postgres`.
#[allow(clippy::too_many_arguments)]
pub fn hub_replica_toml(
    id: &str,
    region: &str,
    slots: u32,
    listen: SocketAddr,
    data_dir: &Path,
    cluster: &RabbitCluster,
    user: &ClusterUser,
    password_env: &str,
    labs: &[RegionLab],
    postgres: &str,
) -> String {
    let mut text = format!(
        "[hub]\nlisten = \"{listen}\"\ndata_dir = \"{}\"\njson_topics = false\n\
         [broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {}\n\
         username = \"{}\"\npassword_env = \"{password_env}\"\n",
        data_dir.display(),
        cluster.mqtt_addr(0).port(),
        user.name
    );
    for node in 1..NODES {
        text.push_str(&format!(
            "[[broker.failover]]\nhost = \"127.0.0.1\"\nport = {}\n",
            cluster.mqtt_addr(node).port()
        ));
    }
    for lab in labs {
        text.push_str(&format!(
            "[[labs]]\nid = \"{}\"\ngateways = [\"{}\"]\n",
            lab.lab, lab.gateway
        ));
        for machine in &lab.machines {
            text.push_str(&format!("[[labs.machines]]\nid = \"{machine}\"\n"));
        }
    }
    text.push_str(&format!(
        "[auth]\npublic_labs = [\"*\"]\n\
         [replica]\nid = \"{id}\"\nregion = \"{region}\"\npostgres = \"{postgres}\"\nslots = {slots}\n"
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_hash_is_salt_then_sha256_in_base64() {
        use base64ct::Encoding;
        let user = ClusterUser::hub("hub", "secret");
        let bytes = base64ct::Base64::decode_vec(&user.password_hash()).expect("base64");
        assert_eq!(bytes.len(), 4 + 32);
        assert_eq!(&bytes[..4], b"dmlb");
    }

    #[test]
    fn a_gateway_may_publish_only_under_its_lab() {
        let gw = ClusterUser::gateway("gw-a", "pw", "lab-a");
        assert_eq!(gw.publish, r"^spBv1___0\.lab-a\.");
        assert_eq!(gw.subscribe, r"^spBv1___0\.(lab-a|STATE)\.");
    }

    #[test]
    fn every_node_lists_every_node() {
        let names = vec!["a@localhost".to_string(), "b@localhost".to_string()];
        let conf = node_conf(
            SocketAddr::from(([127, 0, 0, 1], 1883)),
            &names,
            Path::new("/d.json"),
        );
        assert!(conf.contains("cluster_formation.classic_config.nodes.2 = b@localhost"));
        assert!(conf.contains("mqtt.durable_queue_type = quorum"));
    }
}
