//! Bad input on every kind of source at once: garbage and a bad-CRC frame on a serial port, a
//! bad-CRC frame from an MQTT node, a Modbus device that never answers. Each is counted with
//! its reason, and the good sources keep flowing, sample for sample.

use std::io::Write;
use std::time::Duration;

use demolab_tests::{burst_node, gateway_config, start_gateway_with, start_hub, wait_until};
use gateway::source::modbus::{ModbusDevice, RegisterMap, RegisterTable, RegisterType};
use gateway::source::serial::SerialConfig;
use protocol::node_topic::{Direction, format};
use protocol::{Frame, Reading, golden};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serialport::SerialPort;
use simulators::node::run_mqtt_node;
use tokio_util::sync::CancellationToken;

const SERIAL_SAMPLES: u32 = 100;
const MQTT_SAMPLES: u32 = 200;

fn framed(frame: &Frame) -> Vec<u8> {
    let mut buf = [0u8; protocol::cobs::MAX_WIRE_LEN];
    protocol::cobs::encode_framed(frame, &mut buf)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

fn samples(seq: u32) -> Frame {
    let mut frame = golden::samples();
    if let Frame::Samples(s) = &mut frame {
        s.seq = seq;
        s.readings[0] = Reading {
            index: 0,
            value: seq as f32,
        };
    }
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_counted_by_reason_and_the_good_sources_keep_flowing()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();

    // A "PLC" that accepts the connection and never answers a request.
    let silent_plc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let plc_addr = silent_plc.local_addr()?;
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent_plc.accept().await {
            held.push(socket);
        }
    });

    let (mut master, slave) = serialport::TTYPort::pair()?;
    let slave_path = slave
        .name()
        .ok_or_else(|| anyhow::anyhow!("pty without a name"))?;

    let mut config = gateway_config(port, "lab-src", "gw-src", &data.path().join("buffer"))?;
    config.serial = Some(SerialConfig {
        ports: vec![slave_path.into()],
        ..SerialConfig::default()
    });
    config.nodes.insert(golden::NODE, "serial-mill".parse()?);
    config.modbus = vec![ModbusDevice {
        name: "silent-plc".into(),
        machine: "press-1".parse()?,
        address: plc_addr.to_string(),
        unit_id: 1,
        poll_interval_ms: 100,
        timeout_ms: 100,
        registers: vec![RegisterMap {
            metric: "press.force_kn".parse()?,
            unit: String::new(),
            table: RegisterTable::Holding,
            address: 0,
            data_type: RegisterType::U16,
            word_order: Default::default(),
            byte_order: Default::default(),
            scale: 1.0,
            offset: 0.0,
        }],
    }];
    let cancel = CancellationToken::new();
    // Serial readers run on blocking threads: stop them even when the test fails early, or the
    // runtime would wait for them forever.
    let _stop_on_failure = cancel.clone().drop_guard();
    let gateway = start_gateway_with(config, &cancel).await?;

    // Serial: Hello, then samples with garbage and one corrupted frame in the middle.
    let mut serial = framed(&golden::hello());
    for seq in 1..=SERIAL_SAMPLES {
        if seq == 50 {
            serial.extend([0x13, 0x37, 0x42, 0x00]);
            let mut corrupt = framed(&samples(999));
            corrupt[8] ^= 0x40;
            serial.extend(corrupt);
        }
        serial.extend(framed(&samples(seq)));
    }
    master.write_all(&serial)?;

    // MQTT: a node sends a corrupted frame, and another node sends its samples.
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("bad-node", "127.0.0.1", port), 16);
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let mut bad = golden::SAMPLES.to_vec();
    bad[6] ^= 0x01;
    client
        .publish(
            format(protocol::NodeId(0xbad), Direction::Up).as_str(),
            QoS::AtLeastOnce,
            false,
            bad,
        )
        .await?;
    let report = run_mqtt_node(
        burst_node(port, 0x600d, "mill-good", 3, MQTT_SAMPLES)?,
        cancel.clone(),
    )
    .await?;
    assert_eq!(report.sent, MQTT_SAMPLES);

    let twins = hub.twins().clone();
    let serial_key = hub::twin::TwinKey {
        lab: "lab-src".parse()?,
        machine: "serial-mill".parse()?,
    };
    let mqtt_key = hub::twin::TwinKey {
        lab: "lab-src".parse()?,
        machine: "mill-good".parse()?,
    };
    let stats = gateway.stats().clone();
    wait_until(
        Duration::from_secs(30),
        "both good sources complete and a Modbus timeout",
        || {
            twins
                .get(&serial_key)
                .is_some_and(|t| t.samples == u64::from(SERIAL_SAMPLES))
                && twins
                    .get(&mqtt_key)
                    .is_some_and(|t| t.samples == u64::from(MQTT_SAMPLES))
                && stats.snapshot().dropped(gateway::DropReason::ModbusTimeout) >= 1
        },
    )
    .await?;
    let snapshot = stats.snapshot();
    let decode = |reason: &str| {
        snapshot
            .decode_failures
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        decode("bad_crc"),
        2,
        "one on the serial port, one from the MQTT node"
    );
    assert_eq!(
        decode("bad_cobs") + decode("truncated") + decode("malformed"),
        1,
        "the garbage run"
    );
    assert_eq!(snapshot.dropped(gateway::DropReason::BadFrame), 3);
    assert_eq!(
        twins.get(&serial_key).map(|t| t.last_seq),
        Some(SERIAL_SAMPLES)
    );

    poller.abort();
    held.abort();
    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
