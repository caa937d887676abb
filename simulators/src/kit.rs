//! A retrofit sensor kit clipped to a simulated machine, running the real firmware drivers on
//! register-level simulated chips: SHT3x on the coolant line, LIS3DH on the spindle housing,
//! ADS1115 with a current clamp on the spindle feed, and a digital "running" signal.
//!
//! The machine model drives the chips' physical inputs; the firmware reads them through its
//! drivers exactly as on a board, computes its features, and reports sensor faults.

use embedded_hal::delay::DelayNs;
use firmware::drivers::ads1115::{self, Ads1115, Channel, Gain};
use firmware::drivers::digital::DebouncedInput;
use firmware::drivers::lis3dh::{self, Acceleration, Lis3dh};
use firmware::drivers::sht3x::{self, Repeatability, Sht3x};
use firmware::features::{EnergyCounter, StateThresholds, window_stats_3axis};
use protocol::{MetricDescriptor, MetricName, Unit};

use crate::chips::ads1115::SimAds1115;
use crate::chips::digital::SimPin;
use crate::chips::lis3dh::SimLis3dh;
use crate::chips::sht3x::{SharedSht3x, SimSht3x};
use crate::chips::{Fault, SimI2c};
use crate::machines::{CncReading, MachineState};
use crate::rng::SimRng;

/// What the kit measures, in metric-index order.
pub const KIT_METRICS: [(u8, &str, Unit); 7] = [
    (0, "spindle.power_w", Unit::Watt),
    (1, "vibration.rms_g", Unit::StandardGravity),
    (2, "vibration.crest", Unit::Dimensionless),
    (3, "coolant.temperature_c", Unit::Celsius),
    (4, "state.code", Unit::StateCode),
    (5, "energy.total_wh", Unit::WattHour),
    (6, "production.cycles", Unit::Count),
];

/// Off below the control cabinet's standby draw; running once the spindle cuts.
const MILL_THRESHOLDS: StateThresholds = StateThresholds {
    off_below_w: 200.0,
    running_from_w: 1500.0,
};

/// Amps per volt of the clamp's output (a 0–10 V / 0–100 A clamp).
pub const CLAMP_A_PER_V: f32 = 10.0;
/// Supply of the simulated machine: single phase, V.
pub const LINE_VOLTAGE: f32 = 230.0;
/// Accelerometer samples per window (one FIFO).
const WINDOW: usize = 32;
/// Vibration frequency of the simulated spindle, Hz (3000 rpm).
const SPINDLE_HZ: f32 = 50.0;
/// Accelerometer data rate, Hz.
const ODR_HZ: f32 = 400.0;

/// The descriptors of [`KIT_METRICS`] with a sample period.
pub fn kit_descriptors(period_ms: u32) -> heapless::Vec<MetricDescriptor, 16> {
    KIT_METRICS
        .iter()
        .filter_map(|&(index, name, unit)| {
            Some(MetricDescriptor {
                index,
                name: MetricName::new(name).ok()?,
                unit,
                period_ms,
            })
        })
        .collect()
}

struct NoWait;

impl DelayNs for NoWait {
    // Simulated chips finish instantly; the firmware still calls its datasheet waits.
    fn delay_ns(&mut self, _ns: u32) {}
}

/// One reading of the kit: what worked, and which sensors failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sensed {
    /// `(metric index, value)` of the sensors that answered.
    pub readings: Vec<(u8, f32)>,
    /// `(metric index, error code)` of the sensors that failed (1 bus, 2 data check).
    pub faults: Vec<(u8, u8)>,
}

/// Handles to the kit's chips, to inject faults.
#[derive(Debug, Clone)]
pub struct KitChips {
    /// The temperature/humidity sensor.
    pub sht3x: SharedSht3x,
    /// The accelerometer.
    pub lis3dh: SimLis3dh,
    /// The ADC of the current clamp.
    pub ads1115: SimAds1115,
    /// The running signal.
    pub running: SimPin,
}

/// The kit: drivers on their buses, and the node-side feature state.
pub struct RetrofitKit {
    sht3x: Sht3x<SimI2c>,
    lis3dh: Option<Lis3dh<SimI2c>>,
    ads1115: Ads1115<SimI2c>,
    running: DebouncedInput<SimPin>,
    chips: KitChips,
    energy: EnergyCounter,
    rng: SimRng,
    phase: f32,
}

impl core::fmt::Debug for RetrofitKit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RetrofitKit")
            .field("chips", &self.chips)
            .finish()
    }
}

impl RetrofitKit {
    /// A kit with fresh chips; `seed` makes its vibration noise reproducible.
    pub fn new(seed: u64) -> Self {
        let sht_chip = SimSht3x::new(0x44).shared();
        let lis_chip = SimLis3dh::new(0x18);
        let ads_chip = SimAds1115::new(0x48);
        let pin = SimPin::new(false);
        let mut ads = Ads1115::new(bus_with(ads_chip.clone()), ads1115::Address::Gnd);
        ads.set_gain(Gain::V6_144);
        let lis = Lis3dh::new(bus_with(lis_chip.clone()), lis3dh::Address::Sa0Low)
            .ok()
            .and_then(|mut lis| {
                lis.configure(lis3dh::DataRate::Hz400, lis3dh::Range::G4)
                    .ok()?;
                lis.enable_fifo_stream().ok()?;
                Some(lis)
            });
        Self {
            sht3x: Sht3x::new(bus_with(sht_chip.clone()), sht3x::Address::Low),
            lis3dh: lis,
            ads1115: ads,
            running: DebouncedInput::new(pin.clone(), 0),
            chips: KitChips {
                sht3x: sht_chip,
                lis3dh: lis_chip,
                ads1115: ads_chip,
                running: pin,
            },
            energy: EnergyCounter::default(),
            rng: SimRng::new(seed ^ 0x6b17),
            phase: 0.0,
        }
    }

    /// The chips, to inject faults or read their state.
    pub fn chips(&self) -> &KitChips {
        &self.chips
    }

    /// Sets the machine's physics on the chips, then reads them through the firmware drivers.
    pub fn sense(&mut self, uptime_ms: u64, machine: &CncReading) -> Sensed {
        self.drive_chips(machine);
        let mut readings = Vec::new();
        let mut faults = Vec::new();
        let mut delay = NoWait;

        match self.ads1115.read_volts(Channel::A0, &mut delay) {
            Ok(volts) => {
                let current = ads1115::clamp_current_a(volts, CLAMP_A_PER_V);
                let power = ads1115::power_w(current, LINE_VOLTAGE, 1.0, ads1115::Phases::Single);
                readings.push((0, power));
                readings.push((5, self.energy.add(uptime_ms, power) as f32));
            }
            Err(err) => faults.push((0, error_code(matches!(err, ads1115::Error::Timeout)))),
        }
        match self.read_vibration() {
            Some(Ok((rms, crest))) => {
                readings.push((1, rms));
                readings.push((2, crest));
            }
            Some(Err(code)) => faults.push((1, code)),
            // The accelerometer did not answer at boot.
            None => faults.push((1, 1)),
        }
        match self.sht3x.measure(Repeatability::Medium, &mut delay) {
            Ok(measurement) => readings.push((3, measurement.temperature_c)),
            Err(err) => faults.push((3, error_code(matches!(err, sht3x::Error::Crc { .. })))),
        }
        // State from the spindle's power (the node's own judgement, not the simulator's); without
        // a power reading the running signal still tells off from on.
        let _ = self.running.poll(uptime_ms);
        let power = readings.iter().find(|r| r.0 == 0).map(|r| r.1);
        let state = match power {
            Some(watts) => MILL_THRESHOLDS.state(watts),
            None if self.running.is_high() => MachineState::Idle,
            None => MachineState::Off,
        };
        readings.push((4, f32::from(state.code())));
        // Each part cycle raises the running signal once.
        readings.push((6, self.running.rising_edges() as f32));
        Sensed { readings, faults }
    }

    fn read_vibration(&mut self) -> Option<Result<(f32, f32), u8>> {
        let lis = self.lis3dh.as_mut()?;
        let mut window = [Acceleration {
            x_g: 0.0,
            y_g: 0.0,
            z_g: 0.0,
        }; WINDOW];
        Some(match lis.read_fifo(&mut window) {
            Ok(read) if read.count > 0 => {
                let (mut x, mut y, mut z) = ([0.0f32; WINDOW], [0.0f32; WINDOW], [0.0f32; WINDOW]);
                for (i, a) in window[..read.count].iter().enumerate() {
                    (x[i], y[i], z[i]) = (a.x_g, a.y_g, a.z_g);
                }
                let n = read.count;
                match window_stats_3axis(&x[..n], &y[..n], &z[..n]) {
                    Some(stats) => Ok((stats.rms, stats.crest)),
                    None => Err(2),
                }
            }
            Ok(_) => Err(2),
            Err(_) => Err(1),
        })
    }

    fn drive_chips(&mut self, machine: &CncReading) {
        if let Ok(mut sht) = self.chips.sht3x.lock() {
            sht.set_temperature_c(machine.coolant_temperature_c);
            sht.set_humidity_pct(40.0);
        }
        let current = machine.spindle_power_w / LINE_VOLTAGE;
        self.chips
            .ads1115
            .set_input_volts(0, current / CLAMP_A_PER_V);
        // The machine's "cycle running" output: high while it cuts a part.
        self.chips
            .running
            .set_high(machine.state == MachineState::Running);
        // Velocity RMS (mm/s) at the spindle frequency → acceleration amplitude (g).
        let omega = core::f32::consts::TAU * SPINDLE_HZ;
        let amplitude_g =
            machine.vibration_rms_mm_s * 1e-3 * omega * core::f32::consts::SQRT_2 / 9.81;
        for _ in 0..WINDOW {
            self.phase = (self.phase + omega / ODR_HZ) % core::f32::consts::TAU;
            let noise = self.rng.normal(0.0, 0.005) as f32;
            let x = amplitude_g * self.phase.sin() + noise;
            self.chips.lis3dh.push_sample(x, 0.0, 1.0);
        }
    }
}

/// One chip per simulated bus: a board shares one, but each driver owning its bus is simpler here
/// and changes nothing the drivers see.
fn bus_with(chip: impl crate::chips::I2cChip + Send + 'static) -> SimI2c {
    let mut bus = SimI2c::new();
    bus.attach(chip);
    bus
}

/// 1: the bus failed (NACK), 2: the data failed its check (CRC, timeout).
fn error_code(data_error: bool) -> u8 {
    if data_error { 2 } else { 1 }
}

/// Puts `fault` on the chip behind a metric index, for demos and tests.
pub fn inject(chips: &KitChips, index: u8, fault: Fault) {
    match index {
        0 | 5 => chips.ads1115.set_fault(fault),
        1 | 2 => chips.lis3dh.set_fault(fault),
        3 => {
            if let Ok(mut sht) = chips.sht3x.lock() {
                sht.set_fault(fault);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn running_mill() -> CncReading {
        let mut mill = CncMill::new(3, crate::machines::CncParams::default());
        (0..2000)
            .map(|_| mill.step(Duration::from_millis(100)))
            .find(|r| r.state == MachineState::Running)
            .expect("the mill runs within minutes")
    }

    use crate::machines::CncMill;

    #[test]
    fn the_real_drivers_read_back_the_machine_through_the_chips() {
        let mut kit = RetrofitKit::new(1);
        let machine = running_mill();
        let sensed = kit.sense(1000, &machine);
        assert!(sensed.faults.is_empty(), "{sensed:?}");
        let value = |i: u8| {
            sensed
                .readings
                .iter()
                .find(|r| r.0 == i)
                .map(|r| r.1)
                .expect("reading")
        };
        // ±6.144 V over 16 bits through a 10 A/V clamp at 230 V: about 4 W per step.
        assert!(
            (value(0) - machine.spindle_power_w).abs() < 10.0,
            "{} vs {}",
            value(0),
            machine.spindle_power_w
        );
        assert!((value(3) - machine.coolant_temperature_c).abs() < 0.01);
        // Velocity RMS at 50 Hz as acceleration RMS, through the accelerometer's quantisation.
        let expected_g = machine.vibration_rms_mm_s * 1e-3 * core::f32::consts::TAU * 50.0 / 9.81;
        assert!(
            (value(1) - expected_g).abs() < 0.25 * expected_g,
            "{} g vs {expected_g} g",
            value(1)
        );
        assert!(value(2) > 1.0, "a sine's crest factor is about 1.4");
        assert_eq!(value(4), f32::from(MachineState::Running.code()));
    }

    #[test]
    fn a_corrupted_sht3x_is_a_fault_and_the_other_sensors_keep_reading() {
        let mut kit = RetrofitKit::new(1);
        inject(kit.chips(), 3, Fault::CorruptCrc);
        let sensed = kit.sense(1000, &running_mill());
        assert_eq!(sensed.faults, vec![(3, 2)]);
        assert!(sensed.readings.iter().all(|r| r.0 != 3));
        assert_eq!(sensed.readings.len(), 6);
        inject(kit.chips(), 0, Fault::Nack);
        assert!(kit.sense(2000, &running_mill()).faults.contains(&(0, 1)));
    }
}

#[cfg(test)]
mod cycle_tests {
    use std::time::Duration;

    use super::*;
    use crate::machines::{CncMill, CncParams};

    #[test]
    fn over_an_hour_the_node_counts_the_mills_parts_and_judges_its_state_from_power() {
        let mut mill = CncMill::new(5, CncParams::default());
        let mut kit = RetrofitKit::new(5);
        let mut last = Sensed::default();
        let mut agree = 0;
        let steps = 3600;
        for second in 1..=steps {
            let machine = mill.step(Duration::from_secs(1));
            last = kit.sense(second * 1000, &machine);
            let state = last.readings.iter().find(|r| r.0 == 4).map(|r| r.1);
            agree += usize::from(state == Some(f32::from(machine.state.code())));
        }
        let cycles = last
            .readings
            .iter()
            .find(|r| r.0 == 6)
            .map(|r| r.1)
            .unwrap_or_default();
        let parts = mill.reading().parts_completed as f32;
        assert!(
            (cycles - parts).abs() <= 1.0,
            "cycles {cycles} vs parts {parts}"
        );
        assert!(
            agree * 100 / steps as usize >= 90,
            "power thresholds agree with the machine {agree}/{steps}"
        );
    }
}
