//! Captures the live Sparkplug B traffic of a gateway (births, data, death) and checks that it
//! decodes to exactly what the simulated node sent. With `DEMOLAB_SPARKPLUG_CAPTURE_DIR` set, it
//! also writes each payload (`NNNN.bin`) with the expectation (`NNNN.json`) there, so `.ci/run`
//! can decode the same bytes with an independent implementation (Eclipse Tahu's JavaScript codec,
//! `tests/sparkplug-js`) and compare.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{burst_node, start_gateway, start_hub, within};
use prost::Message;
use protocol::sparkplug::{DataType, MessageType, MetricValue, Payload, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use simulators::node::{CNC_METRICS, run_mqtt_node};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sparkplug_traffic_decodes_to_what_the_node_sent() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();

    // A plain MQTT subscriber records every Sparkplug message of the lab, in order.
    let mut options = MqttOptions::new("capture", "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 64);
    client
        .subscribe("spBv1.0/lab-cap/#", QoS::AtLeastOnce)
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let recorder = tokio::spawn(async move {
        let mut subscribed = Some(subscribed_tx);
        while let Ok(event) = events.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(done) = subscribed.take() {
                        let _ = done.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                _ => {}
            }
        }
    });
    within(
        Duration::from_secs(5),
        "the capture subscription",
        subscribed_rx,
    )
    .await??;

    let cancel = CancellationToken::new();
    let gateway = start_gateway(
        port,
        "lab-cap",
        "gw-cap",
        &data.path().join("buffer"),
        &cancel,
    )
    .await?;
    let node = burst_node(port, 0xcafe, "mill-cap", 3, SAMPLES)?;
    let report = run_mqtt_node(node, cancel.clone()).await?;
    let last = report.last.context("the node sent samples")?;

    // NBIRTH, DBIRTH, every DDATA, then the NDEATH of a clean gateway stop.
    let expected_messages = 2 + SAMPLES as usize + 1;
    let mut captured = Vec::new();
    let mut stopped = Some(gateway);
    while captured.len() < expected_messages {
        if captured.len() == expected_messages - 1
            && let Some(gateway) = stopped.take()
        {
            gateway.shutdown().await?;
        }
        let message = within(
            Duration::from_secs(10),
            "the next Sparkplug message",
            rx.recv(),
        )
        .await?;
        captured.push(message.context("recorder ended")?);
    }
    recorder.abort();

    let kinds: Vec<MessageType> = captured
        .iter()
        .map(|(topic, _)| match Topic::parse(topic) {
            Ok(Topic::Message { kind, .. }) => Ok(kind),
            other => Err(anyhow::anyhow!("unexpected topic {topic}: {other:?}")),
        })
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(kinds[0], MessageType::NBirth);
    assert_eq!(kinds[1], MessageType::DBirth);
    assert!(
        kinds[2..2 + SAMPLES as usize]
            .iter()
            .all(|k| *k == MessageType::DData)
    );
    assert_eq!(kinds[expected_messages - 1], MessageType::NDeath);

    // Our decoding of the bytes: aliases from the DBIRTH resolve the DDATA back to the samples.
    let payloads: Vec<Payload> = captured
        .iter()
        .map(|(_, bytes)| Payload::decode(bytes.as_slice()))
        .collect::<Result<_, _>>()?;
    let mut names_by_alias: HashMap<u64, (String, u32)> = HashMap::new();
    for metric in &payloads[1].metrics {
        let name = metric.name.clone().context("DBIRTH names every metric")?;
        let alias = metric.alias.context("DBIRTH aliases every metric")?;
        names_by_alias.insert(
            alias,
            (name, metric.datatype.context("DBIRTH types every metric")?),
        );
    }
    for (i, payload) in payloads.iter().enumerate() {
        if let Some(seq) = payload.seq {
            assert_eq!(seq, i as u64 % 256, "Sparkplug seq of message {i}");
        }
    }
    let final_data = &payloads[1 + SAMPLES as usize];
    let value_of = |name: &str| {
        final_data.metrics.iter().find_map(|m| {
            let (n, _) = names_by_alias.get(&m.alias?)?;
            (n == name).then_some(m.value.clone()).flatten()
        })
    };
    assert_eq!(
        value_of("node.seq"),
        Some(MetricValue::Long(u64::from(SAMPLES)))
    );
    for reading in &last.readings {
        let name = CNC_METRICS[usize::from(reading.index)].1;
        assert_eq!(
            value_of(name),
            Some(MetricValue::Float(reading.value)),
            "{name}"
        );
    }

    if let Some(dir) = std::env::var_os("DEMOLAB_SPARKPLUG_CAPTURE_DIR") {
        write_capture(&PathBuf::from(dir), &captured, &payloads, &names_by_alias)?;
    }
    cancel.cancel();
    hub.shutdown().await?;
    Ok(())
}

/// Writes each payload and what an independent decoder must find in it.
fn write_capture(
    dir: &std::path::Path,
    captured: &[(String, Vec<u8>)],
    payloads: &[Payload],
    names_by_alias: &HashMap<u64, (String, u32)>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, ((topic, bytes), payload)) in captured.iter().zip(payloads).enumerate() {
        let metrics: Vec<Value> = payload
            .metrics
            .iter()
            .map(|m| {
                let datatype = m
                    .datatype
                    .or_else(|| {
                        m.alias
                            .and_then(|a| names_by_alias.get(&a))
                            .map(|(_, t)| *t)
                    })
                    .unwrap_or(DataType::Unknown as u32);
                let mut e = json!({ "datatype": datatype, "value": json_value(m.value.as_ref()) });
                if let Some(name) = &m.name {
                    e["name"] = json!(name);
                }
                if let Some(alias) = m.alias {
                    e["alias"] = json!(alias);
                }
                e["is_historical"] = json!(m.is_historical.unwrap_or(false));
                e
            })
            .collect();
        let mut expectation = json!({ "topic": topic, "metrics": metrics });
        if let Some(seq) = payload.seq {
            expectation["seq"] = json!(seq);
        }
        if let Some(timestamp) = payload.timestamp {
            expectation["timestamp"] = json!(timestamp);
        }
        std::fs::write(dir.join(format!("{i:04}.bin")), bytes)?;
        std::fs::write(
            dir.join(format!("{i:04}.json")),
            serde_json::to_vec_pretty(&expectation)?,
        )?;
    }
    Ok(())
}

fn json_value(value: Option<&MetricValue>) -> Value {
    match value {
        None => Value::Null,
        Some(MetricValue::Int(v)) => json!(v),
        Some(MetricValue::Long(v)) => json!(v),
        Some(MetricValue::Float(v)) => json!(f64::from(*v)),
        Some(MetricValue::Double(v)) => json!(v),
        Some(MetricValue::Boolean(v)) => json!(v),
        Some(MetricValue::String(v)) => json!(v),
        Some(MetricValue::Bytes(v)) => json!(v),
    }
}
