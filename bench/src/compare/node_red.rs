//! Node-RED 4.1 as the do-it-yourself peer: installed from npm on first use into the target
//! directory, running the committed flow (`bench/node-red/flow.json`) against the run's broker.
//! It gets the JSON form of the samples: Node-RED has no built-in Sparkplug B decoder.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::latency::Recorder;
use crate::load::Generator;
use crate::process::{Guard, free_port, wait_accepting};

/// The version range installed: 5.x needs Node >= 22.9.
pub const VERSION_RANGE: &str = "~4.1";

/// `red.js` under `prefix`, installed with npm when missing.
pub fn ensure_installed(prefix: &Path) -> anyhow::Result<PathBuf> {
    let red = prefix.join("node_modules/node-red/red.js");
    // Node-RED runs in its own directory: the path must not be relative.
    let absolute = |red: PathBuf| {
        red.canonicalize()
            .with_context(|| format!("resolving {}", red.display()))
    };
    if red.is_file() {
        return absolute(red);
    }
    println!(
        "installing Node-RED {VERSION_RANGE} into {} (once)…",
        prefix.display()
    );
    std::fs::create_dir_all(prefix)?;
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(prefix)
        .arg(format!("node-red@{VERSION_RANGE}"))
        .status()
        .context("running npm (is Node.js installed?)")?;
    if !status.success() || !red.is_file() {
        bail!("npm install of node-red@{VERSION_RANGE} failed ({status})");
    }
    absolute(red)
}

/// The installed Node-RED version and `node --version`.
pub fn versions(red: &Path) -> (String, String) {
    let package = red.with_file_name("package.json");
    let nr = std::fs::read_to_string(package)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let node = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into());
    (nr, node)
}

/// A running Node-RED, killed on drop.
#[derive(Debug)]
pub struct NodeRed {
    child: Guard,
    history: PathBuf,
    offset: u64,
    lines: u64,
    pub stream: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl NodeRed {
    /// Starts Node-RED and waits until a probe message has gone through the whole flow (so the
    /// MQTT subscription is in place), using `load` to publish the probes.
    pub async fn start(
        red: &Path,
        flow: &Path,
        dir: &Path,
        mqtt_port: u16,
        mqtt_password: &str,
        load: &mut Generator,
        recorder: Arc<Recorder>,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(flow)
            .with_context(|| format!("reading the flow {}", flow.display()))?;
        let mut nodes: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", flow.display()))?;
        let mut broker_ids = Vec::new();
        for node in nodes
            .as_array_mut()
            .context("the flow is not a JSON array")?
        {
            if node["type"] == "mqtt-broker" {
                node["broker"] = "127.0.0.1".into();
                node["port"] = mqtt_port.to_string().into();
                broker_ids.push(node["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        if broker_ids.is_empty() {
            bail!("the flow {} has no mqtt-broker node", flow.display());
        }
        std::fs::write(dir.join("flows.json"), serde_json::to_vec_pretty(&nodes)?)?;
        // `credentialSecret: false` keeps the credentials file plain JSON.
        let creds: serde_json::Map<String, Value> = broker_ids
            .into_iter()
            .map(|id| {
                (
                    id,
                    serde_json::json!({"user": "node-red", "password": mqtt_password}),
                )
            })
            .collect();
        std::fs::write(dir.join("flows_cred.json"), serde_json::to_vec(&creds)?)?;
        let settings = format!(
            "module.exports = {{\n  flowFile: 'flows.json',\n  credentialSecret: false,\n  uiHost: '127.0.0.1',\n  httpAdminRoot: false,\n  fileWorkingDirectory: {dir:?},\n  logging: {{ console: {{ level: 'warn', metrics: false, audit: false }} }},\n}};\n",
            dir = dir.display().to_string()
        );
        std::fs::write(dir.join("settings.js"), settings)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("node-red.log"))?;
        let child = Command::new("node")
            .arg(red)
            .arg("--userDir")
            .arg(dir)
            .arg("--settings")
            .arg(dir.join("settings.js"))
            .arg("--port")
            .arg(port.to_string())
            .arg("flows.json")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting node (Node.js)")?;
        let mut child = Guard(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_hint = || format!("see {}", dir.join("node-red.log").display());
        wait_accepting(addr, &mut child.0, "Node-RED", Duration::from_secs(60))
            .with_context(log_hint)?;
        // Node-RED listens before it has started the flow's WebSocket node, so the first
        // handshakes can fail: try until the flow answers or the deadline passes.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match crate::latency::follow(format!("ws://{addr}/ws/echo"), recorder.clone()).await {
                Ok(stream) => break stream,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(err).with_context(log_hint),
            }
        };
        let mut node_red = Self {
            child,
            history: dir.join("history.jsonl"),
            offset: 0,
            lines: 0,
            stream,
        };
        // The MQTT node subscribes some time after the HTTP port opens: probe until one message
        // has been written to the history.
        let until = Instant::now() + Duration::from_secs(30);
        while node_red.applied()? == 0 {
            if Instant::now() > until {
                bail!(
                    "Node-RED wrote no probe to its history within 30 s; {}",
                    log_hint()
                );
            }
            load.probe("probe").await?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(node_red)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Lines in `history.jsonl` so far: one per message the flow handled.
    pub fn applied(&mut self) -> anyhow::Result<u64> {
        let mut file = match std::fs::File::open(&self.history) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err).context("opening Node-RED's history"),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        // Only whole lines count: a line being written is counted when its newline lands.
        if let Some(last) = buf.iter().rposition(|b| *b == b'\n') {
            self.lines += buf[..=last].iter().filter(|b| **b == b'\n').count() as u64;
            self.offset += last as u64 + 1;
        }
        Ok(self.lines)
    }
}

impl Drop for NodeRed {
    fn drop(&mut self) {
        self.stream.abort();
    }
}
