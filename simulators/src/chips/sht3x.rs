//! A simulated Sensirion SHT3x (SHT30/31/35) humidity and temperature sensor, at the level of its
//! I2C commands, so the firmware's `drivers::sht3x` runs on it unmodified.
//!
//! What it answers (datasheet *SHT3x-DIS*, written out here independently of the driver so a
//! wrong constant on either side shows up in the tests):
//! - single-shot measurements, 0x2400 / 0x240B / 0x2416 (and the clock-stretching variants
//!   0x2C06 / 0x2C0D / 0x2C10, which behave the same here): the next read returns temperature
//!   word, CRC, humidity word, CRC;
//! - soft reset 0x30A2, read status 0xF32D (word + CRC on the next read), clear status 0x3041,
//!   heater on 0x306D / off 0x3066;
//! - anything else written: [`SimI2cError::DataNack`], and bit 1 (command failed) set in the
//!   status register. An empty write (an address probe) is acknowledged and changes nothing.
//!
//! Reading when no answer is pending (before any command, or a second time after a result was
//! read) fails with [`SimI2cError::AddressNack`]: a real SHT3x with no data does not acknowledge
//! its read header, and a controller reports that as an address NACK. Time is not simulated: a
//! measurement is ready as soon as its command is written, so reading too early cannot be
//! caught here. A read longer than the answer gets 0xFF (a released bus) after it.
//!
//! Faults ([`Fault`]): `Nack` is handled by the bus; `Stuck` answers every measurement with
//! the first one taken after the fault was set; `CorruptCrc` flips a bit of the first CRC byte
//! of every answer; `Noise` adds uniform noise of up to ±5 °C and ±10 %RH, drawn from a
//! [`SimRng`] seeded with the chip's address, so runs repeat exactly.
//!
//! The bus owns the chips attached to it and only exposes them as [`I2cChip`], so a simulation
//! that wants to change the temperature or the fault later attaches a [`SharedSht3x`] (an
//! `Arc<Mutex<SimSht3x>>`) and keeps a clone of it.

use std::sync::{Arc, Mutex, PoisonError};

use embedded_hal::i2c::SevenBitAddress;

use super::{Fault, I2cChip, SimI2cError};
use crate::rng::SimRng;

/// Address with the ADDR pin low.
pub const ADDRESS_LOW: SevenBitAddress = 0x44;
/// Address with the ADDR pin high.
pub const ADDRESS_HIGH: SevenBitAddress = 0x45;

const MEASURE_COMMANDS: [u16; 6] = [0x2400, 0x240B, 0x2416, 0x2C06, 0x2C0D, 0x2C10];
const SOFT_RESET: u16 = 0x30A2;
const READ_STATUS: u16 = 0xF32D;
const CLEAR_STATUS: u16 = 0x3041;
const HEATER_ON: u16 = 0x306D;
const HEATER_OFF: u16 = 0x3066;

const STATUS_ALERT_PENDING: u16 = 1 << 15;
const STATUS_HEATER_ON: u16 = 1 << 13;
const STATUS_RH_ALERT: u16 = 1 << 11;
const STATUS_T_ALERT: u16 = 1 << 10;
const STATUS_RESET_DETECTED: u16 = 1 << 4;
const STATUS_COMMAND_FAILED: u16 = 1 << 1;
/// The flags the clear-status command clears.
const STATUS_CLEARABLE: u16 =
    STATUS_ALERT_PENDING | STATUS_RH_ALERT | STATUS_T_ALERT | STATUS_RESET_DETECTED;
/// The register after power-up or any reset: alert pending and reset detected.
const STATUS_AFTER_RESET: u16 = STATUS_ALERT_PENDING | STATUS_RESET_DETECTED;

/// Largest noise added in [`Fault::Noise`], °C and %RH.
const NOISE_C: f64 = 5.0;
const NOISE_PCT: f64 = 10.0;

/// A simulated SHT3x whose inputs can be changed after it is put on a bus.
pub type SharedSht3x = Arc<Mutex<SimSht3x>>;

/// The sensor's Sensirion CRC-8 (polynomial 0x31, init 0xFF, no reflection, no final XOR).
fn crc8(bytes: [u8; 2]) -> u8 {
    let mut crc = 0xFFu8;
    for byte in bytes {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x31
            };
        }
    }
    crc
}

/// A word as the sensor sends it: big-endian, then its CRC.
fn word_with_crc(word: u16) -> [u8; 3] {
    let [msb, lsb] = word.to_be_bytes();
    [msb, lsb, crc8([msb, lsb])]
}

/// °C to the raw word: S_T = (T + 45) / 175 · 65535, rounded and clamped to the 16-bit range.
fn raw_temperature(celsius: f64) -> u16 {
    ((celsius + 45.0) / 175.0 * 65535.0)
        .round()
        .clamp(0.0, 65535.0) as u16
}

/// %RH to the raw word: S_RH = RH / 100 · 65535, rounded and clamped to the 16-bit range.
fn raw_humidity(percent: f64) -> u16 {
    (percent / 100.0 * 65535.0).round().clamp(0.0, 65535.0) as u16
}

/// A simulated SHT3x: its physical inputs, its fault, and its command state.
#[derive(Debug, Clone)]
pub struct SimSht3x {
    address: SevenBitAddress,
    temperature_c: f32,
    humidity_pct: f32,
    fault: Fault,
    status: u16,
    heater_on: bool,
    /// The answer the next read returns, and how many of its bytes are real.
    pending: Option<([u8; 6], usize)>,
    /// The raw words a [`Fault::Stuck`] chip keeps answering.
    stuck: Option<(u16, u16)>,
    rng: SimRng,
}

impl SimSht3x {
    /// A healthy chip at `address` (normally [`ADDRESS_LOW`] or [`ADDRESS_HIGH`]), just powered
    /// up, reading 20 °C and 50 %RH.
    pub fn new(address: SevenBitAddress) -> Self {
        Self {
            address,
            temperature_c: 20.0,
            humidity_pct: 50.0,
            fault: Fault::None,
            status: STATUS_AFTER_RESET,
            heater_on: false,
            pending: None,
            stuck: None,
            rng: SimRng::new(u64::from(address)),
        }
    }

    /// Wraps the chip so it can be attached to a bus and still be changed from outside.
    pub fn shared(self) -> SharedSht3x {
        Arc::new(Mutex::new(self))
    }

    /// The air temperature the chip senses, °C.
    pub fn temperature_c(&self) -> f32 {
        self.temperature_c
    }

    /// Sets the air temperature the chip senses, °C.
    pub fn set_temperature_c(&mut self, celsius: f32) {
        self.temperature_c = celsius;
    }

    /// The relative humidity the chip senses, %.
    pub fn humidity_pct(&self) -> f32 {
        self.humidity_pct
    }

    /// Sets the relative humidity the chip senses, %.
    pub fn set_humidity_pct(&mut self, percent: f32) {
        self.humidity_pct = percent;
    }

    /// Puts the chip into `fault` ([`Fault::None`] repairs it). Leaving [`Fault::Stuck`] forgets
    /// the stuck reading.
    pub fn set_fault(&mut self, fault: Fault) {
        if fault != Fault::Stuck {
            self.stuck = None;
        }
        self.fault = fault;
    }

    /// Whether the heater has been switched on.
    pub fn heater_on(&self) -> bool {
        self.heater_on
    }

    /// The status register as the chip would report it.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Back to the power-on state (soft reset): no answer pending, heater off, reset flagged.
    fn reset(&mut self) {
        self.pending = None;
        self.heater_on = false;
        self.status = STATUS_AFTER_RESET;
    }

    /// The raw words of one measurement, with the fault applied.
    fn sample(&mut self) -> (u16, u16) {
        let mut celsius = f64::from(self.temperature_c);
        let mut percent = f64::from(self.humidity_pct);
        if self.fault == Fault::Noise {
            celsius += self.rng.range(-NOISE_C, NOISE_C);
            percent += self.rng.range(-NOISE_PCT, NOISE_PCT);
        }
        let fresh = (raw_temperature(celsius), raw_humidity(percent));
        if self.fault == Fault::Stuck {
            *self.stuck.get_or_insert(fresh)
        } else {
            fresh
        }
    }

    /// Makes `bytes` the answer to the next read, corrupting it if the chip is in that fault.
    fn answer(&mut self, bytes: &[u8]) {
        let mut answer = [0xFF; 6];
        answer[..bytes.len()].copy_from_slice(bytes);
        if self.fault == Fault::CorruptCrc {
            answer[2] ^= 0x01;
        }
        self.pending = Some((answer, bytes.len()));
    }
}

impl I2cChip for SimSht3x {
    fn address(&self) -> SevenBitAddress {
        self.address
    }

    fn fault(&self) -> Fault {
        self.fault
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SimI2cError> {
        let command = match bytes {
            [] => return Ok(()),
            &[msb, lsb] => u16::from_be_bytes([msb, lsb]),
            _ => {
                self.status |= STATUS_COMMAND_FAILED;
                return Err(SimI2cError::DataNack);
            }
        };
        // A new command discards an answer that was never read.
        self.pending = None;
        if command == READ_STATUS {
            // Bits 1 and 0 keep describing the command before this one.
            let status = word_with_crc(self.status);
            self.answer(&status);
            return Ok(());
        }
        match command {
            c if MEASURE_COMMANDS.contains(&c) => {
                let (t, rh) = self.sample();
                let [t0, t1, t2] = word_with_crc(t);
                let [h0, h1, h2] = word_with_crc(rh);
                self.answer(&[t0, t1, t2, h0, h1, h2]);
            }
            SOFT_RESET => self.reset(),
            CLEAR_STATUS => self.status &= !STATUS_CLEARABLE,
            HEATER_ON => self.heater_on = true,
            HEATER_OFF => self.heater_on = false,
            _ => {
                self.status |= STATUS_COMMAND_FAILED;
                return Err(SimI2cError::DataNack);
            }
        }
        self.status &= !STATUS_COMMAND_FAILED;
        if self.heater_on {
            self.status |= STATUS_HEATER_ON;
        } else {
            self.status &= !STATUS_HEATER_ON;
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), SimI2cError> {
        let (answer, len) = self.pending.take().ok_or(SimI2cError::AddressNack)?;
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = if i < len { answer[i] } else { 0xFF };
        }
        Ok(())
    }
}

/// The shared handle: the bus holds one clone, the simulation another.
impl I2cChip for SharedSht3x {
    fn address(&self) -> SevenBitAddress {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .address()
    }

    fn fault(&self) -> Fault {
        self.lock().unwrap_or_else(PoisonError::into_inner).fault()
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SimI2cError> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(bytes)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), SimI2cError> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .read(buf)
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal::delay::DelayNs;
    use embedded_hal::i2c::I2c;
    use firmware::drivers::sht3x::{self, Address, Error, Repeatability, Sht3x};

    use super::*;
    use crate::chips::SimI2c;

    /// The host does not need to wait: the simulated chip answers at once.
    struct NoDelay;

    impl DelayNs for NoDelay {
        fn delay_ns(&mut self, _ns: u32) {}
    }

    /// One temperature step of the 16-bit word, °C, and one humidity step, %.
    const T_STEP: f32 = 175.0 / 65535.0;
    const RH_STEP: f32 = 100.0 / 65535.0;

    fn lock(chip: &SharedSht3x) -> std::sync::MutexGuard<'_, SimSht3x> {
        chip.lock().expect("not poisoned")
    }

    /// The real driver on a bus with one shared chip at 0x44.
    fn rig() -> (Sht3x<SimI2c>, SharedSht3x) {
        let chip = SimSht3x::new(ADDRESS_LOW).shared();
        let mut bus = SimI2c::new();
        bus.attach(chip.clone());
        (Sht3x::new(bus, Address::Low), chip)
    }

    fn measure(sensor: &mut Sht3x<SimI2c>) -> Result<sht3x::Measurement, Error<SimI2cError>> {
        sensor.measure(Repeatability::High, &mut NoDelay)
    }

    #[test]
    fn the_driver_reads_back_what_the_chip_senses() {
        let (mut sensor, chip) = rig();
        {
            let mut chip = lock(&chip);
            chip.set_temperature_c(21.5);
            chip.set_humidity_pct(40.0);
        }
        for repeatability in [
            Repeatability::High,
            Repeatability::Medium,
            Repeatability::Low,
        ] {
            let m = sensor
                .measure(repeatability, &mut NoDelay)
                .expect("healthy chip");
            assert!((m.temperature_c - 21.5).abs() <= T_STEP, "{m:?}");
            assert!((m.humidity_pct - 40.0).abs() <= RH_STEP, "{m:?}");
        }
        lock(&chip).set_temperature_c(-10.25);
        lock(&chip).set_humidity_pct(97.0);
        let m = measure(&mut sensor).expect("healthy chip");
        assert!((m.temperature_c + 10.25).abs() <= T_STEP, "{m:?}");
        assert!((m.humidity_pct - 97.0).abs() <= RH_STEP, "{m:?}");
    }

    #[test]
    fn inputs_beyond_the_scale_saturate() {
        let (mut sensor, chip) = rig();
        lock(&chip).set_temperature_c(200.0);
        lock(&chip).set_humidity_pct(-3.0);
        let m = measure(&mut sensor).expect("healthy chip");
        assert_eq!((m.raw_temperature, m.raw_humidity), (0xFFFF, 0));
    }

    #[test]
    fn a_corrupt_crc_is_the_drivers_crc_error() {
        let (mut sensor, chip) = rig();
        lock(&chip).set_fault(Fault::CorruptCrc);
        assert!(matches!(measure(&mut sensor), Err(Error::Crc { .. })));
        assert!(matches!(
            sensor.status(&mut NoDelay),
            Err(Error::Crc { .. })
        ));
        lock(&chip).set_fault(Fault::None);
        measure(&mut sensor).expect("repaired");
    }

    #[test]
    fn a_nacking_chip_is_the_drivers_i2c_error() {
        let (mut sensor, chip) = rig();
        lock(&chip).set_fault(Fault::Nack);
        assert_eq!(
            measure(&mut sensor),
            Err(Error::I2c(SimI2cError::AddressNack))
        );
        assert_eq!(
            sensor.soft_reset(&mut NoDelay),
            Err(Error::I2c(SimI2cError::AddressNack))
        );
    }

    #[test]
    fn a_stuck_chip_repeats_its_first_reading_until_repaired() {
        let (mut sensor, chip) = rig();
        lock(&chip).set_temperature_c(30.0);
        lock(&chip).set_fault(Fault::Stuck);
        let first = measure(&mut sensor).expect("stuck, not dead");
        lock(&chip).set_temperature_c(35.0);
        lock(&chip).set_humidity_pct(80.0);
        assert_eq!(measure(&mut sensor), Ok(first));
        assert_eq!(measure(&mut sensor), Ok(first));
        lock(&chip).set_fault(Fault::None);
        let m = measure(&mut sensor).expect("healthy chip");
        assert!((m.temperature_c - 35.0).abs() <= T_STEP, "{m:?}");
        assert!((m.humidity_pct - 80.0).abs() <= RH_STEP, "{m:?}");
    }

    #[test]
    fn noise_is_bounded_varied_and_repeatable() {
        let readings = |address| {
            let chip = SimSht3x::new(address).shared();
            lock(&chip).set_temperature_c(25.0);
            lock(&chip).set_humidity_pct(50.0);
            lock(&chip).set_fault(Fault::Noise);
            let mut bus = SimI2c::new();
            bus.attach(chip);
            let address = if address == ADDRESS_LOW {
                Address::Low
            } else {
                Address::High
            };
            let mut sensor = Sht3x::new(bus, address);
            (0..50)
                .map(|_| measure(&mut sensor).expect("noisy, not broken"))
                .collect::<Vec<_>>()
        };
        let low = readings(ADDRESS_LOW);
        for m in &low {
            assert!((m.temperature_c - 25.0).abs() <= 5.0 + T_STEP, "{m:?}");
            assert!((m.humidity_pct - 50.0).abs() <= 10.0 + RH_STEP, "{m:?}");
        }
        assert!(low.iter().any(|m| (m.temperature_c - 25.0).abs() > 1.0));
        assert!(low.iter().any(|m| (m.humidity_pct - 50.0).abs() > 2.0));
        assert_eq!(readings(ADDRESS_LOW), low, "same address, same noise");
        assert_ne!(readings(ADDRESS_HIGH), low, "another address, other noise");
    }

    #[test]
    fn status_reset_clear_and_heater() {
        let (mut sensor, chip) = rig();
        let mut delay = NoDelay;
        assert_eq!(sensor.status(&mut delay), Ok(0x8010), "power-on value");
        sensor.clear_status(&mut delay).expect("known command");
        assert_eq!(sensor.status(&mut delay), Ok(0x0000));
        sensor.set_heater(true, &mut delay).expect("known command");
        assert!(lock(&chip).heater_on());
        assert_eq!(sensor.status(&mut delay), Ok(sht3x::STATUS_HEATER_ON));
        sensor.soft_reset(&mut delay).expect("known command");
        assert!(!lock(&chip).heater_on());
        assert_eq!(
            sensor.status(&mut delay),
            Ok(sht3x::STATUS_ALERT_PENDING | sht3x::STATUS_RESET_DETECTED)
        );
        sensor.set_heater(true, &mut delay).expect("known command");
        sensor.set_heater(false, &mut delay).expect("known command");
        assert_eq!(lock(&chip).status() & sht3x::STATUS_HEATER_ON, 0);
    }

    #[test]
    fn raw_transactions_follow_the_datasheet() {
        let mut chip = SimSht3x::new(ADDRESS_LOW);
        let mut buf = [0u8; 6];
        assert_eq!(
            chip.read(&mut buf),
            Err(SimI2cError::AddressNack),
            "no data before any command: the read header is not acknowledged"
        );
        chip.set_temperature_c(25.0);
        chip.set_humidity_pct(40.0);
        chip.write(&[0x24, 0x00]).expect("known command");
        chip.read(&mut buf).expect("result pending");
        // 25 °C and 40 %RH are both raw 0x6666, whose CRC is 0x93.
        assert_eq!(buf, [0x66, 0x66, 0x93, 0x66, 0x66, 0x93]);
        assert_eq!(
            chip.read(&mut buf),
            Err(SimI2cError::AddressNack),
            "a result is read once"
        );
        chip.write(&[]).expect("an address probe is acknowledged");
        assert_eq!(chip.write(&[0x12, 0x34]), Err(SimI2cError::DataNack));
        assert_eq!(chip.write(&[0x24]), Err(SimI2cError::DataNack));
        chip.write(&[0xF3, 0x2D]).expect("known command");
        let mut status = [0u8; 3];
        chip.read(&mut status).expect("status pending");
        assert_eq!(status, [0x80, 0x12, crc8([0x80, 0x12])], "command failed");
        chip.write(&[0x30, 0x66])
            .expect("heater off: a known command");
        let mut long = [0u8; 5];
        chip.write(&[0xF3, 0x2D]).expect("known command");
        chip.read(&mut long).expect("status pending");
        assert_eq!(
            long,
            [0x80, 0x10, 0xE1, 0xFF, 0xFF],
            "the last command succeeded"
        );
    }

    #[test]
    fn two_chips_share_a_bus() {
        let low = SimSht3x::new(ADDRESS_LOW).shared();
        let high = SimSht3x::new(ADDRESS_HIGH).shared();
        lock(&low).set_temperature_c(10.0);
        lock(&high).set_temperature_c(40.0);
        let mut bus = SimI2c::new();
        bus.attach(low);
        bus.attach(high.clone());
        let mut sensor = Sht3x::new(bus, Address::Low);
        let cold = measure(&mut sensor).expect("chip at 0x44");
        let mut sensor = Sht3x::new(sensor.release(), Address::High);
        let warm = measure(&mut sensor).expect("chip at 0x45");
        assert!((cold.temperature_c - 10.0).abs() <= T_STEP);
        assert!((warm.temperature_c - 40.0).abs() <= T_STEP);
        let mut bus = sensor.release();
        assert_eq!(
            bus.write(0x46, &[0x24, 0x00]),
            Err(SimI2cError::AddressNack)
        );
        lock(&high).set_fault(Fault::Nack);
        assert_eq!(
            bus.write(ADDRESS_HIGH, &[0x24, 0x00]),
            Err(SimI2cError::AddressNack)
        );
    }
}
