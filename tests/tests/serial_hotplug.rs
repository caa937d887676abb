//! Plug-and-play serial nodes, end to end: a gateway that scans for serial devices is already
//! running when a node (the real firmware on the simulated retrofit kit) appears on a new
//! pseudo-terminal behind a path matching its scan pattern. Nothing names the node or its port
//! in the configuration, yet its machine's twin is born on the hub and every sample arrives once,
//! in order. Unplugging it is reported and the machine goes offline at once (not after the
//! silence timeout); plugging it back resumes.
//!
//! `/dev/ttyUSB*` cannot be created in a test, so the "device" is a symlink in a per-test
//! directory to the pty's slave, as udev's `/dev/serial/by-id` links are to real adapters.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use demolab_tests::{gateway_config, get_json, start_gateway_with, start_hub, wait_until};
use futures_util::StreamExt;
use gateway::source::serial::SerialConfig;
use protocol::NodeId;
use serialport::{SerialPort, TTYPort};
use simulators::kit_node::{KitNodeConfig, KitNodeHandle, spawn_serial_kit_node};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const LAB: &str = "lab-plug";
const GATEWAY: &str = "gw-plug";
const MACHINE: &str = "mill-plug";
const NODE: NodeId = NodeId(0x00c0_ffee_0000_0099);
/// Samples per plug-in; enough to cross several gateway batches.
const SAMPLES: u32 = 60;
const DEADLINE: Duration = Duration::from_secs(20);

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A node plugged in: its firmware thread on the pty's master, and the slave held open until
/// unplugged so nothing it wrote is lost before the gateway opens the device.
struct Plugged {
    node: KitNodeHandle,
    slave: TTYPort,
}

/// Creates a pty and makes it appear at `device` (atomically, as a hot-plugged device node does).
fn new_device(device: &Path) -> anyhow::Result<(TTYPort, TTYPort)> {
    let (mut master, slave) = TTYPort::pair()?;
    // Short: the firmware loop polls its port for commands every tick.
    master.set_timeout(Duration::from_millis(2))?;
    let target = slave
        .name()
        .ok_or_else(|| anyhow::anyhow!("pty without a name"))?;
    let staging = device.with_extension("new");
    symlink(&target, &staging)?;
    std::fs::rename(&staging, device)?;
    Ok((master, slave))
}

fn plug_in(master: TTYPort, slave: TTYPort, boot: u32) -> anyhow::Result<Plugged> {
    let config = KitNodeConfig {
        node: NODE,
        machine: MACHINE.parse()?,
        boot,
        seed: u64::from(boot),
        sample_period: Duration::from_secs(1),
        tick_interval: Duration::from_millis(2),
        max_samples: Some(SAMPLES),
    };
    Ok(Plugged {
        node: spawn_serial_kit_node(config, master),
        slave,
    })
}

/// Pulls the plug: the node stops, its end of the pty closes (the gateway's read fails as on a
/// USB disconnect) and the device node disappears.
fn unplug(plugged: Plugged, device: &Path) -> anyhow::Result<()> {
    let report = plugged.node.join();
    anyhow::ensure!(
        report.recorded == SAMPLES,
        "node sampled {}",
        report.recorded
    );
    drop(plugged.slave);
    std::fs::remove_file(device)?;
    Ok(())
}

/// The `seq` of the machine's sample changes on the stream, until `count` have arrived.
async fn sample_seqs(stream: &mut Stream, count: usize) -> anyhow::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let message = tokio::time::timeout(DEADLINE, stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no stream message within {DEADLINE:?}; seqs {seqs:?}"))?;
        let Some(Ok(Message::Text(text))) = message else {
            anyhow::bail!("stream ended after seqs {seqs:?}")
        };
        let change: serde_json::Value = serde_json::from_str(text.as_str())?;
        if change["kind"] == "sample" && change["machine"] == MACHINE {
            seqs.push(change["seq"].as_u64().unwrap_or_default());
        }
    }
    Ok(seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_plugged_in_after_start_is_adopted_unplugged_goes_offline_and_replugged_resumes()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dev = tempfile::tempdir()?;
    let device: PathBuf = dev.path().join("ttyUSB0");
    let hub = start_hub(data.path()).await?;
    let cancel = CancellationToken::new();
    // Serial readers run on blocking threads: stop them even when the test fails early.
    let _stop_on_failure = cancel.clone().drop_guard();

    let mut config = gateway_config(
        hub.mqtt_addr().port(),
        LAB,
        GATEWAY,
        &data.path().join("buffer"),
    )?;
    // No ports and no [[nodes]]: only the scan can find the node.
    config.serial = Some(SerialConfig {
        scan: true,
        scan_patterns: vec![format!("{}/ttyUSB*", dev.path().display())],
        reopen_interval: Duration::from_millis(50),
        ..SerialConfig::default()
    });
    // Longer than the test: the machine must go offline because its port went away, not
    // because it fell silent.
    config.liveness_timeout = Duration::from_secs(120);
    let gateway = start_gateway_with(config, &cancel).await?;
    let stats = gateway.stats().clone();
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/api/v1/stream?lab={LAB}",
        hub.http_addr()
    ))
    .await?;
    let http = hub.http_addr();
    let twin_path = format!("/api/v1/twins/{LAB}/{MACHINE}");
    assert_eq!(
        stats.snapshot().serial_ports_adopted,
        0,
        "nothing to adopt yet"
    );

    // Plug in.
    let (master, slave) = new_device(&device)?;
    wait_until(DEADLINE, "the gateway to open the new device", || {
        stats.snapshot().serial_ports_open == 1
    })
    .await?;
    let plugged = plug_in(master, slave, 1)?;
    let seqs = sample_seqs(&mut stream, SAMPLES as usize).await?;
    assert_eq!(
        seqs,
        (1..=u64::from(SAMPLES)).collect::<Vec<_>>(),
        "every sample once, in order"
    );
    let twin = get_json(http, &twin_path).await?;
    assert_eq!(twin["connectivity"]["online"], true, "{twin}");
    let snapshot = stats.snapshot();
    assert_eq!(
        (snapshot.serial_ports_adopted, snapshot.serial_ports_failed),
        (1, 0)
    );

    // Unplug: reported by the gateway, and the machine goes offline on the hub.
    unplug(plugged, &device)?;
    wait_until(DEADLINE, "the gateway to notice the unplug", || {
        let s = stats.snapshot();
        s.serial_ports_lost == 1 && s.serial_ports_open == 0
    })
    .await?;
    let twins = hub.twins().clone();
    let key = hub::twin::TwinKey {
        lab: LAB.parse()?,
        machine: MACHINE.parse()?,
    };
    wait_until(DEADLINE, "the twin to go offline", || {
        twins.get(&key).is_some_and(|t| !t.connectivity.online)
    })
    .await?;
    let twin = get_json(http, &twin_path).await?;
    assert_eq!(twin["connectivity"]["online"], false, "{twin}");

    // Plug back in: the node rebooted (new boot id), so its numbering starts again at 1.
    let (master, slave) = new_device(&device)?;
    wait_until(DEADLINE, "the gateway to reopen the device", || {
        stats.snapshot().serial_ports_open == 1
    })
    .await?;
    let plugged = plug_in(master, slave, 2)?;
    let seqs = sample_seqs(&mut stream, SAMPLES as usize).await?;
    assert_eq!(
        seqs,
        (1..=u64::from(SAMPLES)).collect::<Vec<_>>(),
        "the new boot's samples once, in order"
    );
    let twin = get_json(http, &twin_path).await?;
    assert_eq!(twin["connectivity"]["online"], true, "{twin}");
    let samples = twins.get(&key).map(|t| t.samples);
    assert_eq!(
        samples,
        Some(2 * u64::from(SAMPLES)),
        "both plug-ins, nothing more"
    );

    let snapshot = stats.snapshot();
    assert_eq!(
        (
            snapshot.serial_ports_adopted,
            snapshot.serial_ports_failed,
            snapshot.serial_ports_lost
        ),
        (2, 0, 1)
    );
    let lab = LAB.parse()?;
    let gw = GATEWAY.parse()?;
    let metrics = gateway::render_prometheus(&[(&lab, &gw, snapshot)]);
    assert!(
        metrics.contains(&format!(
            "demolab_gateway_serial_ports_adopted_total{{lab=\"{LAB}\",gateway=\"{GATEWAY}\"}} 2"
        )),
        "{metrics}"
    );

    unplug(plugged, &device)?;
    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
