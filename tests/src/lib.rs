//! Shared helpers of the end-to-end tests in `tests/tests/`: start a hub on ephemeral ports,
//! wait for conditions with deadlines, speak just enough HTTP to read the API.
//!
//! The tests run every part through real sockets: the embedded MQTT broker, the gateway's MQTT
//! sessions, the hub's HTTP server and WebSocket stream.

pub mod cluster;
pub mod fuzz;
pub mod laptop;
pub mod pki;
pub mod postgres;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use hub::broker::BrokerConfig;
use hub::{BrokerSetting, Hub, HubConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The configuration of a hub with an embedded broker on ephemeral ports and its data in
/// `data_dir`, for tests that change it before starting. It takes births of any lab and machine
/// (`accept_unknown`), so tests about other things need no directory; tests of admission
/// turn it off.
pub fn hub_config(data_dir: &std::path::Path) -> HubConfig {
    HubConfig {
        http_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        broker: BrokerSetting::Embedded(BrokerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..BrokerConfig::default()
        }),
        data_dir: data_dir.to_owned(),
        accept_unknown: true,
        // These tests read twins without logging in; scopes have tests of their own.
        auth: hub::auth::AuthConfig {
            public_labs: vec!["*".into()],
            ..hub::auth::AuthConfig::default()
        },
        ..HubConfig::default()
    }
}

/// A hub from [`hub_config`], ready.
pub async fn start_hub(data_dir: &std::path::Path) -> anyhow::Result<Hub> {
    start_hub_with(hub_config(data_dir)).await
}

/// A hub from `config`, ready (ingest subscribed, STATE online).
pub async fn start_hub_with(config: HubConfig) -> anyhow::Result<Hub> {
    let hub = Hub::start(config).await.context("starting the hub")?;
    within(
        Duration::from_secs(10),
        "the hub to become ready",
        hub.ready(),
    )
    .await?;
    Ok(hub)
}

/// An argon2id hash with argon2's cheapest parameters: brokers verify one on every CONNECT, and
/// debug builds are slow.
pub fn cheap_password_hash(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::PasswordHasher;
    let params = argon2::Params::new(8, 1, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    Ok(argon
        .hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_string())
}

/// Logs `name` in with the tests' password convention, `{name}-secret`; returns the token.
pub async fn login(addr: SocketAddr, name: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({"user": name, "password": format!("{name}-secret")});
    let (status, body) = http(
        addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(body.to_string().as_bytes()),
    )
    .await?;
    anyhow::ensure!(status == 200, "login {name}: {status} {body}");
    let doc: serde_json::Value = serde_json::from_str(&body)?;
    Ok(doc["token"].as_str().context("token")?.to_owned())
}

/// The demo region as the tests run it: one mill per lab, loopback on ephemeral ports, data in
/// `data_dir`, fast samples, a known operator password.
pub fn test_region(
    data_dir: &std::path::Path,
    seed: u64,
    sample_period: Duration,
) -> demolab_demo::region::RegionOptions {
    demolab_demo::region::RegionOptions {
        bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        http_port: 0,
        mqtt_port: 0,
        data_dir: data_dir.to_owned(),
        machines_per_lab: 1,
        sample_period,
        seed,
        operator_password: Some("operator-pw".into()),
    }
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

/// (machine, kind, seq) of the next `count` samples on a hub's WebSocket stream, `kind` being
/// `sample` or `historical` (a gateway's replay after an outage); fails if the stream lags.
pub async fn collect_stream_samples(
    stream: &mut (
             impl futures_util::Stream<
        Item = Result<
            tokio_tungstenite::tungstenite::Message,
            tokio_tungstenite::tungstenite::Error,
        >,
    > + Unpin
         ),
    count: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<(String, String, u32)>> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut seen = Vec::new();
    within(deadline, &format!("{count} samples on the stream"), async {
        while seen.len() < count {
            let Some(message) = stream.next().await else {
                bail!("stream closed")
            };
            let Message::Text(text) = message? else {
                continue;
            };
            let change: serde_json::Value = serde_json::from_str(text.as_str())?;
            anyhow::ensure!(change["kind"] != "lagged", "the stream lagged");
            if let (Some(kind @ ("sample" | "historical")), Some(machine), Some(seq)) = (
                change["kind"].as_str(),
                change["machine"].as_str(),
                change["seq"].as_u64(),
            ) {
                seen.push((machine.to_owned(), kind.to_owned(), seq as u32));
            }
        }
        Ok(())
    })
    .await??;
    Ok(seen)
}

/// A minimal HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http(addr, "GET", path, None, None).await
}

/// A minimal HTTP/1.1 request with an optional bearer token and JSON body; returns the status
/// code and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json_body: Option<&[u8]>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = json_body.unwrap_or_default();
    if json_body.is_some() {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    // The server may answer (e.g. 413) and close before reading the whole body.
    let _ = stream.read_to_end(&mut response).await;
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

/// A minimal HTTP/1.1 GET for binary answers; returns the status, the header block (lower
/// case) and the body bytes. The hub sends such answers with a `Content-Length`.
pub async fn http_get_bytes(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header end")?;
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        bail!("a chunked answer to GET {path}: use `http` for text");
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, head, response[end + 4..].to_vec()))
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

/// Serves the operations endpoint of `gateway` (of `lab`, named `gw`) on an ephemeral port, as
/// `demolab-gateway` does, until `cancel`.
pub async fn serve_ops(
    gateway: &gateway::GatewayHandle,
    lab: &str,
    gw: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(gateway::ops::serve(
        listener,
        lab.parse()?,
        gw.parse()?,
        gateway.stats().clone(),
        gateway.status().clone(),
        cancel.clone(),
    ));
    Ok(addr)
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
        login: None,
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
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await?, target)
    }

    /// Relays every connection `listener` accepts to `target`: for a server that must be told
    /// the proxy's address before the proxy can know the server's.
    pub fn start_on(listener: tokio::net::TcpListener, target: SocketAddr) -> anyhow::Result<Self> {
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
) -> anyhow::Result<ChildProcess> {
    spawn_child(args, GATEWAY_CHILD_ENV, config, &[], "GATEWAY READY").map(|(child, _)| child)
}

/// The environment variable that makes an executable act as a hub process
/// ([`run_hub_child`]); [`spawn_hub_process`] sets it.
pub const HUB_CHILD_ENV: &str = "DEMOLAB_HUB_CHILD_CONFIG";

/// The hub process's side: runs a hub from the `hub.toml` at `config` until the process is
/// killed, printing `HUB READY http=ADDR` once it is up.
pub fn run_hub_child(config: &std::path::Path) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let config = hub::config::HubFile::load(config)?.into_config(config)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let hub = Hub::start(config).await?;
        hub.ready().await;
        println!("HUB READY http={}", hub.http_addr());
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// Starts this executable again, with `args`, as a hub process running `config`; returns the
/// process and the hub's HTTP address once it is ready.
pub fn spawn_hub_process(
    args: &[&str],
    config: &std::path::Path,
) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    spawn_hub_process_with(args, config, &[])
}

/// [`spawn_hub_process`] with more environment variables for the child (a password the
/// config names with `password_env`).
pub fn spawn_hub_process_with(
    args: &[&str],
    config: &std::path::Path,
    envs: &[(&str, &str)],
) -> anyhow::Result<(ChildProcess, SocketAddr)> {
    let (child, line) = spawn_child(args, HUB_CHILD_ENV, config, envs, "HUB READY")?;
    let addr = line
        .split("http=")
        .nth(1)
        .and_then(|a| a.trim().parse().ok())
        .with_context(|| format!("no address in {line:?}"))?;
    Ok((child, addr))
}

/// A child process that is killed when dropped, so a failing test leaves no process behind to
/// join the next test's broker (it could take over a client id on a reused port).
#[derive(Debug)]
pub struct ChildProcess(std::process::Child);

impl std::ops::Deref for ChildProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChildProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs this executable with `args` and `env=config`, waiting for a stdout line containing
/// `marker`, which it returns.
/// Where a child process started with `config` writes its log.
pub fn child_log(config: &std::path::Path) -> std::path::PathBuf {
    config.with_extension("log")
}

fn spawn_child(
    args: &[&str],
    env: &str,
    config: &std::path::Path,
    envs: &[(&str, &str)],
    marker: &'static str,
) -> anyhow::Result<(ChildProcess, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .env(env, config)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(child_log(config))?)
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(marker) {
                let _ = ready_tx.send(line);
            }
        }
    });
    let child = ChildProcess(child);
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => Ok((child, line)),
        Err(_) => bail!("the child process did not print {marker:?} within 30 s"),
    }
}
