//! TI ADS1115: 16-bit delta-sigma ADC on I2C, here reading a current clamp on a motor or spindle
//! feed, turned into current and electrical power.
//!
//! Register map, as the datasheet (TI SBAS444) gives it:
//!
//! - 7-bit address `0b10010xx`, set by what the ADDR pin is tied to: GND 0x48, VDD 0x49,
//!   SDA 0x4A, SCL 0x4B.
//! - Every transfer starts with a pointer byte whose two low bits pick the register:
//!   0 conversion result, 1 config, 2 low threshold, 3 high threshold. A write is the pointer
//!   byte and then the 16-bit value; a read returns the register the pointer last selected.
//!   Registers go over the bus most significant byte first.
//! - Config register, from the top bit down: OS (15), MUX (14:12), PGA (11:9), MODE (8),
//!   DR (7:5) and the comparator fields COMP_MODE, COMP_POL, COMP_LAT, COMP_QUE (4:0).
//!   Writing OS = 1 while powered down starts one conversion; reading OS gives 0 while a
//!   conversion runs and 1 when the device is idle. MUX 100..111 measures AIN0..AIN3 against
//!   GND. PGA 000..101 sets the full-scale range ±6.144, ±4.096, ±2.048, ±1.024, ±0.512,
//!   ±0.256 V (110 and 111 are ±0.256 V again). MODE 1 is single-shot (convert, then power
//!   down). DR 000..111 is 8, 16, 32, 64, 128, 250, 475, 860 samples per second.
//!   COMP_QUE = 11 switches the comparator off. The value after reset is 0x8583.
//! - The conversion result is a two's-complement 16-bit code; one code is FSR / 2^15, and the
//!   code clips at 0x7FFF (+FS) and 0x8000 (−FS).
//!
//! The driver always runs single-shot conversions with the comparator off: it writes the config
//! with OS = 1, waits the conversion time, checks OS a bounded number of times, and reads the
//! result.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Pointer value of the conversion result register.
pub const REG_CONVERSION: u8 = 0x00;
/// Pointer value of the config register.
pub const REG_CONFIG: u8 = 0x01;
/// Pointer value of the comparator low-threshold register.
pub const REG_LO_THRESH: u8 = 0x02;
/// Pointer value of the comparator high-threshold register.
pub const REG_HI_THRESH: u8 = 0x03;

/// Config bit 15: write 1 to start a single-shot conversion; reads 1 when idle.
pub const CONFIG_OS: u16 = 1 << 15;
/// Config bit 8: single-shot (power-down) mode when set, continuous when clear.
pub const CONFIG_MODE_SINGLE: u16 = 1 << 8;
/// Config bits 4:0 with the comparator disabled (COMP_QUE = 11, the other fields at reset).
pub const CONFIG_COMP_DISABLED: u16 = 0b0_0011;
/// The config register after power-up or reset.
pub const CONFIG_RESET: u16 = 0x8583;

/// Checks of the OS bit after the nominal conversion time before giving up.
pub const OS_POLLS: u8 = 8;

/// Where the ADDR pin is tied, which sets the I2C address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Address {
    /// ADDR to GND: 0x48.
    #[default]
    Gnd,
    /// ADDR to VDD: 0x49.
    Vdd,
    /// ADDR to SDA: 0x4A.
    Sda,
    /// ADDR to SCL: 0x4B.
    Scl,
}

impl Address {
    /// The 7-bit I2C address.
    pub const fn bits(self) -> u8 {
        match self {
            Address::Gnd => 0x48,
            Address::Vdd => 0x49,
            Address::Sda => 0x4A,
            Address::Scl => 0x4B,
        }
    }
}

/// A single-ended input, measured against GND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// AIN0.
    A0,
    /// AIN1.
    A1,
    /// AIN2.
    A2,
    /// AIN3.
    A3,
}

impl Channel {
    /// The MUX field (bits 14:12) selecting this input against GND.
    pub const fn mux_bits(self) -> u16 {
        match self {
            Channel::A0 => 0b100,
            Channel::A1 => 0b101,
            Channel::A2 => 0b110,
            Channel::A3 => 0b111,
        }
    }
}

/// Full-scale range of the programmable gain amplifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gain {
    /// ±6.144 V (the input still must stay within the supply).
    V6_144,
    /// ±4.096 V (the input still must stay within the supply).
    V4_096,
    /// ±2.048 V, the reset value.
    #[default]
    V2_048,
    /// ±1.024 V.
    V1_024,
    /// ±0.512 V.
    V0_512,
    /// ±0.256 V.
    V0_256,
}

impl Gain {
    /// The PGA field (bits 11:9).
    pub const fn pga_bits(self) -> u16 {
        match self {
            Gain::V6_144 => 0b000,
            Gain::V4_096 => 0b001,
            Gain::V2_048 => 0b010,
            Gain::V1_024 => 0b011,
            Gain::V0_512 => 0b100,
            Gain::V0_256 => 0b101,
        }
    }

    /// The full-scale range, volts (the code 0x8000 is −FSR).
    pub const fn full_scale_volts(self) -> f32 {
        match self {
            Gain::V6_144 => 6.144,
            Gain::V4_096 => 4.096,
            Gain::V2_048 => 2.048,
            Gain::V1_024 => 1.024,
            Gain::V0_512 => 0.512,
            Gain::V0_256 => 0.256,
        }
    }

    /// Volts per code: FSR / 32768.
    pub fn lsb_volts(self) -> f32 {
        self.full_scale_volts() / 32768.0
    }
}

/// Output data rate; in single-shot mode one conversion takes one period of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataRate {
    /// 8 samples per second.
    Sps8,
    /// 16 samples per second.
    Sps16,
    /// 32 samples per second.
    Sps32,
    /// 64 samples per second.
    Sps64,
    /// 128 samples per second, the reset value.
    #[default]
    Sps128,
    /// 250 samples per second.
    Sps250,
    /// 475 samples per second.
    Sps475,
    /// 860 samples per second.
    Sps860,
}

impl DataRate {
    /// The DR field (bits 7:5).
    pub const fn dr_bits(self) -> u16 {
        match self {
            DataRate::Sps8 => 0b000,
            DataRate::Sps16 => 0b001,
            DataRate::Sps32 => 0b010,
            DataRate::Sps64 => 0b011,
            DataRate::Sps128 => 0b100,
            DataRate::Sps250 => 0b101,
            DataRate::Sps475 => 0b110,
            DataRate::Sps860 => 0b111,
        }
    }

    /// Samples per second.
    pub const fn samples_per_second(self) -> u32 {
        match self {
            DataRate::Sps8 => 8,
            DataRate::Sps16 => 16,
            DataRate::Sps32 => 32,
            DataRate::Sps64 => 64,
            DataRate::Sps128 => 128,
            DataRate::Sps250 => 250,
            DataRate::Sps475 => 475,
            DataRate::Sps860 => 860,
        }
    }

    /// How long the driver waits before it first checks OS, µs: one sample period plus 10 %
    /// (the internal oscillator's tolerance) plus 100 µs for the wake-up from power-down.
    pub const fn conversion_time_us(self) -> u32 {
        let period_us = 1_000_000 / self.samples_per_second();
        period_us + period_us / 10 + 100
    }

    /// The wait between two checks of OS once the nominal time is over, µs.
    pub const fn poll_interval_us(self) -> u32 {
        let interval = self.conversion_time_us() / 10;
        if interval < 100 { 100 } else { interval }
    }
}

/// A driver error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus failed (no acknowledge, arbitration lost, ...).
    I2c(E),
    /// OS never read back idle: the conversion never finished.
    Timeout,
}

/// How the measured load is fed, for [`power_w`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phases {
    /// Single phase: P = V × I × PF, with the line-to-neutral voltage.
    Single,
    /// Balanced three-phase, one phase clamped: P = √3 × V × I × PF, with the line-to-line
    /// voltage.
    Three,
}

/// The config word of a single-shot conversion of `channel` against GND: OS = 1 (start),
/// MODE = 1 (single-shot), comparator off.
pub const fn config_word(channel: Channel, gain: Gain, rate: DataRate) -> u16 {
    CONFIG_OS
        | channel.mux_bits() << 12
        | gain.pga_bits() << 9
        | CONFIG_MODE_SINGLE
        | rate.dr_bits() << 5
        | CONFIG_COMP_DISABLED
}

/// The input voltage of a conversion code at `gain`: code × FSR / 32768.
pub fn raw_to_volts(raw: i16, gain: Gain) -> f32 {
    f32::from(raw) * gain.lsb_volts()
}

/// The current, amperes, of a clamp whose output is `volts` for a transfer ratio of
/// `amps_per_volt` (for example 30 A / 1 V). It assumes a clamp transducer whose DC output is
/// proportional to the RMS current; a bare current transformer's AC output would need RMS
/// sampling first.
pub fn clamp_current_a(volts: f32, amps_per_volt: f32) -> f32 {
    volts * amps_per_volt
}

/// Real power, watts, drawn at `current_a` (RMS) on a line of `line_voltage` (RMS) with
/// `power_factor` (0..=1). For [`Phases::Three`] the load is taken as balanced and
/// `line_voltage` is line-to-line.
pub fn power_w(current_a: f32, line_voltage: f32, power_factor: f32, phases: Phases) -> f32 {
    /// √3, which `core::f32::consts` does not have on stable.
    const SQRT_3: f32 = 1.732_050_8;
    let single = current_a * line_voltage * power_factor;
    match phases {
        Phases::Single => single,
        Phases::Three => SQRT_3 * single,
    }
}

/// An ADS1115 on an I2C bus, taking single-shot readings of its single-ended inputs.
#[derive(Debug)]
pub struct Ads1115<I2C> {
    i2c: I2C,
    address: u8,
    gain: Gain,
    rate: DataRate,
}

impl<I2C: I2c> Ads1115<I2C> {
    /// The driver of the ADS1115 at `address`, at the reset gain (±2.048 V) and data rate
    /// (128 SPS). It does not touch the bus.
    pub fn new(i2c: I2C, address: Address) -> Self {
        Self {
            i2c,
            address: address.bits(),
            gain: Gain::default(),
            rate: DataRate::default(),
        }
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    /// The 7-bit I2C address in use.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// Sets the full-scale range of the next conversions.
    pub fn set_gain(&mut self, gain: Gain) {
        self.gain = gain;
    }

    /// The full-scale range in use.
    pub fn gain(&self) -> Gain {
        self.gain
    }

    /// Sets the data rate (and so the conversion time) of the next conversions.
    pub fn set_rate(&mut self, rate: DataRate) {
        self.rate = rate;
    }

    /// The data rate in use.
    pub fn rate(&self) -> DataRate {
        self.rate
    }

    /// Starts a single-shot conversion on `channel`, waits the conversion time, then checks
    /// OS up to [`OS_POLLS`] times (waiting [`DataRate::poll_interval_us`] between checks),
    /// and reads the result code.
    pub fn read_raw(
        &mut self,
        channel: Channel,
        delay: &mut impl DelayNs,
    ) -> Result<i16, Error<I2C::Error>> {
        let [hi, lo] = config_word(channel, self.gain, self.rate).to_be_bytes();
        self.i2c
            .write(self.address, &[REG_CONFIG, hi, lo])
            .map_err(Error::I2c)?;
        delay.delay_us(self.rate.conversion_time_us());
        let mut idle = false;
        for poll in 0..OS_POLLS {
            if self.read_register(REG_CONFIG)? & CONFIG_OS != 0 {
                idle = true;
                break;
            }
            if poll + 1 < OS_POLLS {
                delay.delay_us(self.rate.poll_interval_us());
            }
        }
        if !idle {
            return Err(Error::Timeout);
        }
        let raw = self.read_register(REG_CONVERSION)?;
        Ok(i16::from_be_bytes(raw.to_be_bytes()))
    }

    /// Starts a single-shot conversion on `channel`, waits the conversion time (and polls OS a
    /// bounded number of times), reads the result and converts it to volts.
    pub fn read_volts(
        &mut self,
        channel: Channel,
        delay: &mut impl DelayNs,
    ) -> Result<f32, Error<I2C::Error>> {
        let raw = self.read_raw(channel, delay)?;
        Ok(raw_to_volts(raw, self.gain))
    }

    /// Reads a 16-bit register: the pointer byte, then two bytes back, MSB first.
    fn read_register(&mut self, pointer: u8) -> Result<u16, Error<I2C::Error>> {
        let mut buf = [0u8; 2];
        self.i2c
            .write_read(self.address, &[pointer], &mut buf)
            .map_err(Error::I2c)?;
        Ok(u16::from_be_bytes(buf))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;
    use std::vec::Vec;

    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    /// Adds up the requested waits instead of waiting.
    #[derive(Debug, Default)]
    struct CountingDelay {
        total_ns: u64,
    }

    impl DelayNs for CountingDelay {
        fn delay_ns(&mut self, ns: u32) {
            self.total_ns += u64::from(ns);
        }
    }

    const ADDR: u8 = 0x48;

    fn start(config: u16) -> Transaction {
        let [hi, lo] = config.to_be_bytes();
        Transaction::write(ADDR, vec![REG_CONFIG, hi, lo])
    }

    fn read_config(config: u16) -> Transaction {
        Transaction::write_read(ADDR, vec![REG_CONFIG], config.to_be_bytes().to_vec())
    }

    fn read_conversion(raw: i16) -> Transaction {
        Transaction::write_read(ADDR, vec![REG_CONVERSION], raw.to_be_bytes().to_vec())
    }

    #[test]
    fn addresses_follow_the_addr_pin() {
        let all = [Address::Gnd, Address::Vdd, Address::Sda, Address::Scl];
        let bits: Vec<u8> = all.iter().map(|a| a.bits()).collect();
        assert_eq!(bits, [0x48, 0x49, 0x4A, 0x4B]);
    }

    #[test]
    fn config_words_have_the_datasheet_layout() {
        // The reset word differs from a default-settings single-shot word only in MUX
        // (000: AIN0 vs AIN1): OS 1, PGA 010, MODE 1, DR 100, COMP_QUE 11.
        assert_eq!(
            config_word(Channel::A0, Gain::V2_048, DataRate::Sps128) & !(0b111 << 12),
            CONFIG_RESET
        );
        // 1 100 010 1 | 100 00011: AIN0, ±2.048 V, 128 SPS.
        assert_eq!(
            config_word(Channel::A0, Gain::V2_048, DataRate::Sps128),
            0xC583
        );
        // 1 101 001 1 | 111 00011: AIN1, ±4.096 V, 860 SPS.
        assert_eq!(
            config_word(Channel::A1, Gain::V4_096, DataRate::Sps860),
            0xD3E3
        );
        // 1 111 101 1 | 000 00011: AIN3, ±0.256 V, 8 SPS.
        assert_eq!(
            config_word(Channel::A3, Gain::V0_256, DataRate::Sps8),
            0xFB03
        );
        // 1 110 000 1 | 101 00011: AIN2, ±6.144 V, 250 SPS.
        assert_eq!(
            config_word(Channel::A2, Gain::V6_144, DataRate::Sps250),
            0xE1A3
        );
    }

    #[test]
    fn codes_scale_to_the_full_scale_range() {
        assert_eq!(raw_to_volts(i16::MIN, Gain::V4_096), -4.096);
        assert_eq!(
            raw_to_volts(i16::MAX, Gain::V4_096),
            4.096 * 32767.0 / 32768.0
        );
        assert_eq!(raw_to_volts(0, Gain::V0_256), 0.0);
        assert_eq!(raw_to_volts(1, Gain::V2_048), 62.5e-6);
        assert_eq!(raw_to_volts(-1, Gain::V6_144), -187.5e-6);
        assert_eq!(raw_to_volts(i16::MIN, Gain::V0_256), -0.256);
    }

    #[test]
    fn a_single_shot_read_starts_waits_polls_and_reads() {
        let config = config_word(Channel::A1, Gain::V4_096, DataRate::Sps860);
        let expectations = [
            start(config),
            // Still converting, then idle.
            read_config(config & !CONFIG_OS),
            read_config(config),
            // 1.5 V at ±4.096 V is 12000 codes.
            read_conversion(12_000),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut adc = Ads1115::new(i2c.clone(), Address::Gnd);
        adc.set_gain(Gain::V4_096);
        adc.set_rate(DataRate::Sps860);
        let mut delay = CountingDelay::default();
        let volts = adc.read_volts(Channel::A1, &mut delay).expect("conversion");
        assert!((volts - 1.5).abs() < 1e-6, "{volts}");
        // At least one sample period (1/860 s) passed before the first check.
        assert!(delay.total_ns >= 1_000_000_000 / 860, "{}", delay.total_ns);
        i2c.done();
    }

    #[test]
    fn negative_codes_read_as_negative_volts() {
        let config = config_word(Channel::A0, Gain::V2_048, DataRate::Sps128);
        let expectations = [start(config), read_config(config), read_conversion(-16_000)];
        let mut i2c = Mock::new(&expectations);
        let mut adc = Ads1115::new(i2c.clone(), Address::Gnd);
        let volts = adc
            .read_volts(Channel::A0, &mut CountingDelay::default())
            .expect("conversion");
        assert!((volts + 1.0).abs() < 1e-6, "{volts}");
        i2c.done();
    }

    #[test]
    fn a_conversion_that_never_finishes_times_out() {
        let config = config_word(Channel::A2, Gain::V1_024, DataRate::Sps64);
        let mut expectations = vec![start(config)];
        expectations.extend((0..OS_POLLS).map(|_| read_config(config & !CONFIG_OS)));
        let mut i2c = Mock::new(&expectations);
        let mut adc = Ads1115::new(i2c.clone(), Address::Gnd);
        adc.set_gain(Gain::V1_024);
        adc.set_rate(DataRate::Sps64);
        assert_eq!(
            adc.read_volts(Channel::A2, &mut CountingDelay::default()),
            Err(Error::Timeout)
        );
        i2c.done();
    }

    #[test]
    fn a_nack_is_a_bus_error() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let config = config_word(Channel::A3, Gain::V2_048, DataRate::Sps128);
        let expectations = [start(config).with_error(nack)];
        let mut i2c = Mock::new(&expectations);
        let mut adc = Ads1115::new(i2c.clone(), Address::Gnd);
        assert_eq!(
            adc.read_volts(Channel::A3, &mut CountingDelay::default()),
            Err(Error::I2c(nack))
        );
        i2c.done();
    }

    #[test]
    fn a_nack_while_reading_the_result_is_a_bus_error() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data);
        let config = config_word(Channel::A0, Gain::V2_048, DataRate::Sps128);
        let expectations = [
            start(config),
            read_config(config),
            read_conversion(0).with_error(nack),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut adc = Ads1115::new(i2c.clone(), Address::Gnd);
        assert_eq!(
            adc.read_raw(Channel::A0, &mut CountingDelay::default()),
            Err(Error::I2c(nack))
        );
        i2c.done();
    }

    #[test]
    fn conversion_times_cover_one_sample_period() {
        for rate in [DataRate::Sps8, DataRate::Sps128, DataRate::Sps860] {
            let period_us = 1_000_000 / rate.samples_per_second();
            assert!(rate.conversion_time_us() > period_us);
            assert!(rate.poll_interval_us() >= 100);
        }
        assert_eq!(DataRate::Sps8.conversion_time_us(), 137_600);
    }

    #[test]
    fn clamp_volts_become_current_and_power() {
        // A 30 A / 1 V clamp reading 0.5 V: 15 A.
        let amps = clamp_current_a(0.5, 30.0);
        assert!((amps - 15.0).abs() < 1e-6);
        // 15 A at 230 V, PF 0.9: 3105 W.
        let single = power_w(amps, 230.0, 0.9, Phases::Single);
        assert!((single - 3105.0).abs() < 1e-2, "{single}");
        // 15 A per phase at 400 V line-to-line, PF 0.85: √3 × 400 × 15 × 0.85 ≈ 8833.5 W.
        let three = power_w(amps, 400.0, 0.85, Phases::Three);
        assert!((three - 8833.459).abs() < 0.1, "{three}");
        assert_eq!(power_w(0.0, 400.0, 0.85, Phases::Three), 0.0);
    }
}
