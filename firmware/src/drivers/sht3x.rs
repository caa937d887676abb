//! Sensirion SHT3x (SHT30, SHT31, SHT35): a digital relative-humidity and temperature sensor on
//! I2C, factory calibrated, with a CRC-8 after every 16-bit word it sends.
//!
//! Where it sits: on a sensor node, the board code owns the I2C bus, builds an [`Sht3x`] on it
//! and hands each [`Measurement`] to [`crate::NodeCore::sample`] as readings (°C and %RH). On
//! the host, the simulators crate's register-level simulated SHT3x answers the same
//! transactions, so this exact driver also runs in the simulated labs.
//!
//! The driver uses single-shot measurements without clock stretching: it writes the measurement
//! command, waits the datasheet's worst-case measurement duration with the caller's
//! [`DelayNs`], then reads six bytes: temperature word, its CRC, humidity word, its CRC. Every
//! word is checked against its CRC before it is converted; a mismatch is [`Error::Crc`], never a
//! value. Each method returns with the sensor ready for its next command.
//!
//! Datasheet facts used (Sensirion, *Datasheet SHT3x-DIS*):
//! - 7-bit address 0x44 with the ADDR pin low, 0x45 with it high.
//! - Commands are 16 bits, sent most significant byte first. Single shot, clock stretching
//!   disabled: 0x2400 (high repeatability), 0x240B (medium), 0x2416 (low). Soft reset 0x30A2,
//!   read status 0xF32D, clear status 0x3041, heater on 0x306D, heater off 0x3066.
//! - Longest measurement duration over the whole supply range: 15.5 ms (high), 6.5 ms (medium),
//!   4.5 ms (low). Soft reset takes at most 1.5 ms. After a command the sensor needs 1 ms before
//!   it accepts anything else.
//! - CRC-8: polynomial 0x31 (x⁸ + x⁵ + x⁴ + 1), initial value 0xFF, no reflection, no final XOR;
//!   it covers the two bytes before it. Check value: CRC(0xBEEF) = 0x92.
//! - T = −45 °C + 175 °C · S_T / 65535 and RH = 100 % · S_RH / 65535 (S = the raw word).
//!
//! ```
//! use demolab_firmware::drivers::sht3x::{crc8, humidity_pct, temperature_c};
//! assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
//! assert_eq!(temperature_c(0x6666), 25.0);
//! assert_eq!(humidity_pct(0x6666), 40.0);
//! ```

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Single-shot measurement, high repeatability, clock stretching disabled.
const CMD_MEASURE_HIGH: u16 = 0x2400;
/// Single-shot measurement, medium repeatability, clock stretching disabled.
const CMD_MEASURE_MEDIUM: u16 = 0x240B;
/// Single-shot measurement, low repeatability, clock stretching disabled.
const CMD_MEASURE_LOW: u16 = 0x2416;
/// Soft reset: reloads the calibration and returns the sensor to its power-on state.
const CMD_SOFT_RESET: u16 = 0x30A2;
/// Read the status register (one word and its CRC).
const CMD_READ_STATUS: u16 = 0xF32D;
/// Clear the alert and reset flags of the status register.
const CMD_CLEAR_STATUS: u16 = 0x3041;
/// Switch the built-in heater on.
const CMD_HEATER_ON: u16 = 0x306D;
/// Switch the built-in heater off.
const CMD_HEATER_OFF: u16 = 0x3066;

/// Longest soft-reset time, µs.
const SOFT_RESET_US: u32 = 1_500;
/// Time the sensor needs after a command before it accepts the next transfer, µs.
const COMMAND_GAP_US: u32 = 1_000;

/// Status register bit 15: at least one alert is pending (set after every reset).
pub const STATUS_ALERT_PENDING: u16 = 1 << 15;
/// Status register bit 13: the heater is on.
pub const STATUS_HEATER_ON: u16 = 1 << 13;
/// Status register bit 11: humidity tracking alert.
pub const STATUS_RH_ALERT: u16 = 1 << 11;
/// Status register bit 10: temperature tracking alert.
pub const STATUS_T_ALERT: u16 = 1 << 10;
/// Status register bit 4: a reset (power-up, soft reset, reset pin) happened since the last
/// clear-status command.
pub const STATUS_RESET_DETECTED: u16 = 1 << 4;
/// Status register bit 1: the last command was not processed (unknown or bad checksum).
pub const STATUS_COMMAND_FAILED: u16 = 1 << 1;
/// Status register bit 0: the checksum of the last write transfer was wrong.
pub const STATUS_WRITE_CRC_FAILED: u16 = 1 << 0;

/// The sensor's 7-bit I2C address, chosen by its ADDR pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Address {
    /// ADDR tied low: 0x44 (the usual breakout default).
    #[default]
    Low,
    /// ADDR tied high: 0x45.
    High,
}

impl From<Address> for u8 {
    fn from(address: Address) -> u8 {
        match address {
            Address::Low => 0x44,
            Address::High => 0x45,
        }
    }
}

/// Repeatability of a single-shot measurement: higher is less noisy but takes longer and uses
/// more energy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repeatability {
    /// Lowest noise; at most 15.5 ms.
    #[default]
    High,
    /// At most 6.5 ms.
    Medium,
    /// Fastest; at most 4.5 ms.
    Low,
}

impl Repeatability {
    /// The single-shot command (clock stretching disabled) for this repeatability.
    pub const fn command(self) -> u16 {
        match self {
            Repeatability::High => CMD_MEASURE_HIGH,
            Repeatability::Medium => CMD_MEASURE_MEDIUM,
            Repeatability::Low => CMD_MEASURE_LOW,
        }
    }

    /// The longest the measurement can take over the whole supply range, µs: the driver waits
    /// this long before reading the result.
    pub const fn max_duration_us(self) -> u32 {
        match self {
            Repeatability::High => 15_500,
            Repeatability::Medium => 6_500,
            Repeatability::Low => 4_500,
        }
    }
}

/// Why a sensor operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus failed, or the sensor did not acknowledge (absent, busy, or refused a command).
    I2c(E),
    /// A word arrived with a CRC byte that does not match it: the transfer was corrupted, and
    /// the word is not used.
    Crc {
        /// The 16-bit word as received.
        word: u16,
        /// The CRC-8 computed over the received word.
        expected: u8,
        /// The CRC byte the sensor sent.
        received: u8,
    },
}

/// One temperature and humidity measurement, converted and raw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Temperature, °C (−45 … 130 over the raw range).
    pub temperature_c: f32,
    /// Relative humidity, % (0 … 100).
    pub humidity_pct: f32,
    /// The raw temperature word S_T.
    pub raw_temperature: u16,
    /// The raw humidity word S_RH.
    pub raw_humidity: u16,
}

impl Measurement {
    /// Converts a pair of raw words with the datasheet formulas.
    pub fn from_raw(raw_temperature: u16, raw_humidity: u16) -> Self {
        Self {
            temperature_c: temperature_c(raw_temperature),
            humidity_pct: humidity_pct(raw_humidity),
            raw_temperature,
            raw_humidity,
        }
    }
}

/// The Sensirion CRC-8 of `data`: polynomial 0x31, initial value 0xFF, no reflection, no final
/// XOR. The sensor sends one after every 16-bit word, computed over that word's two bytes.
pub const fn crc8(data: &[u8]) -> u8 {
    const POLYNOMIAL: u8 = 0x31;
    let mut crc: u8 = 0xFF;
    let mut i = 0;
    while i < data.len() {
        crc ^= data[i];
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ POLYNOMIAL
            } else {
                crc << 1
            };
            bit += 1;
        }
        i += 1;
    }
    crc
}

/// Raw temperature word to °C: −45 + 175 · raw / 65535.
pub fn temperature_c(raw: u16) -> f32 {
    -45.0 + 175.0 * f32::from(raw) / 65535.0
}

/// Raw humidity word to % relative humidity: 100 · raw / 65535.
pub fn humidity_pct(raw: u16) -> f32 {
    100.0 * f32::from(raw) / 65535.0
}

/// Checks one word-and-CRC triple as sent by the sensor and returns the word.
fn checked_word<E>(triple: [u8; 3]) -> Result<u16, Error<E>> {
    let [msb, lsb, received] = triple;
    let word = u16::from_be_bytes([msb, lsb]);
    let expected = crc8(&[msb, lsb]);
    if expected == received {
        Ok(word)
    } else {
        Err(Error::Crc {
            word,
            expected,
            received,
        })
    }
}

/// An SHT3x on an I2C bus.
#[derive(Debug)]
pub struct Sht3x<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Sht3x<I2C> {
    /// A driver for the sensor at `address` on `i2c`. Nothing is sent on the bus.
    pub fn new(i2c: I2C, address: Address) -> Self {
        Self {
            i2c,
            address: address.into(),
        }
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    /// The sensor's 7-bit address.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// Takes one single-shot measurement: writes the command, waits the longest measurement
    /// duration for `repeatability`, reads the six result bytes and checks both CRCs.
    pub fn measure(
        &mut self,
        repeatability: Repeatability,
        delay: &mut impl DelayNs,
    ) -> Result<Measurement, Error<I2C::Error>> {
        self.command(repeatability.command())?;
        delay.delay_us(repeatability.max_duration_us());
        let mut buf = [0u8; 6];
        self.i2c.read(self.address, &mut buf).map_err(Error::I2c)?;
        let raw_temperature = checked_word([buf[0], buf[1], buf[2]])?;
        let raw_humidity = checked_word([buf[3], buf[4], buf[5]])?;
        Ok(Measurement::from_raw(raw_temperature, raw_humidity))
    }

    /// Soft reset: the sensor reloads its calibration and returns to its power-on state (heater
    /// off, reset flag set in the status register). Waits the longest reset time.
    pub fn soft_reset(&mut self, delay: &mut impl DelayNs) -> Result<(), Error<I2C::Error>> {
        self.command(CMD_SOFT_RESET)?;
        delay.delay_us(SOFT_RESET_US);
        Ok(())
    }

    /// Reads the 16-bit status register (see the `STATUS_*` bit masks), CRC-checked. Waits the
    /// 1 ms the sensor needs between the command and the read, as Sensirion's own driver does.
    pub fn status(&mut self, delay: &mut impl DelayNs) -> Result<u16, Error<I2C::Error>> {
        self.command(CMD_READ_STATUS)?;
        delay.delay_us(COMMAND_GAP_US);
        let mut buf = [0u8; 3];
        self.i2c.read(self.address, &mut buf).map_err(Error::I2c)?;
        checked_word(buf)
    }

    /// Clears the alert and reset flags (bits 15, 11, 10 and 4) of the status register.
    pub fn clear_status(&mut self, delay: &mut impl DelayNs) -> Result<(), Error<I2C::Error>> {
        self.command(CMD_CLEAR_STATUS)?;
        delay.delay_us(COMMAND_GAP_US);
        Ok(())
    }

    /// Switches the built-in heater on or off. The heater is meant for plausibility checks
    /// (temperature should rise, humidity fall), not for normal operation.
    pub fn set_heater(
        &mut self,
        on: bool,
        delay: &mut impl DelayNs,
    ) -> Result<(), Error<I2C::Error>> {
        self.command(if on { CMD_HEATER_ON } else { CMD_HEATER_OFF })?;
        delay.delay_us(COMMAND_GAP_US);
        Ok(())
    }

    /// Writes a 16-bit command, most significant byte first.
    fn command(&mut self, command: u16) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &command.to_be_bytes())
            .map_err(Error::I2c)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;

    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as DelayTx};
    use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as I2cTx};

    use super::*;

    const ADDR: u8 = 0x44;

    /// Raw 0x6666 is exactly 25 °C and 40 %RH; its CRC is 0x93.
    const RESULT_25C_40PCT: [u8; 6] = [0x66, 0x66, 0x93, 0x66, 0x66, 0x93];

    #[test]
    fn crc8_matches_known_vectors() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92, "datasheet example");
        assert_eq!(crc8(&[0x00, 0x00]), 0x81);
        assert_eq!(crc8(&[0x66, 0x66]), 0x93);
        assert_eq!(crc8(&[0xFF, 0xFF]), 0xAC);
        assert_eq!(crc8(&[]), 0xFF, "the initial value when there is no data");
        const AT_COMPILE_TIME: u8 = crc8(&[0xBE, 0xEF]);
        assert_eq!(AT_COMPILE_TIME, 0x92);
    }

    #[test]
    fn conversions_cover_the_raw_range() {
        assert_eq!(temperature_c(0), -45.0);
        assert_eq!(temperature_c(u16::MAX), 130.0);
        assert_eq!(humidity_pct(0), 0.0);
        assert_eq!(humidity_pct(u16::MAX), 100.0);
        assert_eq!(temperature_c(0x6666), 25.0);
        assert_eq!(humidity_pct(0x6666), 40.0);
        assert!((humidity_pct(0x8000) - 50.0).abs() < 0.001);
    }

    #[test]
    fn a_measurement_writes_the_command_waits_and_reads_six_bytes() {
        let i2c = I2cMock::new(&[
            I2cTx::write(ADDR, vec![0x24, 0x00]),
            I2cTx::read(ADDR, RESULT_25C_40PCT.to_vec()),
        ]);
        let mut delay = CheckedDelay::new(&[DelayTx::delay_us(15_500)]);
        let mut sensor = Sht3x::new(i2c, Address::Low);
        let m = sensor
            .measure(Repeatability::High, &mut delay)
            .expect("valid answer");
        assert_eq!(m.raw_temperature, 0x6666);
        assert_eq!(m.raw_humidity, 0x6666);
        assert_eq!(m.temperature_c, 25.0);
        assert_eq!(m.humidity_pct, 40.0);
        sensor.release().done();
        delay.done();
    }

    #[test]
    fn each_repeatability_sends_its_command_and_waits_its_duration() {
        let cases = [
            (Repeatability::Medium, [0x24, 0x0B], 6_500),
            (Repeatability::Low, [0x24, 0x16], 4_500),
        ];
        for (repeatability, command, wait_us) in cases {
            let i2c = I2cMock::new(&[
                I2cTx::write(ADDR, command.to_vec()),
                I2cTx::read(ADDR, RESULT_25C_40PCT.to_vec()),
            ]);
            let mut delay = CheckedDelay::new(&[DelayTx::delay_us(wait_us)]);
            let mut sensor = Sht3x::new(i2c, Address::Low);
            sensor
                .measure(repeatability, &mut delay)
                .expect("valid answer");
            sensor.release().done();
            delay.done();
        }
    }

    #[test]
    fn the_high_address_is_0x45() {
        let i2c = I2cMock::new(&[
            I2cTx::write(0x45, vec![0x24, 0x16]),
            I2cTx::read(0x45, RESULT_25C_40PCT.to_vec()),
        ]);
        let mut sensor = Sht3x::new(i2c, Address::High);
        assert_eq!(sensor.address(), 0x45);
        sensor
            .measure(Repeatability::Low, &mut NoopDelay::new())
            .expect("valid answer");
        sensor.release().done();
    }

    #[test]
    fn conversion_edges_come_through_the_bus() {
        // Raw 0x0000 (CRC 0x81) and 0xFFFF (CRC 0xAC): the ends of both scales.
        let i2c = I2cMock::new(&[
            I2cTx::write(ADDR, vec![0x24, 0x00]),
            I2cTx::read(ADDR, vec![0x00, 0x00, 0x81, 0xFF, 0xFF, 0xAC]),
        ]);
        let mut sensor = Sht3x::new(i2c, Address::Low);
        let m = sensor
            .measure(Repeatability::High, &mut NoopDelay::new())
            .expect("valid answer");
        assert_eq!((m.temperature_c, m.humidity_pct), (-45.0, 100.0));
        sensor.release().done();
    }

    #[test]
    fn a_corrupted_temperature_crc_is_an_error_not_a_value() {
        let mut answer = RESULT_25C_40PCT;
        answer[2] ^= 0x01;
        let i2c = I2cMock::new(&[
            I2cTx::write(ADDR, vec![0x24, 0x00]),
            I2cTx::read(ADDR, answer.to_vec()),
        ]);
        let mut sensor = Sht3x::new(i2c, Address::Low);
        assert_eq!(
            sensor.measure(Repeatability::High, &mut NoopDelay::new()),
            Err(Error::Crc {
                word: 0x6666,
                expected: 0x93,
                received: 0x92
            })
        );
        sensor.release().done();
    }

    #[test]
    fn a_corrupted_humidity_word_is_caught_by_its_crc() {
        let mut answer = RESULT_25C_40PCT;
        answer[4] ^= 0x80;
        let i2c = I2cMock::new(&[
            I2cTx::write(ADDR, vec![0x24, 0x00]),
            I2cTx::read(ADDR, answer.to_vec()),
        ]);
        let mut sensor = Sht3x::new(i2c, Address::Low);
        assert!(matches!(
            sensor.measure(Repeatability::High, &mut NoopDelay::new()),
            Err(Error::Crc {
                word: 0x66E6,
                received: 0x93,
                ..
            })
        ));
        sensor.release().done();
    }

    #[test]
    fn a_nacked_command_is_an_i2c_error() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let i2c = I2cMock::new(&[I2cTx::write(ADDR, vec![0x24, 0x00]).with_error(nack)]);
        let mut sensor = Sht3x::new(i2c, Address::Low);
        assert_eq!(
            sensor.measure(Repeatability::High, &mut NoopDelay::new()),
            Err(Error::I2c(nack))
        );
        sensor.release().done();
    }

    #[test]
    fn a_nacked_read_header_is_an_i2c_error() {
        // A sensor still measuring (or without data) does not acknowledge its read header.
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let i2c = I2cMock::new(&[
            I2cTx::write(ADDR, vec![0x24, 0x00]),
            I2cTx::read(ADDR, vec![0; 6]).with_error(nack),
        ]);
        let mut sensor = Sht3x::new(i2c, Address::Low);
        assert_eq!(
            sensor.measure(Repeatability::High, &mut NoopDelay::new()),
            Err(Error::I2c(nack))
        );
        sensor.release().done();
    }

    #[test]
    fn soft_reset_writes_0x30a2_and_waits_the_reset_time() {
        let i2c = I2cMock::new(&[I2cTx::write(ADDR, vec![0x30, 0xA2])]);
        let mut delay = CheckedDelay::new(&[DelayTx::delay_us(1_500)]);
        let mut sensor = Sht3x::new(i2c, Address::Low);
        sensor.soft_reset(&mut delay).expect("acknowledged");
        sensor.release().done();
        delay.done();
    }

    #[test]
    fn status_is_read_after_its_command_and_crc_checked() {
        // 0x8010 (alert pending, reset detected: the power-on value) has CRC 0xE1.
        let i2c = I2cMock::new(&[
            I2cTx::write(ADDR, vec![0xF3, 0x2D]),
            I2cTx::read(ADDR, vec![0x80, 0x10, 0xE1]),
            I2cTx::write(ADDR, vec![0xF3, 0x2D]),
            I2cTx::read(ADDR, vec![0x80, 0x10, 0xE0]),
        ]);
        let mut delay = CheckedDelay::new(&[DelayTx::delay_us(1_000), DelayTx::delay_us(1_000)]);
        let mut sensor = Sht3x::new(i2c, Address::Low);
        let status = sensor.status(&mut delay).expect("valid status");
        assert_eq!(status, STATUS_ALERT_PENDING | STATUS_RESET_DETECTED);
        assert_eq!(
            sensor.status(&mut delay),
            Err(Error::Crc {
                word: 0x8010,
                expected: 0xE1,
                received: 0xE0
            })
        );
        sensor.release().done();
        delay.done();
    }

    #[test]
    fn clear_status_and_heater_commands() {
        let i2c = I2cMock::new(&[
            I2cTx::write(ADDR, vec![0x30, 0x41]),
            I2cTx::write(ADDR, vec![0x30, 0x6D]),
            I2cTx::write(ADDR, vec![0x30, 0x66]),
        ]);
        let mut delay = NoopDelay::new();
        let mut sensor = Sht3x::new(i2c, Address::Low);
        sensor.clear_status(&mut delay).expect("acknowledged");
        sensor.set_heater(true, &mut delay).expect("acknowledged");
        sensor.set_heater(false, &mut delay).expect("acknowledged");
        sensor.release().done();
    }
}
