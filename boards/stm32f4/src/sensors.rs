//! The node's metrics and the sensors behind them, all on one shared I2C bus.
//!
//! | index | metric                  | unit  | source                                        |
//! |-------|-------------------------|-------|-----------------------------------------------|
//! | 0     | `spindle.power_w`       | W     | ADS1115 AIN0 clamp current × line voltage × PF |
//! | 1     | `spindle.current_a`     | A     | ADS1115 AIN0 (DC-output current clamp)        |
//! | 2     | `spindle.vibration_g`   | g     | LIS3DH FIFO, RMS of the dynamic acceleration   |
//! | 3     | `ambient.temperature_c` | °C    | SHT3x                                         |
//! | 4     | `ambient.humidity_pct`  | %     | SHT3x                                         |
//! | 5     | `state.code`            | state | debounced running input (+ clamp current)     |
//!
//! A sensor that fails is skipped for that reading; the node reports the change with a
//! `SensorFault` event (once) and a `SensorRecovered` event when it answers again.

use core::cell::RefCell;

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{ErrorKind, I2c};
use embedded_hal_bus::i2c::RefCellDevice;
use firmware::drivers::ads1115::{self, Ads1115, Channel, Gain, Phases};
use firmware::drivers::lis3dh::{self, Acceleration, FIFO_DEPTH, Lis3dh};
use firmware::drivers::sht3x::{self, Repeatability, Sht3x};
use heapless::Vec;
use protocol::frame::MAX_METRICS;
use protocol::{EventKind, MachineState, MetricDescriptor, MetricName, Unit};

/// Metric indexes.
pub const POWER: u8 = 0;
/// See the module table.
pub const CURRENT: u8 = 1;
/// See the module table.
pub const VIBRATION: u8 = 2;
/// See the module table.
pub const TEMPERATURE: u8 = 3;
/// See the module table.
pub const HUMIDITY: u8 = 4;
/// See the module table.
pub const STATE: u8 = 5;
/// How many metrics the node announces.
pub const METRIC_COUNT: usize = 6;

const METRICS: [(u8, &str, Unit); METRIC_COUNT] = [
    (POWER, "spindle.power_w", Unit::Watt),
    (CURRENT, "spindle.current_a", Unit::Ampere),
    (VIBRATION, "spindle.vibration_g", Unit::StandardGravity),
    (TEMPERATURE, "ambient.temperature_c", Unit::Celsius),
    (HUMIDITY, "ambient.humidity_pct", Unit::Percent),
    (STATE, "state.code", Unit::StateCode),
];

// Outcomes are kept in arrays indexed by metric index.
const _: () = {
    let mut i = 0;
    while i < METRIC_COUNT {
        assert!(METRICS[i].0 as usize == i);
        i += 1;
    }
};

/// Every metric's period after boot, until a `SetPeriod` command changes it.
pub const DEFAULT_PERIOD_MS: u32 = 1_000;

/// Transfer ratio of the current clamp: a DC-output transducer giving 1 V at 30 A (e.g. a
/// Hall-effect clamp with a 0–1 V output); the ADS1115 runs at ±2.048 V full scale.
pub const CLAMP_AMPS_PER_VOLT: f32 = 30.0;
/// Line-to-neutral voltage of the single-phase supply the clamped conductor feeds, V.
pub const LINE_VOLTAGE: f32 = 230.0;
/// Assumed power factor of the load.
pub const POWER_FACTOR: f32 = 0.9;
/// Below this clamp current a machine whose running input is off counts as `Off`, above it
/// as `Idle`, A.
pub const IDLE_CURRENT_A: f32 = 0.3;

/// `SensorFault` codes.
pub mod fault {
    /// The device did not acknowledge (absent, unpowered, wrong address).
    pub const NO_ACK: u8 = 1;
    /// Any other bus error (arbitration loss, bus error, overrun).
    pub const BUS: u8 = 2;
    /// SHT3x: a word failed its CRC.
    pub const CRC: u8 = 3;
    /// ADS1115: the conversion never finished.
    pub const TIMEOUT: u8 = 4;
    /// LIS3DH: `WHO_AM_I` was not 0x33.
    pub const WRONG_DEVICE: u8 = 5;
    /// LIS3DH: answers, but its FIFO delivered no samples over a whole period.
    pub const NO_DATA: u8 = 6;
}

/// The announced metric descriptors, every one at [`DEFAULT_PERIOD_MS`].
pub fn descriptors() -> Vec<MetricDescriptor, MAX_METRICS> {
    let mut out = Vec::new();
    for (index, name, unit) in METRICS {
        // The names are constants of the right shape; `METRIC_COUNT` < `MAX_METRICS`.
        if let Ok(name) = MetricName::new(name) {
            let _ = out.push(MetricDescriptor {
                index,
                name,
                unit,
                period_ms: DEFAULT_PERIOD_MS,
            });
        }
    }
    out
}

fn i2c_code(error: &impl embedded_hal::i2c::Error) -> u8 {
    match error.kind() {
        ErrorKind::NoAcknowledge(_) => fault::NO_ACK,
        _ => fault::BUS,
    }
}

fn sht3x_code<E: embedded_hal::i2c::Error>(error: &sht3x::Error<E>) -> u8 {
    match error {
        sht3x::Error::I2c(e) => i2c_code(e),
        sht3x::Error::Crc { .. } => fault::CRC,
    }
}

fn lis3dh_code<E: embedded_hal::i2c::Error>(error: &lis3dh::Error<E>) -> u8 {
    match error {
        lis3dh::Error::I2c(e) => i2c_code(e),
        lis3dh::Error::WrongDevice(_) => fault::WRONG_DEVICE,
    }
}

fn ads1115_code<E: embedded_hal::i2c::Error>(error: &ads1115::Error<E>) -> u8 {
    match error {
        ads1115::Error::I2c(e) => i2c_code(e),
        ads1115::Error::Timeout => fault::TIMEOUT,
    }
}

/// The machine state from the running input and, when it is off, the clamp current.
pub fn machine_state(running: bool, current_a: Option<f32>) -> MachineState {
    match (running, current_a) {
        (true, _) => MachineState::Running,
        (false, Some(amps)) if amps < IDLE_CURRENT_A => MachineState::Off,
        (false, _) => MachineState::Idle,
    }
}

/// What one read of a metric gave: `None` when it was not due (or has no value yet),
/// `Some(Err(code))` when its sensor failed.
pub type Outcomes = [Option<Result<f32, u8>>; METRIC_COUNT];

/// Running sums of the accelerometer samples since the last vibration reading. Samples are
/// taken relative to the first one, so the variance does not drown in the 1 g of gravity.
#[derive(Debug, Default)]
struct VibrationSums {
    count: u32,
    origin: [f32; 3],
    sum: [f32; 3],
    sum_sq: [f32; 3],
}

impl VibrationSums {
    fn add(&mut self, a: &Acceleration) {
        let v = [a.x_g, a.y_g, a.z_g];
        if self.count == 0 {
            self.origin = v;
        }
        for (((value, origin), sum), sum_sq) in v
            .iter()
            .zip(&self.origin)
            .zip(&mut self.sum)
            .zip(&mut self.sum_sq)
        {
            let d = value - origin;
            *sum += d;
            *sum_sq += d * d;
        }
        self.count += 1;
    }

    /// The RMS of the acceleration with its mean (gravity, mounting tilt) removed, over all
    /// three axes: √(σx² + σy² + σz²), in g. `None` with fewer than two samples. Starts over.
    fn take(&mut self) -> Option<f32> {
        let sums = core::mem::take(self);
        if sums.count < 2 {
            return None;
        }
        let n = sums.count as f32;
        let mut variance = 0.0;
        for axis in 0..3 {
            let mean = sums.sum[axis] / n;
            variance += sums.sum_sq[axis] / n - mean * mean;
        }
        Some(libm::sqrtf(variance.max(0.0)))
    }
}

/// Accelerometer output data rate: 200 Hz resolves vibration up to 100 Hz, and the 32-deep
/// FIFO then holds 160 ms, more than the drain interval plus a full sensor round.
const ACCEL_RATE: lis3dh::DataRate = lis3dh::DataRate::Hz200;
/// ±4 g, 2 mg per step.
const ACCEL_RANGE: lis3dh::Range = lis3dh::Range::G4;

/// The three I2C sensors, each holding its own handle on the shared bus.
pub struct Sensors<'a, I2C: I2c> {
    bus: &'a RefCell<I2C>,
    sht: Sht3x<RefCellDevice<'a, I2C>>,
    ads: Ads1115<RefCellDevice<'a, I2C>>,
    /// `None` until a LIS3DH answered and was configured, and again after any error on it
    /// (a sensor that lost power also lost its configuration).
    accel: Option<Lis3dh<RefCellDevice<'a, I2C>>>,
    /// Why `accel` is `None`.
    accel_fault: u8,
    /// Set when `accel` was (re)started since the last vibration reading: an empty FIFO is
    /// then expected, not a fault.
    accel_fresh: bool,
    vibration: VibrationSums,
    /// The last clamp current read, for the machine state; `None` after a failed read.
    current_a: Option<f32>,
}

impl<'a, I2C: I2c> Sensors<'a, I2C> {
    /// Sets the sensors up on `bus`: waits out their power-up times and starts the
    /// accelerometer. Nothing here fails: an absent sensor shows up as a fault later.
    pub fn new(bus: &'a RefCell<I2C>, delay: &mut impl DelayNs) -> Self {
        // SHT3x ≤ 1 ms, LIS3DH 5 ms, ADS1115 50 µs after power-up.
        delay.delay_ms(10);
        let mut ads = Ads1115::new(RefCellDevice::new(bus), ads1115::Address::Gnd);
        ads.set_gain(Gain::V2_048);
        let mut sensors = Self {
            bus,
            sht: Sht3x::new(RefCellDevice::new(bus), sht3x::Address::Low),
            ads,
            accel: None,
            accel_fault: fault::NO_ACK,
            accel_fresh: false,
            vibration: VibrationSums::default(),
            current_a: None,
        };
        sensors.start_accel();
        sensors
    }

    fn start_accel(&mut self) {
        let started = Lis3dh::new(RefCellDevice::new(self.bus), lis3dh::Address::Sa0Low).and_then(
            |mut accel| {
                accel.configure(ACCEL_RATE, ACCEL_RANGE)?;
                accel.enable_fifo_stream()?;
                Ok(accel)
            },
        );
        match started {
            Ok(accel) => {
                self.accel = Some(accel);
                self.accel_fresh = true;
                self.vibration = VibrationSums::default();
            }
            Err(e) => self.accel_fault = lis3dh_code(&e),
        }
    }

    /// Empties the accelerometer FIFO into the running sums. Call at least every 160 ms.
    pub fn drain_accel(&mut self) {
        let Some(accel) = self.accel.as_mut() else {
            return;
        };
        let mut samples = [Acceleration::default(); FIFO_DEPTH];
        match accel.read_fifo(&mut samples) {
            // An overrun (full FIFO) only means older samples were replaced by newer ones.
            Ok(read) => samples[..read.count]
                .iter()
                .for_each(|a| self.vibration.add(a)),
            Err(e) => {
                self.accel_fault = lis3dh_code(&e);
                self.accel = None;
            }
        }
    }

    fn read_vibration(&mut self) -> Option<Result<f32, u8>> {
        if self.accel.is_none() {
            // Retried once per vibration period, not at every drain.
            self.start_accel();
            if self.accel.is_none() {
                return Some(Err(self.accel_fault));
            }
        }
        self.drain_accel();
        if self.accel.is_none() {
            return Some(Err(self.accel_fault));
        }
        let fresh = core::mem::replace(&mut self.accel_fresh, false);
        match self.vibration.take() {
            Some(rms) => Some(Ok(rms)),
            None if fresh => None,
            None => Some(Err(fault::NO_DATA)),
        }
    }

    /// Reads the metrics whose bit is set in `due` (bit n = metric index n). `running` is the
    /// debounced running input.
    pub fn read(&mut self, due: u16, running: bool, delay: &mut impl DelayNs) -> Outcomes {
        let is_due = |index: u8| due & (1 << index) != 0;
        let mut out: Outcomes = [None; METRIC_COUNT];
        if is_due(POWER) || is_due(CURRENT) {
            let current = self
                .ads
                .read_volts(Channel::A0, delay)
                .map(|volts| ads1115::clamp_current_a(volts.max(0.0), CLAMP_AMPS_PER_VOLT))
                .map_err(|e| ads1115_code(&e));
            self.current_a = current.ok();
            if is_due(CURRENT) {
                out[usize::from(CURRENT)] = Some(current);
            }
            if is_due(POWER) {
                out[usize::from(POWER)] = Some(current.map(|amps| {
                    ads1115::power_w(amps, LINE_VOLTAGE, POWER_FACTOR, Phases::Single)
                }));
            }
        }
        if is_due(VIBRATION) {
            out[usize::from(VIBRATION)] = self.read_vibration();
        }
        if is_due(TEMPERATURE) || is_due(HUMIDITY) {
            let measured = self
                .sht
                .measure(Repeatability::High, delay)
                .map_err(|e| sht3x_code(&e));
            if is_due(TEMPERATURE) {
                out[usize::from(TEMPERATURE)] = Some(measured.map(|m| m.temperature_c));
            }
            if is_due(HUMIDITY) {
                out[usize::from(HUMIDITY)] = Some(measured.map(|m| m.humidity_pct));
            }
        }
        if is_due(STATE) {
            let state = machine_state(running, self.current_a);
            out[usize::from(STATE)] = Some(Ok(f32::from(state.code())));
        }
        out
    }
}

/// Which metrics are faulted, to report each change once.
#[derive(Debug, Default)]
pub struct Health {
    faulted: [bool; METRIC_COUNT],
}

impl Health {
    /// The event to send for `outcome` of metric `index`, if its health changed.
    pub fn update(&mut self, index: u8, outcome: Result<f32, u8>) -> Option<EventKind> {
        let faulted = self.faulted.get_mut(usize::from(index))?;
        match (outcome, *faulted) {
            (Err(code), false) => {
                *faulted = true;
                Some(EventKind::SensorFault { index, code })
            }
            (Ok(_), true) => {
                *faulted = false;
                Some(EventKind::SensorRecovered { index })
            }
            _ => None,
        }
    }
}

/// When each metric is next due, following the periods in the node's descriptors (which
/// `SetPeriod` commands change).
#[derive(Debug)]
pub struct Schedule {
    next_ms: [u64; METRIC_COUNT],
}

impl Schedule {
    /// Everything due at once.
    pub const fn new() -> Self {
        Self {
            next_ms: [0; METRIC_COUNT],
        }
    }

    /// The metrics due at `now_ms`, as a bit mask, and their next due times set. Metrics
    /// with equal periods stay in step, so they share one `Samples` frame.
    pub fn due(&mut self, now_ms: u64, metrics: &[MetricDescriptor]) -> u16 {
        let mut due = 0;
        for descriptor in metrics {
            let Some(next) = self.next_ms.get_mut(usize::from(descriptor.index)) else {
                continue;
            };
            let period = u64::from(descriptor.period_ms);
            // A shortened period takes effect now, not after the old one ran out.
            *next = (*next).min(now_ms + period);
            if now_ms >= *next {
                due |= 1 << descriptor.index;
                // Keep the phase unless a whole period was missed.
                *next = if *next + period > now_ms {
                    *next + period
                } else {
                    now_ms + period
                };
            }
        }
        due
    }
}
