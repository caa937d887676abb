//! The PLC simulator (a tokio-modbus server) polled by the real gateway's Modbus source: the hub
//! twin shows exactly the values the PLC's machine model holds, read as `f32` input registers,
//! a scaled `i32` holding register and a `u16` state register.

use std::time::Duration;

use anyhow::Context;
use demolab_tests::{gateway_config, start_gateway_with, start_hub, wait_until};
use gateway::source::modbus::{ModbusDevice, RegisterMap, RegisterTable, RegisterType};
use hub::twin::TwinKey;
use simulators::machines::MachineKind;
use simulators::plc::{Plc, STATE_REGISTER};
use simulators::timeline::Timeline;
use tokio_util::sync::CancellationToken;

fn register(
    metric: &str,
    unit: &str,
    table: RegisterTable,
    address: u16,
    data_type: RegisterType,
    scale: f64,
) -> anyhow::Result<RegisterMap> {
    Ok(RegisterMap {
        metric: metric.parse()?,
        unit: unit.into(),
        table,
        address,
        data_type,
        word_order: Default::default(),
        byte_order: Default::default(),
        scale,
        offset: 0.0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reads_the_plc_simulator_and_the_twin_shows_the_exact_values()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();

    // A compressor ten minutes into its shift, registers held still so the check is exact.
    let mut plc = Plc::new(
        MachineKind::Compressor.build(11),
        Timeline::default(),
        Duration::from_secs(1),
    );
    plc.advance(600);
    let memory = plc.memory();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let plc_addr = listener.local_addr()?;
    let plc_task = tokio::spawn(plc.run(listener, None, cancel.clone()));

    let snapshot = memory.snapshot();
    let names: Vec<&str> = snapshot.values.iter().map(|v| v.0).collect();
    assert_eq!(
        names,
        [
            "air.pressure_bar",
            "motor.power_w",
            "motor.duty_pct",
            "air.flow_l_min",
            "motor.starts",
            "state.code"
        ]
    );
    use RegisterTable::{Holding, Input};
    use RegisterType::{F32, I32, U16};
    let registers = vec![
        // Pressure as a PLC without floats gives it: centibar in an i32.
        register("air.pressure_bar", "bar", Holding, 0, I32, 0.01)?,
        register("motor.power_w", "W", Input, 2, F32, 1.0)?,
        register("motor.duty_pct", "%", Input, 4, F32, 1.0)?,
        register("air.flow_l_min", "l/min", Input, 6, F32, 1.0)?,
        register("motor.starts", "count", Input, 8, F32, 1.0)?,
        register("state.code", "state", Holding, STATE_REGISTER, U16, 1.0)?,
    ];
    let mut config = gateway_config(
        hub.mqtt_addr().port(),
        "lab-plc",
        "gw-plc",
        &data.path().join("buffer"),
    )?;
    config.modbus = vec![ModbusDevice {
        name: "compressor-plc".into(),
        machine: "compressor-1".parse()?,
        address: plc_addr.to_string(),
        unit_id: 1,
        poll_interval_ms: 100,
        timeout_ms: 1000,
        registers,
    }];
    let _gateway = start_gateway_with(config, &cancel).await?;

    let key = TwinKey {
        lab: "lab-plc".parse()?,
        machine: "compressor-1".parse()?,
    };
    let twins = hub.twins().clone();
    let reported = |metric: &str| {
        let (f, p) = metric.split_once('.')?;
        twins
            .get(&key)?
            .features
            .get(f)?
            .properties
            .get(p)?
            .reported
    };
    wait_until(
        Duration::from_secs(30),
        "every PLC value in the twin",
        || names.iter().all(|m| reported(m).is_some()),
    )
    .await?;

    for &(name, _, value) in &snapshot.values {
        let got = reported(name).with_context(|| format!("{name} reported"))?;
        if name == "air.pressure_bar" {
            // i32 centibar: exact to the hundredth, then carried as f32.
            let expected = (f64::from(value) * 100.0).round() / 100.0;
            assert_eq!(got, f64::from(expected as f32), "{name}: PLC {value}");
        } else {
            assert_eq!(got, f64::from(value), "{name}");
        }
    }
    let twin = twins.get(&key).context("twin")?;
    println!(
        "twin {} ({}) = PLC {:?}",
        twin.id, twin.kind, snapshot.values
    );

    cancel.cancel();
    plc_task.await??;
    Ok(())
}
