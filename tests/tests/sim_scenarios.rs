//! The shipped demo scenarios produce the effects they promise, through the real data path:
//! scenario nodes (firmware core + machine model) → MQTT → gateway → Sparkplug → hub twin.
//!
//! Time: the scenarios run many times faster than real time. Everything asserted here is judged
//! in *simulated* time, which is exact: the node's `Samples.seq` counts sample periods, so the
//! twin's `last_seq` at the moment a property is observed is the simulated time of that value.
//! The hub's anomaly *score* is a function of the sample sequence alone (EWMAs per sample), so
//! compressing wall time does not change it. The anomaly *alarm*, by contrast, debounces the
//! score for `for_s = 60` seconds of sample timestamps, and the gateway stamps samples with its
//! own receive time; at 150× a simulated minute lasts 0.4 s of wall time, so the alarm's
//! debounce would span 150 simulated minutes. The test therefore asserts the score crossing its
//! threshold (the model's promise) and leaves the alarm's wall-clock debounce to the hub's own
//! alarm-engine tests.

use std::time::Duration;

use anyhow::{Context, ensure};
use demolab_tests::{start_gateway, start_hub};
use hub::twin::{Twin, TwinKey};
use simulators::scenario::Scenario;
use tokio_util::sync::CancellationToken;

/// A property's reported value.
fn prop(twin: &Twin, metric: &str) -> Option<f64> {
    let (feature, property) = metric.split_once('.')?;
    twin.features
        .get(feature)?
        .properties
        .get(property)?
        .reported
}

/// `(simulated seconds, value)` of one property, observed while a scenario streams.
#[derive(Debug, Default)]
struct Trace(Vec<(f64, f64)>);

impl Trace {
    fn first_above(&self, threshold: f64) -> Option<f64> {
        self.0.iter().find(|(_, v)| *v > threshold).map(|(t, _)| *t)
    }
    fn max_until(&self, t_max: f64) -> f64 {
        self.0
            .iter()
            .filter(|(t, _)| *t <= t_max)
            .map(|(_, v)| *v)
            .fold(f64::MIN, f64::max)
    }
}

/// Runs `scenario` (cut to `duration`) at `speed` through a gateway and hub, sampling the twin
/// of `machine` every 5 ms of wall time; returns the traces of `metrics`.
async fn run_through_hub(
    scenario: &Scenario,
    speed: f64,
    machine: &str,
    metrics: &[&str],
) -> anyhow::Result<Vec<Trace>> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let lab = scenario.lab.as_str();
    let _gateway = start_gateway(
        hub.mqtt_addr().port(),
        lab,
        "gw-sim",
        &data.path().join("buffer"),
        &cancel,
    )
    .await?;
    let mut nodes = scenario.spawn(7, speed, "127.0.0.1", hub.mqtt_addr().port(), None, &cancel);
    let key = TwinKey {
        lab: lab.parse()?,
        machine: machine.parse()?,
    };
    let period_s = scenario.sample_period.as_secs_f64();
    let samples = scenario.samples();
    let mut traces: Vec<Trace> = metrics.iter().map(|_| Trace::default()).collect();
    let twins = hub.twins().clone();
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs_f64(scenario.duration.as_secs_f64() / speed + 60.0);
    loop {
        if let Some(twin) = twins.get(&key) {
            let t = f64::from(twin.last_seq) * period_s;
            for (trace, metric) in traces.iter_mut().zip(metrics) {
                if let Some(v) = prop(&twin, metric) {
                    trace.0.push((t, v));
                }
            }
            if twin.last_seq >= samples {
                break;
            }
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{machine} did not deliver {samples} samples in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while let Some(joined) = nodes.join_next().await {
        let report = joined.context("node task")?.context("node")?;
        ensure!(
            report.sent == samples,
            "node {} sent {}",
            report.node,
            report.sent
        );
    }
    Ok(traces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictive_maintenance_raises_vibration_and_the_anomaly_score_in_time()
-> anyhow::Result<()> {
    let mut s = Scenario::find("predictive-maintenance")?;
    let expect_score = s
        .expectations
        .iter()
        .find(|x| x.metric == "anomaly.score")
        .context("the scenario promises an anomaly score")?
        .clone();
    let expect_vib = s
        .expectations
        .iter()
        .find(|x| x.metric == "spindle.vibration_rms")
        .context("the scenario promises vibration")?
        .clone();
    // Only as long as the promise needs.
    s.duration = expect_score.within.max(expect_vib.within);
    let traces = run_through_hub(
        &s,
        150.0,
        "mill-1",
        &["anomaly.score", "spindle.vibration_rms"],
    )
    .await?;
    let (score, vib) = (&traces[0], &traces[1]);
    let wear_starts = 600.0;
    let before = vib.max_until(wear_starts);
    let crossed_vib = vib
        .first_above(expect_vib.above.unwrap_or(f64::MAX))
        .context("vibration never rose above its promised level")?;
    let crossed = score
        .first_above(expect_score.above.unwrap_or(f64::MAX))
        .context("the anomaly score never crossed its threshold")?;
    let max_score_before = score.max_until(wear_starts);
    println!(
        "vibration max {before:.2} mm/s before wear, above {:?} at {crossed_vib:.0} s; \
         anomaly score max {max_score_before:.2} before wear, above {:?} at {crossed:.0} s (simulated)",
        expect_vib.above, expect_score.above
    );
    ensure!(before < 4.0, "healthy vibration already at {before}");
    ensure!(crossed_vib <= expect_vib.within.as_secs_f64());
    ensure!(
        max_score_before < expect_score.above.unwrap_or(0.0),
        "the score crossed before the wear started: {max_score_before}"
    );
    ensure!(
        crossed > wear_starts && crossed <= expect_score.within.as_secs_f64(),
        "score crossed at {crossed} s"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energy_waste_makes_the_idle_compressor_cycle_after_the_leak() -> anyhow::Result<()> {
    let s = Scenario::find("energy-waste")?;
    let expect = s.expectations.first().context("a promise")?.clone();
    let traces = run_through_hub(
        &s,
        1200.0,
        "compressor-1",
        &["motor.duty_pct", "energy.total_wh"],
    )
    .await?;
    let (duty, energy) = (&traces[0], &traces[1]);
    // The leak starts at 22:00, one hour after the scenario's 21:00 start.
    let leak = 3600.0;
    let duty_before = duty.max_until(leak);
    let crossed = duty
        .first_above(expect.above.unwrap_or(f64::MAX))
        .context("the duty cycle never rose")?;
    let at = |t: f64| {
        energy
            .0
            .iter()
            .take_while(|(ts, _)| *ts <= t)
            .last()
            .map_or(0.0, |(_, v)| *v)
    };
    let (e_leak, e_end) = (at(leak), at(s.duration.as_secs_f64()));
    println!(
        "duty max {duty_before:.2} % before the leak, above {:?} % at {crossed:.0} s; \
         energy {e_leak:.0} Wh before, {:.0} Wh in the 2 h after (simulated)",
        expect.above,
        e_end - e_leak
    );
    ensure!(
        duty_before < 2.0,
        "duty {duty_before} with no demand and no leak"
    );
    ensure!(crossed > leak && crossed <= expect.within.as_secs_f64());
    ensure!(
        e_end - e_leak > 10.0 * e_leak.max(1.0),
        "leak energy {} vs {e_leak}",
        e_end - e_leak
    );
    Ok(())
}

/// The promises judged on the model alone (no hub-derived property): checked offline, in
/// simulated time, for every shipped scenario.
#[test]
fn every_model_metric_promise_holds_offline() -> anyhow::Result<()> {
    for (name, _) in simulators::scenario::SHIPPED {
        let s = Scenario::find(name)?;
        for x in &s.expectations {
            if x.metric == "anomaly.score" {
                continue; // hub-derived: asserted through the hub above
            }
            let i = s
                .machines
                .iter()
                .position(|m| m.id == x.machine)
                .context("machine")?;
            let mut model = s.build_machine(i, 7).context("model")?;
            let mut timeline = s.timeline(i);
            let index = model
                .metrics()
                .iter()
                .position(|(n, _)| *n == x.metric)
                .with_context(|| format!("{name}: no metric {}", x.metric))?;
            let steps = x.within.as_millis() / s.sample_period.as_millis();
            let mut met = None;
            for k in 0..steps {
                let now_ms = u64::try_from(k * s.sample_period.as_millis())?;
                timeline.try_apply_due(&mut *model, now_ms)?;
                model.step(s.sample_period);
                let v = f64::from(model.values()[index].2);
                if x.above.is_some_and(|a| v > a) || x.below.is_some_and(|b| v < b) {
                    met = Some((k + 1) as f64 * s.sample_period.as_secs_f64());
                    break;
                }
            }
            let t = met.with_context(|| {
                format!(
                    "{name}: {} {} not met within {:?}",
                    x.machine, x.metric, x.within
                )
            })?;
            println!(
                "{name}: {} {} met at {t:.0} s (promised {:?})",
                x.machine, x.metric, x.within
            );
        }
    }
    Ok(())
}

/// The catalogue kinds written for the simulator models parse, and the hub infers each model's
/// kind from the metrics its node announces (plus the gateway's derived energy).
#[test]
fn the_hub_catalogue_has_a_kind_for_every_model() -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hub/catalogue");
    let catalogue = hub::catalogue::Catalogue::with_dir(&dir)?;
    for kind in simulators::machines::MachineKind::ALL {
        let model = kind.build(1);
        let mut metrics: Vec<&str> = model.metrics().iter().map(|(n, _)| *n).collect();
        metrics.push("energy.total_wh");
        let inferred = catalogue.infer(metrics.iter().copied());
        ensure!(inferred.id == kind.id(), "{kind}: inferred {}", inferred.id);
        for (name, unit) in model.metrics() {
            let spec = inferred
                .metric(name)
                .with_context(|| format!("{kind}: catalogue lacks {name}"))?;
            ensure!(
                spec.unit == unit.symbol(),
                "{kind} {name}: {} vs {}",
                spec.unit,
                unit.symbol()
            );
        }
    }
    Ok(())
}
