//! Record and replay of a lab session: the node frames exactly as they crossed the lab broker,
//! with their timing, so a real lab session can be shown again later through a gateway.
//!
//! A session file is JSON lines: a header `{"format":"demolab-session","version":1,...}`, then
//! one line per frame `{"t":ms since the start,"node":"<16 hex>","frame":"<hex bytes>"}`. Frames
//! are kept as bytes (the wire contract), not as decoded values, so a replay is byte-exact.
//!
//! Recording can start in the middle of a session: for a node first heard without its `Hello`,
//! the recorder asks for one (`RequestHello` on the node's down topic), as a gateway does, so the
//! file is replayable on its own. Replaying gives every node a fresh boot id by default, so a
//! gateway that saw the original session treats the replay as new samples rather than
//! duplicates.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use protocol::codec;
use protocol::node_topic::{self, Direction};
use protocol::{Command, CommandKind, Frame, NodeId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::node::{NodeLogin, fresh_boot_id};

/// `format` of the header line.
pub const FORMAT: &str = "demolab-session";
/// The file version this code writes and reads.
pub const VERSION: u32 = 1;

/// Why recording or replaying failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The file could not be read or written.
    #[error("session file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of the file is not what it should be.
    #[error("session file line {line}: {problem}")]
    Format {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The broker connection failed.
    #[error("broker: {0}")]
    Mqtt(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    /// Wall time of the first frame, ms since the epoch.
    started_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    t: u64,
    node: String,
    frame: String,
}

/// One recorded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFrame {
    /// Milliseconds after the session's start.
    pub at_ms: u64,
    /// The node that sent it.
    pub node: NodeId,
    /// The frame bytes as published.
    pub bytes: Vec<u8>,
}

/// A recorded session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Wall time of the first frame, ms since the epoch.
    pub started_at_ms: u64,
    /// Frames in the order they were received.
    pub frames: Vec<RecordedFrame>,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Session {
    /// Writes the session as JSON lines.
    pub fn write_to(&self, mut out: impl Write) -> std::io::Result<()> {
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            started_at_ms: self.started_at_ms,
        };
        writeln!(out, "{}", serde_json::to_string(&header)?)?;
        for frame in &self.frames {
            let line = Line {
                t: frame.at_ms,
                node: frame.node.to_string(),
                frame: hex(&frame.bytes),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        out.flush()
    }

    /// Saves the session to `path`.
    pub fn save(&self, path: &Path) -> Result<(), SessionError> {
        let io = |source| SessionError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        self.write_to(std::io::BufWriter::new(file)).map_err(io)
    }

    /// Reads a session; errors name the line.
    pub fn read_from(input: impl BufRead) -> Result<Self, SessionError> {
        let mut lines = input.lines().enumerate();
        let format = |line: usize, problem: String| SessionError::Format {
            line: line + 1,
            problem,
        };
        let io = |source| SessionError::Io {
            path: "input".into(),
            source,
        };
        let Some((n, first)) = lines.next() else {
            return Err(format(0, "the file is empty".into()));
        };
        let header: Header = serde_json::from_str(&first.map_err(io)?)
            .map_err(|err| format(n, format!("not a session header: {err}")))?;
        if header.format != FORMAT {
            return Err(format(
                n,
                format!("format is {:?}, not {FORMAT:?}", header.format),
            ));
        }
        if header.version != VERSION {
            return Err(format(
                n,
                format!(
                    "version {} is not supported (this is {VERSION})",
                    header.version
                ),
            ));
        }
        let mut session = Session {
            started_at_ms: header.started_at_ms,
            frames: Vec::new(),
        };
        for (n, text) in lines {
            let text = text.map_err(io)?;
            if text.trim().is_empty() {
                continue;
            }
            let line: Line =
                serde_json::from_str(&text).map_err(|err| format(n, err.to_string()))?;
            let node = line
                .node
                .parse()
                .map_err(|err| format(n, format!("node: {err}")))?;
            let bytes =
                unhex(&line.frame).ok_or_else(|| format(n, "frame: not hex bytes".into()))?;
            codec::decode(&bytes).map_err(|err| format(n, format!("frame: {err}")))?;
            session.frames.push(RecordedFrame {
                at_ms: line.t,
                node,
                bytes,
            });
        }
        Ok(session)
    }

    /// Loads a session file.
    pub fn load(path: &Path) -> Result<Self, SessionError> {
        let file = std::fs::File::open(path).map_err(|source| SessionError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::read_from(std::io::BufReader::new(file))
    }

    /// Nodes in the session, in order of first appearance.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut seen = HashSet::new();
        self.frames
            .iter()
            .filter(|f| seen.insert(f.node))
            .map(|f| f.node)
            .collect()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When to stop recording.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordLimits {
    /// After this long.
    pub duration: Option<Duration>,
    /// After this many frames.
    pub frames: Option<usize>,
}

/// Records node frames from the broker at `host:port` until a limit or `cancel`, logged in as
/// `login` when the broker wants one (a read-only login records; only asking a node heard
/// without its Hello for one needs to publish to its `down` topic).
pub async fn record(
    host: &str,
    port: u16,
    login: Option<&NodeLogin>,
    limits: RecordLimits,
    cancel: CancellationToken,
) -> Result<Session, SessionError> {
    let mut options = MqttOptions::new(format!("demolab-recorder-{}", now_ms()), host, port);
    if let Some(login) = login {
        options.set_credentials(login.username.clone(), login.password.clone());
    }
    options.set_keep_alive(Duration::from_secs(15));
    options.set_max_packet_size(1 << 16, 1 << 16);
    let (client, mut events) = AsyncClient::new(options, 64);
    client
        .subscribe(node_topic::ALL_UP, QoS::AtLeastOnce)
        .await
        .map_err(|err| SessionError::Mqtt(err.to_string()))?;
    let mut session = Session::default();
    let mut start: Option<tokio::time::Instant> = None;
    let mut greeted: HashSet<NodeId> = HashSet::new();
    let mut asked: HashSet<NodeId> = HashSet::new();
    let deadline = limits.duration.map(|d| tokio::time::Instant::now() + d);
    loop {
        if limits.frames.is_some_and(|n| session.frames.len() >= n) {
            break;
        }
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            event = events.poll() => event.map_err(|err| SessionError::Mqtt(err.to_string()))?,
            () = until_deadline => break,
            () = cancel.cancelled() => break,
        };
        let Event::Incoming(Packet::Publish(publish)) = event else {
            continue;
        };
        let Some((node, Direction::Up)) = node_topic::parse(&publish.topic) else {
            continue;
        };
        // Only valid frames are worth replaying; others are skipped, as a gateway would.
        let Ok(frame) = codec::decode(&publish.payload) else {
            continue;
        };
        let started = *start.get_or_insert_with(tokio::time::Instant::now);
        if session.frames.is_empty() {
            session.started_at_ms = now_ms();
        }
        if matches!(frame, Frame::Hello(_)) {
            greeted.insert(node);
        } else if !greeted.contains(&node) && asked.insert(node) {
            ask_for_hello(&client, node).await?;
        }
        session.frames.push(RecordedFrame {
            at_ms: started.elapsed().as_millis() as u64,
            node,
            bytes: publish.payload.to_vec(),
        });
    }
    let _ = client.disconnect().await;
    Ok(session)
}

async fn ask_for_hello(client: &AsyncClient, node: NodeId) -> Result<(), SessionError> {
    let frame = Frame::Command(Command {
        node,
        id: 0,
        kind: CommandKind::RequestHello,
    });
    let bytes = codec::encode_to_vec(&frame).map_err(|err| SessionError::Mqtt(err.to_string()))?;
    let topic = node_topic::format(node, Direction::Down);
    client
        .publish(topic.as_str(), QoS::AtLeastOnce, false, bytes)
        .await
        .map_err(|err| SessionError::Mqtt(err.to_string()))
}

/// How a replay went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Frames published.
    pub published: usize,
    /// Frames of a node before its first `Hello` in the file (a gateway could not place them).
    pub skipped_before_hello: usize,
}

/// Options of a replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Time factor: 1.0 is real time, 10.0 ten times faster, 0 as fast as the broker accepts.
    pub speed: f64,
    /// Give every node a fresh boot id, so the replay is new data to a gateway that saw the
    /// original session.
    pub fresh_boot: bool,
    /// The broker login, when it wants one.
    pub login: Option<NodeLogin>,
}

/// Publishes a session's frames to the broker at `host:port` with their original spacing
/// divided by `speed`.
pub async fn replay(
    session: &Session,
    host: &str,
    port: u16,
    options: ReplayOptions,
    cancel: CancellationToken,
) -> Result<ReplayStats, SessionError> {
    let mut mqtt = MqttOptions::new(format!("demolab-replay-{}", now_ms()), host, port);
    if let Some(login) = &options.login {
        mqtt.set_credentials(login.username.clone(), login.password.clone());
    }
    mqtt.set_keep_alive(Duration::from_secs(15));
    let (client, mut events) = AsyncClient::new(mqtt, 256);
    // Publishes go from this task; the event loop runs beside it (never publish from it).
    let (acked_tx, mut acked) = tokio::sync::watch::channel(0usize);
    let poller = tokio::spawn(async move {
        let mut count = 0;
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                count += 1;
                acked_tx.send_replace(count);
            }
        }
    });
    let boots: HashMap<NodeId, u32> = session
        .nodes()
        .into_iter()
        .map(|node| (node, fresh_boot_id(node)))
        .collect();
    let mut stats = ReplayStats::default();
    let mut greeted: HashSet<NodeId> = HashSet::new();
    let begun = tokio::time::Instant::now();
    for recorded in &session.frames {
        if cancel.is_cancelled() {
            break;
        }
        let mut frame =
            codec::decode(&recorded.bytes).map_err(|err| SessionError::Mqtt(err.to_string()))?;
        match &mut frame {
            Frame::Hello(hello) => {
                greeted.insert(recorded.node);
                if options.fresh_boot
                    && let Some(boot) = boots.get(&recorded.node)
                {
                    hello.boot = *boot;
                }
            }
            _ if !greeted.contains(&recorded.node) => {
                stats.skipped_before_hello += 1;
                continue;
            }
            _ => {}
        }
        if options.speed > 0.0 {
            let due =
                begun + Duration::from_secs_f64(recorded.at_ms as f64 / 1000.0 / options.speed);
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = cancel.cancelled() => break,
            }
        }
        let bytes =
            codec::encode_to_vec(&frame).map_err(|err| SessionError::Mqtt(err.to_string()))?;
        let topic = node_topic::format(recorded.node, Direction::Up);
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, bytes)
            .await
            .map_err(|err| SessionError::Mqtt(err.to_string()))?;
        stats.published += 1;
    }
    // Leave only once the broker has every frame.
    let published = stats.published;
    let _ =
        tokio::time::timeout(Duration::from_secs(30), acked.wait_for(|n| *n >= published)).await;
    let _ = client.disconnect().await;
    poller.abort();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_survives_the_file_format_and_bad_lines_are_named() {
        let hello = protocol::golden::hello();
        let bytes = codec::encode_to_vec(&hello).expect("encodes");
        let session = Session {
            started_at_ms: 1_700_000_000_000,
            frames: vec![RecordedFrame {
                at_ms: 12,
                node: NodeId(0xab),
                bytes,
            }],
        };
        let mut text = Vec::new();
        session.write_to(&mut text).expect("writes");
        let back = Session::read_from(text.as_slice()).expect("reads");
        assert_eq!(back, session);

        let broken = String::from_utf8(text).expect("utf-8")
            + "{\"t\":1,\"node\":\"zz\",\"frame\":\"00\"}\n";
        let err = Session::read_from(broken.as_bytes()).expect_err("bad node");
        assert!(
            err.to_string().starts_with("session file line 3: node"),
            "{err}"
        );
        let err = Session::read_from(
            "{\"format\":\"other\",\"version\":1,\"started_at_ms\":0}\n".as_bytes(),
        )
        .expect_err("not ours");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = Session::read_from(&b""[..]).expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
