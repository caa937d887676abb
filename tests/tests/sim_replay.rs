//! Record and replay: a running node's frames are recorded from its lab broker (starting in
//! the middle of its session, so the recorder must ask for the Hello), then replayed through a
//! gateway to a hub, twice. Every replayed sample reaches the twin, in order, with its value.

use std::time::Duration;

use anyhow::Context;
use demolab_tests::{burst_node, start_gateway, start_hub, wait_until, within};
use hub::broker::{BrokerConfig, EmbeddedBroker};
use hub::twin::TwinKey;
use protocol::Frame;
use simulators::node::run_mqtt_node;
use simulators::session::{self, RecordLimits, ReplayOptions, Session};
use tokio_util::sync::CancellationToken;

const FRAMES: usize = 80;

/// The samples a gateway can use: those of the node after its first Hello, as (seq, power).
fn replayable(session: &Session) -> anyhow::Result<Vec<(u32, f32)>> {
    let mut greeted = false;
    let mut samples = Vec::new();
    for recorded in &session.frames {
        match protocol::codec::decode(&recorded.bytes)? {
            Frame::Hello(_) => greeted = true,
            Frame::Samples(s) if greeted => {
                // Metric index 0 of a simulated CNC node is spindle.power_w.
                let power = s
                    .readings
                    .iter()
                    .find(|r| r.index == 0)
                    .map(|r| r.value)
                    .context("power reading")?;
                samples.push((s.seq, power));
            }
            _ => {}
        }
    }
    Ok(samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_replays_through_a_gateway_sample_for_sample() -> anyhow::Result<()> {
    // The lab as it was: a broker and a node that is already running.
    let lab = EmbeddedBroker::start(BrokerConfig {
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..BrokerConfig::default()
    })
    .await?;
    let lab_port = lab.local_addr().port();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let mut node = burst_node(lab_port, 0x5e55, "mill-rec", 11, 0)?;
    node.max_samples = None;
    node.tick_interval = Duration::from_millis(10);
    let running = tokio::spawn(run_mqtt_node(node, cancel.clone()));

    let recorded = within(
        Duration::from_secs(30),
        "the recording",
        session::record(
            "127.0.0.1",
            lab_port,
            None,
            RecordLimits {
                duration: None,
                frames: Some(FRAMES),
            },
            cancel.clone(),
        ),
    )
    .await??;
    cancel.cancel();
    let _ = running.await;
    assert_eq!(recorded.frames.len(), FRAMES);
    let samples = replayable(&recorded)?;
    assert!(
        samples.len() > FRAMES / 2,
        "the Hello came early: {samples:?}"
    );
    assert!(
        samples.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "consecutive sequence numbers"
    );

    // Through the file format, as a real replay would go.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("session.jsonl");
    recorded.save(&file)?;
    let loaded = Session::load(&file)?;
    assert_eq!(loaded, recorded);

    // Later, elsewhere: a hub and a gateway that never saw the node.
    let hub = start_hub(dir.path()).await?;
    let port = hub.mqtt_addr().port();
    let replay_cancel = CancellationToken::new();
    let gateway = start_gateway(
        port,
        "lab-r",
        "gw-r",
        &dir.path().join("buffer"),
        &replay_cancel,
    )
    .await?;
    let options = ReplayOptions {
        speed: 20.0,
        fresh_boot: true,
        login: None,
    };
    let twins = hub.twins().clone();
    let key = TwinKey::parse("lab-r/mill-rec").context("key")?;
    let expected = samples.len() as u64;
    for round in 1..=2u64 {
        let stats = session::replay(
            &loaded,
            "127.0.0.1",
            port,
            options.clone(),
            replay_cancel.clone(),
        )
        .await?;
        assert_eq!(stats.published + stats.skipped_before_hello, FRAMES);
        wait_until(Duration::from_secs(10), "every replayed sample", || {
            twins
                .get(&key)
                .is_some_and(|t| t.samples == round * expected)
        })
        .await?;
        let twin = twins.get(&key).context("twin")?;
        let (last_seq, last_power) = samples[samples.len() - 1];
        assert_eq!(twin.last_seq, last_seq, "round {round}");
        assert_eq!(twin.value("spindle.power_w"), Some(f64::from(last_power)));
    }
    gateway.shutdown().await?;
    hub.shutdown().await?;
    lab.shutdown().await?;
    Ok(())
}
