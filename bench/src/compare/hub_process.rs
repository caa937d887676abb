//! The hub as the operator runs it: the `demolab-hub` binary with a generated `hub.toml` behind
//! the run's Mosquitto, its data in the run's temp dir.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::latency::Recorder;
use crate::load::LAB;
use crate::process::Guard;

/// Sparkplug host id of the benchmarked hub; its MQTT client id is `{HOST_ID}-host`.
const HOST_ID: &str = "bench-hub";
const PASSWORD_ENV: &str = "DEMOLAB_BENCH_HUB_MQTT_PASSWORD";
const WEB_USER: &str = "bench";

/// `--hub-bin`, or the `demolab-hub` next to this executable (both built by
/// `cargo build --release`).
pub fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .parent()
            .context("this executable has no directory")?
            .join("demolab-hub"),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release` (it builds the hub beside this \
             benchmark), or point --hub-bin at one",
            path.display()
        );
    }
    Ok(path)
}

/// A running hub process with a logged-in WebSocket stream; killed on drop.
#[derive(Debug)]
pub struct HubProcess {
    child: Guard,
    http: SocketAddr,
    pub stream: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn hash_password(bin: &Path, password: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(bin)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} hash-password", bin.display()))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(format!("{password}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "demolab-hub hash-password failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Waits for the hub's retained STATE `online` stamped after `since_ms`: it subscribes before
/// announcing that (Sparkplug's order), so births sent afterwards are not missed. An older
/// retained STATE of a killed hub does not count.
async fn wait_online(port: u16, password: &str, since_ms: u64) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(
        format!("bench-state-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options.set_credentials("counter", password);
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe(format!("spBv1.0/STATE/{HOST_ID}"), QoS::AtLeastOnce)
        .await?;
    let wait = async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await? {
                let doc: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                if doc["online"] == true && doc["timestamp"].as_u64() >= Some(since_ms) {
                    return anyhow::Ok(());
                }
            }
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .context("the hub did not announce STATE online within 30 s");
    let _ = client.try_disconnect();
    result?
}

impl HubProcess {
    pub async fn start(
        bin: &Path,
        dir: &Path,
        mqtt_port: u16,
        mqtt_password: &str,
        hub_settings: &str,
        recorder: Arc<Recorder>,
    ) -> anyhow::Result<Self> {
        let web_password = mqtt_password.to_owned() + "-web";
        let hash = hash_password(bin, &web_password)?;
        // The hub's own defaults otherwise (JSON topics on, history, alarms): it does its normal
        // work. It accepts the bench lab's births without a directory entry.
        let config = format!(
            "[hub]\nhost_id = \"{HOST_ID}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\naccept_unknown = true\n{hub_settings}\n\
             [broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {mqtt_port}\nusername = \"hub\"\npassword_env = \"{PASSWORD_ENV}\"\n\n\
             [limits]\nmax_twins_per_lab = 100000\n\n\
             [[auth.users]]\nname = \"{WEB_USER}\"\nrole = \"admin\"\npassword_hash = \"{hash}\"\n",
            data = dir.join("data").display().to_string(),
        );
        let config_path = dir.join("hub.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("hub.log"))?;
        let since_ms = hub::ingest::now_ms();
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config_path)
            .env(PASSWORD_ENV, mqtt_password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no hub stdout")?;
        let child = Guard(child);
        // The hub prints its bound web address (we asked for port 0); the rest of its stdout is
        // read and thrown away so it never blocks on a full pipe.
        let (web_tx, web_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("web:") {
                    let _ = web_tx.send(rest.trim().to_owned());
                }
            }
        });
        let web = tokio::task::spawn_blocking(move || web_rx.recv_timeout(Duration::from_secs(30)))
            .await?
            .with_context(|| {
                format!(
                    "the hub printed no web address within 30 s; see {}",
                    dir.join("hub.log").display()
                )
            })?;
        let http: SocketAddr = web
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("cannot read the hub's web address from {web:?}"))?;
        wait_online(mqtt_port, mqtt_password, since_ms)
            .await
            .with_context(|| format!("see {}", dir.join("hub.log").display()))?;
        let body = serde_json::json!({"user": WEB_USER, "password": web_password}).to_string();
        let (status, answer) = demolab_tests::http(
            http,
            "POST",
            "/api/v1/auth/login",
            None,
            Some(body.as_bytes()),
        )
        .await?;
        if status != 200 {
            bail!("hub login answered {status}: {answer}");
        }
        let doc: Value = serde_json::from_str(&answer)?;
        let token = doc["token"]
            .as_str()
            .context("no token in the login answer")?;
        let stream = crate::latency::follow(
            format!("ws://{http}/api/v1/stream?lab={LAB}&token={token}"),
            recorder,
        )
        .await?;
        Ok(Self {
            child,
            http,
            stream,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `demolab_hub_samples_applied_total` from `/metrics`.
    pub async fn applied(&self) -> anyhow::Result<u64> {
        self.metric("demolab_hub_samples_applied_total").await
    }

    /// One unlabelled counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let (status, body) = demolab_tests::http_get(self.http, "/metrics").await?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .with_context(|| format!("no {name} in /metrics"))
    }

    /// Kills the hub and removes its persistent MQTT session, or Mosquitto would keep queueing
    /// the next peers' messages for it.
    pub async fn stop(self, mqtt_port: u16, mqtt_password: &str) -> anyhow::Result<()> {
        self.stream.abort();
        drop(self.child);
        let mut options = MqttOptions::new(format!("{HOST_ID}-host"), "127.0.0.1", mqtt_port);
        options.set_credentials("hub", mqtt_password);
        options.set_clean_session(true);
        let (client, mut events) = AsyncClient::new(options, 4);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(until.into(), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(err)) => bail!("clearing the hub's MQTT session: {err}"),
                Err(_) => bail!("clearing the hub's MQTT session: no CONNACK in 10 s"),
            }
        }
        let _ = client.try_disconnect();
        // Let the event loop send the DISCONNECT so the clean session ends cleanly.
        let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
        Ok(())
    }
}
