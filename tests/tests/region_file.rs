//! A region file with the sources that talk to real hardware — a node on a serial port and a
//! node on the region's broker — played here by the simulators from outside the region: the
//! region's gateway reads the port the file names and lets in the node id it names, with the
//! broker login the region generated, and both twins come alive on the hub's REST API.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context;
use demolab_demo::region::{Region, RegionOptions};
use demolab_demo::region_file::RegionFile;
use demolab_tests::{http_get, wait_until};
use hub::twin::TwinKey;
use serialport::{SerialPort, TTYPort};
use simulators::kit_node::{KitNodeConfig, spawn_serial_kit_node};
use simulators::machines::MachineKind;
use simulators::node::{MqttNodeConfig, NodeLogin, fresh_boot_id, run_controlled_node};
use simulators::timeline::LiveControl;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);
const SERIAL_NODE: &str = "00000000000000b1";
const MQTT_NODE: &str = "00000000000000b2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_serial_and_mqtt_nodes_named_in_a_region_file_become_live_twins() -> anyhow::Result<()>
{
    let data = tempfile::tempdir()?;
    let (mut master, slave) = TTYPort::pair().context("pseudo-terminal")?;
    master.set_timeout(Duration::from_millis(20))?;
    let port = slave.name().context("pty name")?;
    let file = RegionFile::parse(&format!(
        r#"
[[labs]]
id = "field-lab"
gateway = "gw-field"
public = true

[[labs.machines]]
id = "lathe-9"
kind = "retrofit-lathe"
source = {{ type = "serial", port = "{port}", node = "{SERIAL_NODE}" }}

[[labs.machines]]
id = "compressor-9"
kind = "compressor"
source = {{ type = "mqtt-node", node = "{MQTT_NODE}" }}
"#
    ))?;
    let region = Region::start_with(
        RegionOptions {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            http_port: 0,
            mqtt_port: 0,
            data_dir: data.path().to_owned(),
            sample_period: Duration::from_millis(100),
            ..RegionOptions::default()
        },
        file,
    )
    .await?;
    let outcome = check(&region, master, &port).await;
    region.shutdown().await?;
    drop(slave);
    outcome
}

async fn check(region: &Region, master: TTYPort, port: &str) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    // The node on the port: the retrofit kit (real firmware runtime) with the file's node id.
    let serial_node = SERIAL_NODE.parse()?;
    let kit = spawn_serial_kit_node(
        KitNodeConfig {
            node: serial_node,
            machine: "lathe-9".parse()?,
            boot: fresh_boot_id(serial_node),
            seed: 9,
            sample_period: Duration::from_millis(100),
            tick_interval: Duration::from_millis(100),
            max_samples: None,
        },
        master,
    );
    // The network node logs in with the password the region generated for its id.
    let mqtt_node = MQTT_NODE.parse()?;
    let mqtt = region.hub().mqtt_addr();
    let password = region
        .accounts()
        .password(MQTT_NODE)
        .context("a generated login for the file's MQTT node")?
        .to_owned();
    let node = tokio::spawn(run_controlled_node(
        MqttNodeConfig {
            node: mqtt_node,
            machine: "compressor-9".parse()?,
            boot: fresh_boot_id(mqtt_node),
            seed: 9,
            sample_period: Duration::from_millis(100),
            tick_interval: Duration::from_millis(100),
            max_samples: None,
            broker_host: mqtt.ip().to_string(),
            broker_port: mqtt.port(),
            login: Some(NodeLogin {
                username: MQTT_NODE.into(),
                password,
            }),
        },
        MachineKind::Compressor.build(9),
        LiveControl::default(),
        cancel.clone(),
    ));

    let missing = region.until_running(DEADLINE).await;
    assert!(missing.is_empty(), "not live: {missing:?}");
    // Born is not yet sampled: wait for each twin's first accepted sample.
    let twins = region.hub().twins().clone();
    for id in ["field-lab/lathe-9", "field-lab/compressor-9"] {
        let key = TwinKey::parse(id).context("twin id")?;
        wait_until(DEADLINE, id, || {
            twins.get(&key).is_some_and(|twin| twin.samples > 0)
        })
        .await?;
    }
    let web = region.hub().http_addr();
    for (id, kind) in [
        ("field-lab/lathe-9", "retrofit-lathe"),
        ("field-lab/compressor-9", "compressor"),
    ] {
        let (status, body) = http_get(web, &format!("/api/v1/twins/{id}")).await?;
        assert_eq!(status, 200, "{body}");
        let twin: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(twin["connectivity"]["online"], true, "{twin}");
        assert_eq!(twin["kind"], kind, "{twin}");
        assert!(twin["samples"].as_u64().is_some_and(|n| n > 0), "{twin}");
    }
    assert!(
        region
            .banner()
            .contains(&format!("lathe-9 on serial {port}")),
        "{}",
        region.banner()
    );

    cancel.cancel();
    let _ = node.await;
    let _ = tokio::task::spawn_blocking(move || kit.join()).await;
    Ok(())
}
