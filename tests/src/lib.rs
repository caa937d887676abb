//! Shared helpers of the end-to-end tests in `tests/tests/`: start a hub on ephemeral ports,
//! wait for conditions with deadlines, speak just enough HTTP to read the API.
//!
//! The tests run every part through real sockets: the embedded MQTT broker, the gateway's MQTT
//! sessions, the hub's HTTP server and WebSocket stream.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use hub::broker::BrokerConfig;
use hub::{BrokerSetting, Hub, HubConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A hub with an embedded broker on ephemeral ports and its data in `data_dir`, ready.
pub async fn start_hub(data_dir: &std::path::Path) -> anyhow::Result<Hub> {
    let config = HubConfig {
        http_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        broker: BrokerSetting::Embedded(BrokerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..BrokerConfig::default()
        }),
        data_dir: data_dir.to_owned(),
        ..HubConfig::default()
    };
    let hub = Hub::start(config).await.context("starting the hub")?;
    within(
        Duration::from_secs(10),
        "the hub to become ready",
        hub.ready(),
    )
    .await?;
    Ok(hub)
}

/// Awaits `future`, failing with a message naming `what` after `deadline`.
pub async fn within<T>(
    deadline: Duration,
    what: &str,
    future: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(deadline, future)
        .await
        .with_context(|| format!("timed out after {deadline:?} waiting for {what}"))
}

/// Polls `condition` every 10 ms until it holds, failing after `deadline`.
pub async fn wait_until(
    deadline: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    within(deadline, what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A minimal HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8(response).context("response is not UTF-8")?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no header end in {text:?}")
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk size line")?;
        let size = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("chunk shorter than announced")?);
        body = rest.get(size + 2..).context("chunk terminator")?;
    }
}

/// GETs `path` and parses the body as JSON, failing unless the status is 200.
pub async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http_get(addr, path).await?;
    if status != 200 {
        bail!("GET {path} answered {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path} body is not JSON: {body}"))
}

/// A gateway for `lab` on the hub's broker at `mqtt_port`, ready (subscribed and born).
pub async fn start_gateway(
    mqtt_port: u16,
    lab: &str,
    gateway: &str,
    buffer_dir: &std::path::Path,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<gateway::GatewayHandle> {
    let config = gateway_config(mqtt_port, lab, gateway, buffer_dir)?;
    start_gateway_with(config, cancel).await
}

/// The configuration [`start_gateway`] uses, for tests that change it first.
pub fn gateway_config(
    mqtt_port: u16,
    lab: &str,
    gateway: &str,
    buffer_dir: &std::path::Path,
) -> anyhow::Result<gateway::GatewayConfig> {
    let broker = gateway::MqttEndpoint {
        host: "127.0.0.1".into(),
        port: mqtt_port,
    };
    Ok(gateway::GatewayConfig::new(
        lab.parse()?,
        gateway.parse()?,
        broker,
        buffer_dir.to_owned(),
    ))
}

/// Starts a gateway from `config` and waits until it is ready.
pub async fn start_gateway_with(
    config: gateway::GatewayConfig,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<gateway::GatewayHandle> {
    let gateway = config.gateway.clone();
    let handle = gateway::start(config, cancel.clone())?;
    within(
        Duration::from_secs(10),
        &format!("gateway {gateway} to be ready"),
        handle.ready(),
    )
    .await?;
    Ok(handle)
}

/// A simulated CNC node that sends `samples` samples as fast as the link allows, then stops.
pub fn burst_node(
    mqtt_port: u16,
    node: u64,
    machine: &str,
    seed: u64,
    samples: u32,
) -> anyhow::Result<simulators::node::MqttNodeConfig> {
    Ok(simulators::node::MqttNodeConfig {
        node: protocol::NodeId(node),
        machine: machine.parse()?,
        boot: simulators::node::fresh_boot_id(protocol::NodeId(node)),
        seed,
        sample_period: Duration::from_secs(1),
        tick_interval: Duration::ZERO,
        max_samples: Some(samples),
        broker_host: "127.0.0.1".into(),
        broker_port: mqtt_port,
    })
}

/// A TCP relay to `target` whose link can be cut and restored, to take a network path away
/// under a running client (the gateway's uplink) without touching either end.
#[derive(Debug)]
pub struct CuttableProxy {
    addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// Listens on an ephemeral port and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // dropped: the connection is refused while cut
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(Self { addr, cut, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The environment variable that makes an executable act as a gateway process
/// ([`run_gateway_child`]); [`spawn_gateway_process`] sets it.
pub const GATEWAY_CHILD_ENV: &str = "DEMOLAB_GATEWAY_CHILD_CONFIG";

/// The gateway process's side: runs a gateway from `config` until the process is killed,
/// printing `GATEWAY READY` once it is up.
pub fn run_gateway_child(config: &std::path::Path) -> anyhow::Result<()> {
    let loaded = gateway::file::GatewayFile::load(config)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let handle = gateway::start(loaded.gateway, tokio_util::sync::CancellationToken::new())?;
        handle.ready().await;
        println!("GATEWAY READY");
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Starts this executable again, with `args`, as a gateway process running `config` (a real
/// process, so it can be killed for real or measured alone), and waits until it is ready.
pub fn spawn_gateway_process(
    args: &[&str],
    config: &std::path::Path,
) -> anyhow::Result<std::process::Child> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .env(GATEWAY_CHILD_ENV, config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("GATEWAY READY") {
                let _ = ready_tx.send(());
            }
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        bail!("the gateway process did not become ready within 30 s");
    }
    Ok(child)
}
