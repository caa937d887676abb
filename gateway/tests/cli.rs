//! The `demolab-gateway` binary as an operator meets it: `--check-config` on the shipped example
//! and on a broken file, and `--help`.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_demolab-gateway"))
}

#[test]
fn the_shipped_example_passes_check_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/gateway.toml");
    let output = gateway()
        .args(["--config", example, "--check-config"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("is valid") && stdout.contains("lab: aarhus-machining"),
        "{stdout}"
    );
}

#[test]
fn a_broken_config_fails_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "lab = \"lab-a\"\ngateway = \"GW\"\n[uplink]\nhost = \"h\"\n",
    )
    .expect("write");
    let output = gateway()
        .args(["--config", path.to_str().expect("utf-8"), "--check-config"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("`gateway`") && stderr.contains("\"GW\""),
        "{stderr}"
    );
}

#[test]
fn help_names_every_flag() {
    let output = gateway().arg("--help").output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("--config") && stdout.contains("--check-config"),
        "{stdout}"
    );
}

/// The binary end to end: a lab without a broker (the gateway embeds one), a node frame in,
/// Sparkplug out to the "hub" broker, metrics on the ops endpoint, SIGTERM → NDEATH and a clean exit.
#[test]
fn the_binary_runs_a_lab_with_its_own_broker_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::time::Duration;

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let hub_broker = runtime
        .block_on(broker::EmbeddedBroker::start(broker::BrokerConfig {
            bind: "127.0.0.1:0".parse().expect("valid"),
            ..broker::BrokerConfig::default()
        }))
        .expect("hub broker");
    let hub_port = hub_broker.local_addr().port();
    let (sparkplug_tx, sparkplug_rx) = std::sync::mpsc::channel::<String>();
    let (subscribed_tx, subscribed_rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let options = rumqttc::MqttOptions::new("hub-watch", "127.0.0.1", hub_port);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
        let _ = client
            .subscribe("spBv1.0/#", rumqttc::QoS::AtLeastOnce)
            .await;
        while let Ok(event) = events.poll().await {
            match event {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    let _ = subscribed_tx.send(());
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    let _ = sparkplug_tx.send(p.topic.clone());
                }
                _ => {}
            }
        }
    });
    subscribed_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscribed");

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    // No serial scan: a node plugged into this machine's USB is none of the test's business.
    std::fs::write(
        &config,
        format!(
            "lab = \"lab-bin\"\ngateway = \"gw-bin\"\n[uplink]\nhost = \"127.0.0.1\"\nport = {hub_port}\n\
             [southbound]\nembedded_listen = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n\
             [[nodes]]\nnode = \"{}\"\nmachine = \"mill-1\"\n\
             [serial]\nscan = false\n",
            protocol::golden::NODE
        ),
    )
    .expect("write config");
    let mut child = gateway()
        .args(["--config", config.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut banner = String::new();
    while !banner.contains("Press Ctrl-C") {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "banner ended early: {banner}"
        );
        banner.push_str(&line);
    }
    let field = |name: &str| {
        banner
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_else(|| panic!("no {name} in {banner}"))
    };
    let node_port: u16 = field("southbound: mqtt://127.0.0.1:")
        .parse()
        .expect("port");
    let ops = field("ops: http://");

    // The lab broker the gateway started takes no anonymous clients; each listed node has a
    // generated login beside the buffer.
    let secrets = std::fs::read_to_string(dir.path().join("lab-broker/secrets.toml"))
        .expect("the lab broker's logins");
    let node_name = protocol::golden::NODE.to_string();
    let node_password = secrets
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{node_name} = \"")))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no login for {node_name} in {secrets}"))
        .to_owned();
    runtime.block_on(async {
        let options = rumqttc::MqttOptions::new("stranger", "127.0.0.1", node_port);
        let (_client, mut events) = rumqttc::AsyncClient::new(options, 16);
        match events.poll().await {
            Err(rumqttc::ConnectionError::ConnectionRefused(_)) => {}
            other => panic!("an anonymous client got {other:?}"),
        }
    });

    // A node in the lab publishes its golden Hello and one sample to the gateway's own broker.
    runtime.block_on(async {
        let mut options = rumqttc::MqttOptions::new("lab-node", "127.0.0.1", node_port);
        options.set_credentials(node_name.clone(), node_password.clone());
        let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        let topic = protocol::node_topic::format(
            protocol::golden::NODE,
            protocol::node_topic::Direction::Up,
        );
        for frame in [protocol::golden::HELLO, protocol::golden::SAMPLES] {
            client
                .publish(
                    topic.as_str(),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    frame.to_vec(),
                )
                .await
                .expect("publish");
        }
    });
    let wait_for = |wanted: &str| loop {
        let topic = sparkplug_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no {wanted}"));
        if topic == wanted {
            break;
        }
    };
    wait_for("spBv1.0/lab-bin/DDATA/gw-bin/mill-1");

    let mut metrics = String::new();
    let mut stream = std::net::TcpStream::connect(ops.as_str()).expect("ops endpoint");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    stream.read_to_string(&mut metrics).expect("response");
    assert!(
        metrics.contains("demolab_gateway_buffer_depth{lab=\"lab-bin\",gateway=\"gw-bin\"}"),
        "{metrics}"
    );

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for("spBv1.0/lab-bin/NDEATH/gw-bin");
    assert!(child.wait().expect("exit").success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read");
    assert!(rest.contains("stopped"), "{rest}");
    runtime.block_on(hub_broker.shutdown()).expect("stop");
}
