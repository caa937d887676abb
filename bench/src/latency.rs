//! Latency from publishing a sample to a client seeing it: the hub's WebSocket stream, Node-RED's
//! echo WebSocket, or the plain subscriber itself. Send and receive times are `Instant`s of this
//! one process, so no clocks need to agree.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// (edge, machine on that edge, node.seq).
pub type Key = (u32, u32, u32);

#[derive(Debug, Default)]
struct Inner {
    measuring: bool,
    sent: HashMap<Key, Instant>,
    latencies_us: Vec<f64>,
    unmatched: u64,
    lagged: u64,
}

/// Send times of one measuring step and the latencies of what came back.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Inner>);

/// Latencies of one step.
#[derive(Debug, Clone)]
pub struct Latency {
    pub matched: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Sent during the step but never seen on the client (lagged ones included).
    pub missed: u64,
    /// Seen on the client but not sent during the step (e.g. a late one of the step before).
    pub unmatched: u64,
    /// Reported by the hub's stream as `lagged` (skipped for a slow client).
    pub lagged: u64,
}

impl Latency {
    pub fn to_json(&self) -> Value {
        json!({
            "matched": self.matched,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "missed": self.missed,
            "unmatched": self.unmatched,
            "lagged": self.lagged,
        })
    }
}

/// The machine's name for edge `edge`, machine `m`: parsed back by [`parse_machine`].
pub fn machine_name(edge: u32, m: u32) -> String {
    format!("m-{edge}-{m}")
}

/// `m-E-M` → `(E, M)`.
pub fn parse_machine(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("m-")?;
    let (e, m) = rest.split_once('-')?;
    Some((e.parse().ok()?, m.parse().ok()?))
}

/// The `q` quantile of sorted `v` (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

impl Recorder {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters to a measurement: keep going with what is there.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a measuring step: forgets the last one.
    pub fn begin(&self) {
        *self.inner() = Inner {
            measuring: true,
            ..Inner::default()
        };
    }

    pub fn sent(&self, key: Key, at: Instant) {
        let mut inner = self.inner();
        if inner.measuring {
            inner.sent.insert(key, at);
        }
    }

    pub fn received(&self, key: Key, at: Instant) {
        let mut inner = self.inner();
        if !inner.measuring {
            return;
        }
        match inner.sent.remove(&key) {
            Some(sent) => {
                let us = at.saturating_duration_since(sent).as_secs_f64() * 1e6;
                inner.latencies_us.push(us);
            }
            None => inner.unmatched += 1,
        }
    }

    pub fn lagged(&self, missed: u64) {
        let mut inner = self.inner();
        if inner.measuring {
            inner.lagged += missed;
        }
    }

    /// Samples sent this step and not yet seen.
    pub fn outstanding(&self) -> usize {
        self.inner().sent.len()
    }

    /// Ends the step.
    pub fn end(&self) -> Latency {
        let mut inner = self.inner();
        inner.measuring = false;
        let mut v = std::mem::take(&mut inner.latencies_us);
        v.sort_by(f64::total_cmp);
        let ms = |x: Option<f64>| x.map(|us| us / 1000.0);
        Latency {
            matched: v.len() as u64,
            p50_ms: ms(quantile(&v, 0.50)),
            p99_ms: ms(quantile(&v, 0.99)),
            max_ms: ms(v.last().copied()),
            missed: inner.sent.len() as u64,
            unmatched: inner.unmatched,
            lagged: inner.lagged,
        }
    }
}

/// The key of a streamed change or echoed message: `machine` and the sample's sequence number
/// in `seq` (the hub's `TwinChange.seq` is the sample's `node.seq`; Node-RED echoes ours).
fn key_of(doc: &Value) -> Option<Key> {
    let (edge, m) = parse_machine(doc.get("machine")?.as_str()?)?;
    let seq = doc.get("seq").and_then(Value::as_u64).or_else(|| {
        doc.get("values")?
            .get("node.seq")?
            .as_f64()
            .map(|s| s as u64)
    })?;
    Some((edge, m, u32::try_from(seq).ok()?))
}

/// Reads a WebSocket of JSON messages into `recorder` until it closes: the hub's stream
/// (`kind` `sample`, or `lagged` with `missed`) or Node-RED's echo (the sample itself).
pub async fn follow(
    url: String,
    recorder: std::sync::Arc<Recorder>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("opening the WebSocket {}", redact(&url)))?;
    Ok(tokio::spawn(async move {
        while let Some(message) = socket.next().await {
            let at = Instant::now();
            let text = match message.context("reading the WebSocket")? {
                Message::Text(text) => text,
                Message::Close(_) => break,
                _ => continue,
            };
            let Ok(doc) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            match doc.get("kind").and_then(Value::as_str) {
                Some("lagged") => {
                    recorder.lagged(doc.get("missed").and_then(Value::as_u64).unwrap_or(0));
                }
                Some("sample") | None => {
                    if let Some(key) = key_of(&doc) {
                        recorder.received(key, at);
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }))
}

/// The URL without its token, for messages.
fn redact(url: &str) -> &str {
    url.split_once("token=").map_or(url, |(head, _)| head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_hub_change_and_an_echo_give_the_same_key() {
        let change = json!({"kind": "sample", "lab": "lab-bench", "machine": "m-1-2", "seq": 7,
            "values": {"spindle.power_w": 1.0}});
        let echo = json!({"machine": "m-1-2", "seq": 7, "ts": 1, "spindle.power_w": 1.0});
        assert_eq!(key_of(&change), Some((1, 2, 7)));
        assert_eq!(key_of(&echo), Some((1, 2, 7)));
    }

    #[test]
    fn a_late_sample_is_unmatched_and_a_lost_one_missed() {
        let r = Recorder::default();
        r.begin();
        let t = Instant::now();
        r.sent((0, 0, 1), t);
        r.sent((0, 0, 2), t);
        r.received((0, 0, 1), t);
        r.received((0, 0, 9), t);
        let l = r.end();
        assert_eq!((l.matched, l.missed, l.unmatched), (1, 1, 1));
    }
}
