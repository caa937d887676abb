//! The ceiling: a plain in-process subscriber that counts DDATA (QoS 1) and does nothing else
//! but read `node.seq` for the latency figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use protocol::sparkplug::{MetricValue, Payload};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::latency::Recorder;
use crate::load::{LAB, parse_machine};

#[derive(Debug)]
pub struct Plain {
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn node_seq(payload: &[u8]) -> Option<u32> {
    let payload = Payload::decode(payload).ok()?;
    payload
        .metrics
        .iter()
        .find_map(|m| match (m.name.as_deref(), &m.value) {
            (Some("node.seq"), Some(MetricValue::Int(seq))) => Some(*seq),
            _ => None,
        })
}

impl Plain {
    /// Subscribed (SUBACK received) when this returns.
    pub async fn start(port: u16, password: &str, recorder: Arc<Recorder>) -> anyhow::Result<Self> {
        let mut options = MqttOptions::new(
            format!("bench-counter-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options.set_credentials("counter", password);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 64);
        client
            .subscribe(format!("spBv1.0/{LAB}/DDATA/#"), QoS::AtLeastOnce)
            .await?;
        let count = Arc::new(AtomicU64::new(0));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let task = {
            let count = count.clone();
            tokio::spawn(async move {
                // The client must live as long as its event loop, or the loop ends.
                let _client = client;
                let mut subscribed_tx = Some(subscribed_tx);
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let at = Instant::now();
                            count.fetch_add(1, Ordering::Relaxed);
                            let machine = p.topic.rsplit('/').next().and_then(parse_machine);
                            if let (Some((e, m)), Some(seq)) = (machine, node_seq(&p.payload)) {
                                recorder.received((e, m, seq), at);
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(_) => {}
                        Err(err) => {
                            eprintln!("plain subscriber: MQTT error: {err}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .context("the plain subscriber got no SUBACK")?
            .context("the plain subscriber stopped")?;
        Ok(Self { count, task })
    }

    pub fn applied(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        self.task.abort();
    }
}
