//! A simulated TI ADS1115 16-bit ADC, at register level.
//!
//! What it models:
//!
//! - The pointer register: a one-byte write selects the register that later reads return; a
//!   three-byte write is the pointer and a 16-bit value, MSB first. Pointer values above 3, and
//!   writes of two or more than three bytes, are refused with a data NACK. Writes to the
//!   conversion register are acknowledged and ignored (it is read-only).
//! - Reads return the selected register MSB first; bytes past the second read 0xFF.
//! - The config register (reset value 0x8583). Writing OS = 1 in single-shot mode (MODE = 1)
//!   while idle starts a conversion of the MUX input at the PGA range (a start while a
//!   conversion runs is ignored, as on the chip; the other fields are still written).
//!   **Timing:** by default a conversion completes at once, so the next config read shows OS = 1
//!   (idle). [`SimAds1115::set_busy_reads`]`(n)` makes the next `n` config reads after a start
//!   show OS = 0 (converting); the conversion completes on the `n`-th of them and the read after
//!   shows idle. The conversion register keeps the previous result until then.
//! - In continuous mode (MODE = 0) every read of the conversion register returns a fresh
//!   conversion.
//! - Conversions: the input voltage of the MUX selection (AINx against GND, or the four
//!   differential pairs), quantised to FSR / 32768 (rounded to the nearest code) and clipped to
//!   0x7FFF / 0x8000. PGA 110 and 111 are ±0.256 V, like 101. The input is not limited to the
//!   supply rails; the comparator and the ALERT/RDY pin are not modelled (the threshold
//!   registers only store what is written, reset 0x8000 / 0x7FFF).
//! - Faults: [`Fault::Nack`] is answered by the bus. [`Fault::Stuck`] stops conversions from
//!   updating the conversion register (OS still cycles). [`Fault::CorruptCrc`]: the chip has no
//!   CRC, so bit 14 of every register it sends is flipped (a conversion result is off by 2^14
//!   codes, half of full scale; OS, bit 15, is untouched). [`Fault::Noise`] adds uniform noise of
//!   ±50 mV to each conversion's input.
//!
//! A `SimAds1115` is a handle: its clones share one chip, so a test keeps a clone to set the
//! inputs and the fault after attaching another to a [`super::SimI2c`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use embedded_hal::i2c::SevenBitAddress;

use super::{Fault, I2cChip, SimI2cError};
use crate::rng::SimRng;

const REG_CONVERSION: u8 = 0x00;
const REG_CONFIG: u8 = 0x01;
const REG_LO_THRESH: u8 = 0x02;
const REG_HI_THRESH: u8 = 0x03;
const CONFIG_OS: u16 = 1 << 15;
const CONFIG_MODE_SINGLE: u16 = 1 << 8;
const CONFIG_RESET: u16 = 0x8583;
/// Bit flipped in what the chip sends under [`Fault::CorruptCrc`].
const CORRUPT_BIT: u16 = 1 << 14;
/// Half-width of the uniform noise under [`Fault::Noise`], volts.
const NOISE_VOLTS: f64 = 0.050;

#[derive(Debug)]
struct State {
    fault: Fault,
    pointer: u8,
    /// The config register's written fields; OS is kept clear and computed on read.
    config: u16,
    lo_thresh: u16,
    hi_thresh: u16,
    conversion: u16,
    inputs: [f32; 4],
    busy_reads: u8,
    /// While converting: the config reads still to show OS = 0.
    busy_left: Option<u8>,
    conversions: u64,
    rng: SimRng,
}

impl State {
    fn single_shot(&self) -> bool {
        self.config & CONFIG_MODE_SINGLE != 0
    }

    fn write_register(&mut self, pointer: u8, value: u16) {
        match pointer {
            REG_CONFIG => {
                self.config = value & !CONFIG_OS;
                let start = value & CONFIG_OS != 0;
                if start && self.single_shot() && self.busy_left.is_none() {
                    match self.busy_reads {
                        0 => self.convert(),
                        n => self.busy_left = Some(n),
                    }
                }
            }
            REG_LO_THRESH => self.lo_thresh = value,
            REG_HI_THRESH => self.hi_thresh = value,
            // The conversion register is read-only.
            _ => {}
        }
    }

    fn read_register(&mut self) -> u16 {
        let word = match self.pointer {
            REG_CONVERSION => {
                if !self.single_shot() {
                    self.convert();
                }
                self.conversion
            }
            REG_CONFIG => match self.busy_left {
                Some(left) => {
                    if left <= 1 {
                        self.busy_left = None;
                        self.convert();
                    } else {
                        self.busy_left = Some(left - 1);
                    }
                    self.config
                }
                None => self.config | CONFIG_OS,
            },
            REG_LO_THRESH => self.lo_thresh,
            _ => self.hi_thresh,
        };
        if self.fault == Fault::CorruptCrc {
            word ^ CORRUPT_BIT
        } else {
            word
        }
    }

    /// One conversion of the configured input into the conversion register.
    fn convert(&mut self) {
        self.conversions += 1;
        if self.fault == Fault::Stuck {
            return;
        }
        let mut volts = self.mux_volts();
        if self.fault == Fault::Noise {
            volts += self.rng.range(-NOISE_VOLTS, NOISE_VOLTS);
        }
        let code = quantise(volts, pga_full_scale(self.config >> 9 & 0b111));
        self.conversion = u16::from_be_bytes(code.to_be_bytes());
    }

    /// AINp − AINn of the MUX field.
    fn mux_volts(&self) -> f64 {
        let input = |i: usize| f64::from(self.inputs[i]);
        match self.config >> 12 & 0b111 {
            0b000 => input(0) - input(1),
            0b001 => input(0) - input(3),
            0b010 => input(1) - input(3),
            0b011 => input(2) - input(3),
            0b100 => input(0),
            0b101 => input(1),
            0b110 => input(2),
            _ => input(3),
        }
    }
}

/// Full-scale range of a PGA field, volts.
fn pga_full_scale(pga: u16) -> f64 {
    match pga {
        0b000 => 6.144,
        0b001 => 4.096,
        0b010 => 2.048,
        0b011 => 1.024,
        0b100 => 0.512,
        _ => 0.256,
    }
}

/// The ideal output code of `volts` at ±`full_scale`: nearest code, clipped.
fn quantise(volts: f64, full_scale: f64) -> i16 {
    let code = (volts / full_scale * 32768.0).round();
    // Clamped into the i16 range (NaN becomes 0), so the cast is exact.
    code.clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
}

/// A simulated ADS1115; clones share the chip.
#[derive(Debug, Clone)]
pub struct SimAds1115 {
    address: SevenBitAddress,
    state: Arc<Mutex<State>>,
}

impl SimAds1115 {
    /// A chip after power-up at `address`, all inputs at 0 V.
    ///
    /// # Panics
    ///
    /// If `address` is not one the ADDR pin can select (0x48..=0x4B).
    pub fn new(address: SevenBitAddress) -> Self {
        assert!(
            (0x48..=0x4B).contains(&address),
            "an ADS1115 answers at 0x48..=0x4B, not {address:#04x}"
        );
        Self {
            address,
            state: Arc::new(Mutex::new(State {
                fault: Fault::None,
                pointer: REG_CONVERSION,
                config: CONFIG_RESET & !CONFIG_OS,
                lo_thresh: 0x8000,
                hi_thresh: 0x7FFF,
                conversion: 0,
                inputs: [0.0; 4],
                busy_reads: 0,
                busy_left: None,
                conversions: 0,
                rng: SimRng::new(u64::from(address)),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the voltage on AIN`channel` (against GND).
    ///
    /// # Panics
    ///
    /// If `channel` is not 0..=3.
    pub fn set_input_volts(&self, channel: u8, volts: f32) {
        assert!(channel < 4, "the ADS1115 has inputs AIN0..=AIN3");
        self.state().inputs[usize::from(channel)] = volts;
    }

    /// The voltage on AIN`channel`.
    ///
    /// # Panics
    ///
    /// If `channel` is not 0..=3.
    pub fn input_volts(&self, channel: u8) -> f32 {
        assert!(channel < 4, "the ADS1115 has inputs AIN0..=AIN3");
        self.state().inputs[usize::from(channel)]
    }

    /// Puts the chip in `fault`.
    pub fn set_fault(&self, fault: Fault) {
        self.state().fault = fault;
    }

    /// How many config reads after a start show the conversion still running (0: none, the
    /// default).
    pub fn set_busy_reads(&self, reads: u8) {
        self.state().busy_reads = reads;
    }

    /// Conversions performed so far (also those a [`Fault::Stuck`] chip threw away).
    pub fn conversions(&self) -> u64 {
        self.state().conversions
    }

    /// The config register as it would read now (without consuming a busy read).
    pub fn config(&self) -> u16 {
        let state = self.state();
        match state.busy_left {
            Some(_) => state.config,
            None => state.config | CONFIG_OS,
        }
    }
}

impl I2cChip for SimAds1115 {
    fn address(&self) -> SevenBitAddress {
        self.address
    }

    fn fault(&self) -> Fault {
        self.state().fault
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SimI2cError> {
        let mut state = self.state();
        match *bytes {
            // An address-only write (a bus scan) is acknowledged and does nothing.
            [] => Ok(()),
            [pointer, ..] if pointer > REG_HI_THRESH => Err(SimI2cError::DataNack),
            [pointer] => {
                state.pointer = pointer;
                Ok(())
            }
            [pointer, hi, lo] => {
                state.pointer = pointer;
                state.write_register(pointer, u16::from_be_bytes([hi, lo]));
                Ok(())
            }
            _ => Err(SimI2cError::DataNack),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), SimI2cError> {
        let mut state = self.state();
        let word = state.read_register().to_be_bytes();
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = word.get(i).copied().unwrap_or(0xFF);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal::delay::DelayNs;
    use embedded_hal::i2c::I2c;
    use firmware::drivers::ads1115::{
        Address, Ads1115, Channel, DataRate, Error, Gain, OS_POLLS, config_word,
    };

    use super::*;
    use crate::chips::SimI2c;

    /// Returns at once: the simulated chip does not need real time.
    struct NoDelay;

    impl DelayNs for NoDelay {
        fn delay_ns(&mut self, _ns: u32) {}
    }

    /// A bus with one ADS1115 at 0x48, the driver on it, and a handle on the chip.
    fn rig(gain: Gain) -> (Ads1115<SimI2c>, SimAds1115) {
        let chip = SimAds1115::new(0x48);
        let mut bus = SimI2c::new();
        bus.attach(chip.clone());
        let mut adc = Ads1115::new(bus, Address::Gnd);
        adc.set_gain(gain);
        (adc, chip)
    }

    fn read(adc: &mut Ads1115<SimI2c>, channel: Channel) -> f32 {
        adc.read_volts(channel, &mut NoDelay).expect("conversion")
    }

    #[test]
    fn a_voltage_on_a1_reads_back_within_one_lsb() {
        let (mut adc, chip) = rig(Gain::V4_096);
        let lsb = Gain::V4_096.lsb_volts();
        for volts in [0.0, 0.001, 1.234_567, 2.5, 3.3, 4.0] {
            chip.set_input_volts(1, volts);
            let read = read(&mut adc, Channel::A1);
            assert!((read - volts).abs() <= lsb, "{volts} V read as {read} V");
        }
        // The other inputs are still at 0 V.
        assert_eq!(read(&mut adc, Channel::A0), 0.0);
        assert_eq!(chip.conversions(), 7);
    }

    #[test]
    fn inputs_beyond_the_range_clip_at_full_scale() {
        let (mut adc, chip) = rig(Gain::V2_048);
        chip.set_input_volts(2, 3.0);
        chip.set_input_volts(3, -3.0);
        let top = 2.048 * 32767.0 / 32768.0;
        assert_eq!(read(&mut adc, Channel::A2), top);
        assert_eq!(read(&mut adc, Channel::A3), -2.048);
        // The same 3 V fits at ±4.096 V.
        adc.set_gain(Gain::V4_096);
        assert!((read(&mut adc, Channel::A2) - 3.0).abs() <= Gain::V4_096.lsb_volts());
        // And 0.3 V clips at ±0.256 V.
        adc.set_gain(Gain::V0_256);
        chip.set_input_volts(0, 0.3);
        assert_eq!(read(&mut adc, Channel::A0), 0.256 * 32767.0 / 32768.0);
    }

    #[test]
    fn a_stuck_chip_keeps_its_last_result() {
        let (mut adc, chip) = rig(Gain::V4_096);
        chip.set_input_volts(1, 1.0);
        let before = read(&mut adc, Channel::A1);
        chip.set_fault(Fault::Stuck);
        chip.set_input_volts(1, 2.0);
        assert_eq!(read(&mut adc, Channel::A1), before);
        assert_eq!(read(&mut adc, Channel::A1), before);
        chip.set_fault(Fault::None);
        assert!((read(&mut adc, Channel::A1) - 2.0).abs() <= Gain::V4_096.lsb_volts());
    }

    #[test]
    fn the_driver_waits_out_slow_conversions_and_times_out_on_endless_ones() {
        let (mut adc, chip) = rig(Gain::V4_096);
        chip.set_input_volts(0, 1.5);
        chip.set_busy_reads(OS_POLLS - 1);
        assert!((read(&mut adc, Channel::A0) - 1.5).abs() <= Gain::V4_096.lsb_volts());
        chip.set_busy_reads(OS_POLLS);
        assert_eq!(
            adc.read_volts(Channel::A0, &mut NoDelay),
            Err(Error::Timeout)
        );
    }

    #[test]
    fn a_nacking_chip_is_a_bus_error() {
        let (mut adc, chip) = rig(Gain::V4_096);
        chip.set_fault(Fault::Nack);
        assert_eq!(
            adc.read_volts(Channel::A0, &mut NoDelay),
            Err(Error::I2c(SimI2cError::AddressNack))
        );
        // A driver at another address finds nobody either.
        let bus = adc.release();
        chip.set_fault(Fault::None);
        let mut other = Ads1115::new(bus, Address::Vdd);
        assert_eq!(
            other.read_volts(Channel::A0, &mut NoDelay),
            Err(Error::I2c(SimI2cError::AddressNack))
        );
    }

    #[test]
    fn noise_stays_within_fifty_millivolts_and_varies() {
        let (mut adc, chip) = rig(Gain::V4_096);
        chip.set_input_volts(0, 2.0);
        chip.set_fault(Fault::Noise);
        let reads: Vec<f32> = (0..50).map(|_| read(&mut adc, Channel::A0)).collect();
        let bound = 0.050 + Gain::V4_096.lsb_volts();
        assert!(reads.iter().all(|v| (v - 2.0).abs() <= bound), "{reads:?}");
        assert!(
            reads.iter().any(|v| (v - reads[0]).abs() > 0.001),
            "{reads:?}"
        );
    }

    #[test]
    fn a_corrupting_chip_is_off_by_half_the_range() {
        let (mut adc, chip) = rig(Gain::V4_096);
        chip.set_input_volts(0, 1.0);
        chip.set_fault(Fault::CorruptCrc);
        let read = read(&mut adc, Channel::A0);
        assert!((read - 3.048).abs() <= Gain::V4_096.lsb_volts(), "{read}");
    }

    #[test]
    fn registers_follow_the_pointer_protocol() {
        let chip = SimAds1115::new(0x4B);
        let mut bus = SimI2c::new();
        bus.attach(chip.clone());
        let mut word = [0u8; 2];
        // After reset the config reads 0x8583 and the conversion 0.
        bus.write_read(0x4B, &[REG_CONFIG], &mut word)
            .expect("config");
        assert_eq!(u16::from_be_bytes(word), CONFIG_RESET);
        bus.write_read(0x4B, &[REG_CONVERSION], &mut word)
            .expect("conversion");
        assert_eq!(word, [0, 0]);
        // The pointer stays where it was set; reads repeat the register.
        bus.write(0x4B, &[REG_HI_THRESH]).expect("pointer");
        bus.read(0x4B, &mut word).expect("hi");
        assert_eq!(word, [0x7F, 0xFF]);
        bus.write(0x4B, &[REG_LO_THRESH, 0x12, 0x34]).expect("lo");
        bus.read(0x4B, &mut word).expect("lo");
        assert_eq!(word, [0x12, 0x34]);
        // Unknown pointers and half registers are refused.
        assert_eq!(bus.write(0x4B, &[0x04]), Err(SimI2cError::DataNack));
        assert_eq!(
            bus.write(0x4B, &[REG_CONFIG, 0x85]),
            Err(SimI2cError::DataNack)
        );
        // A start is a write of OS = 1; with busy reads OS reads 0 until done.
        chip.set_input_volts(2, 1.0);
        chip.set_busy_reads(2);
        let config = config_word(Channel::A2, Gain::V2_048, DataRate::Sps128);
        let [hi, lo] = config.to_be_bytes();
        bus.write(0x4B, &[REG_CONFIG, hi, lo]).expect("start");
        let mut os = Vec::new();
        for _ in 0..3 {
            bus.write_read(0x4B, &[REG_CONFIG], &mut word)
                .expect("config");
            os.push(u16::from_be_bytes(word) & CONFIG_OS != 0);
        }
        assert_eq!(os, [false, false, true]);
        assert_eq!(chip.config(), config);
        bus.write_read(0x4B, &[REG_CONVERSION], &mut word)
            .expect("conversion");
        assert_eq!(i16::from_be_bytes(word), 16_000);
    }
}
