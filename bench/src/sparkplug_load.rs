//! Ready-made Sparkplug B traffic for the ingest benchmarks: an edge node's births and samples
//! encoded up front, published at QoS 1 as fast as the broker acknowledges, so the load
//! generator costs next to nothing beside what it measures.

use prost::Message;
use protocol::sparkplug::{BD_SEQ_METRIC, DataType, Metric, MetricValue, Payload};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Values per sample besides `node.seq`, like a CNC mill's.
pub const METRICS: [&str; 5] = [
    "spindle.power_w",
    "spindle.vibration_rms",
    "coolant.temperature_c",
    "state.code",
    "production.parts",
];

/// A Sparkplug payload stamped now.
pub fn encode(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(hub::ingest::now_ms()),
        seq: Some(seq),
        metrics,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Every message of one edge node, in order: NBIRTH (with `bd_seq`), a DBIRTH per machine, then
/// `samples` samples per machine, round-robin over the machines.
pub fn edge_messages(
    group: &str,
    gateway: &str,
    machines: &[String],
    samples: u32,
    bd_seq: u64,
) -> Vec<(String, Vec<u8>)> {
    let mut seq = 0u64;
    let mut next = || {
        let s = seq % 256;
        seq += 1;
        s
    };
    let bd = Metric::new(DataType::UInt64, MetricValue::Long(bd_seq)).named(BD_SEQ_METRIC);
    let mut out = vec![(
        format!("spBv1.0/{group}/NBIRTH/{gateway}"),
        encode(next(), vec![bd]),
    )];
    for machine in machines {
        let mut metrics: Vec<Metric> = METRICS
            .iter()
            .map(|name| Metric::new(DataType::Double, MetricValue::Double(0.0)).named(*name))
            .collect();
        metrics.push(Metric::new(DataType::UInt32, MetricValue::Int(0)).named("node.seq"));
        out.push((
            format!("spBv1.0/{group}/DBIRTH/{gateway}/{machine}"),
            encode(next(), metrics),
        ));
    }
    for sample in 1..=samples {
        for machine in machines {
            let mut metrics =
                vec![Metric::new(DataType::UInt32, MetricValue::Int(sample)).named("node.seq")];
            metrics.extend(METRICS.iter().enumerate().map(|(i, name)| {
                let value = f64::from(sample) + i as f64;
                Metric::new(DataType::Double, MetricValue::Double(value)).named(*name)
            }));
            out.push((
                format!("spBv1.0/{group}/DDATA/{gateway}/{machine}"),
                encode(next(), metrics),
            ));
        }
    }
    out
}

/// Publishes `messages` in order at QoS 1 on a connection of its own (100 in flight); returns
/// once the broker acknowledged every one, disconnected.
pub async fn publish_acked(
    mut options: MqttOptions,
    messages: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    options.set_inflight(100);
    let (client, mut events) = AsyncClient::new(options, 256);
    let expected = messages.len();
    let publisher = tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < expected {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await? {
            acked += 1;
        }
    }
    let client = publisher.await??;
    client.disconnect().await?;
    // Let the DISCONNECT go out before the connection is dropped.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}
