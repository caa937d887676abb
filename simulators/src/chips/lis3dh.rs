//! A simulated ST LIS3DH accelerometer, at register level.
//!
//! The chip is a register file behind a sub-address pointer. Every I2C write sets the pointer
//! from its first byte (bit 7: advance after each byte; bits 6:0: the register) and stores any
//! further bytes from there. A read returns registers from the pointer, advancing only when the
//! write that set it had bit 7. Writes to reserved addresses are refused (NACK): the datasheet
//! forbids them. Writes to read-only registers are ignored.
//!
//! The simulation is the chip's sampling clock:
//! - [`SimLis3dh::set_acceleration`] is what the output registers show while the FIFO is off
//!   (`CTRL_REG5.FIFO_EN` clear, or `FIFO_CTRL_REG.FM` bypass).
//! - [`SimLis3dh::push_sample`] is one sample at the output data rate. With the FIFO on, it
//!   goes into the 32-deep FIFO: FIFO mode stops collecting when full, stream mode drops the
//!   oldest. Stream-to-FIFO behaves as stream (its trigger pins are not modelled). With the
//!   FIFO off, it just sets the acceleration. Powered down (`CTRL_REG1.ODR` = 0) the chip
//!   takes no samples, so pushes are ignored.
//!
//! Reading the output registers latches one sample, so its six bytes are consistent however
//! they are read; reading `OUT_Z_H` (the last byte of a set) releases it and, with the FIFO on,
//! pops it. When the FIFO is empty, the last sample sent is repeated. After `OUT_Z_H` the
//! pointer advances on to `FIFO_CTRL_REG`: the roll-over back to `OUT_X_L` that some ST notes
//! describe for FIFO bursts is not modelled.
//!
//! Values are encoded when read, with the range and mode in the registers at that moment:
//! left-justified, little-endian, 12 bits in high-resolution mode (1/2/4/12 mg per step at
//! ±2/4/8/16 g), 10 bits in normal mode, 8 in low-power mode, clamped to the full scale.
//!
//! `FIFO_SRC_REG` follows the datasheet's register description: the 5-bit level saturates at
//! 31 and the overrun bit is set while the FIFO is full (32 unread samples), so exactly 32 and
//! "32 and older ones overwritten" look the same; reading one sample clears it.
//!
//! The chip is a cheap handle: clones share one chip, so a test or a node attaches a clone to
//! the [`SimI2c`](super::SimI2c) bus and keeps another to feed it acceleration and faults.
//!
//! Faults: [`Fault::Stuck`] repeats the last sample sent (the FIFO still drains);
//! [`Fault::CorruptCrc`] (this chip has no CRC) flips bit 6 of every `OUT_X_H` byte sent, X off
//! by half the full scale; [`Fault::Noise`] adds uniform noise of up to ±0.5 g to each axis of
//! each sample; [`Fault::Nack`] is handled by the bus.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use embedded_hal::i2c::SevenBitAddress;

use super::{Fault, I2cChip, SimI2cError};
use crate::rng::SimRng;

/// Register addresses, from the datasheet's register map.
mod reg {
    pub const WHO_AM_I: u8 = 0x0F;
    pub const CTRL_REG0: u8 = 0x1E;
    pub const CTRL_REG1: u8 = 0x20;
    pub const CTRL_REG4: u8 = 0x23;
    pub const CTRL_REG5: u8 = 0x24;
    pub const STATUS_REG: u8 = 0x27;
    pub const OUT_X_L: u8 = 0x28;
    pub const OUT_X_H: u8 = 0x29;
    pub const OUT_Z_H: u8 = 0x2D;
    pub const FIFO_CTRL_REG: u8 = 0x2E;
    pub const FIFO_SRC_REG: u8 = 0x2F;
}

/// Samples the FIFO holds.
pub const FIFO_DEPTH: usize = 32;
/// What a LIS3DH answers in `WHO_AM_I`.
pub const DEVICE_ID: u8 = 0x33;
/// Largest noise added per axis in [`Fault::Noise`], g.
pub const NOISE_G: f32 = 0.5;

const AUTO_INCREMENT: u8 = 0x80;

/// A simulated LIS3DH. Clones are handles to the same chip.
#[derive(Debug, Clone)]
pub struct SimLis3dh {
    address: SevenBitAddress,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    regs: [u8; 0x40],
    who_am_i: u8,
    pointer: u8,
    auto_increment: bool,
    fault: Fault,
    acceleration: [f32; 3],
    new_data: bool,
    data_overrun: bool,
    fifo: VecDeque<[f32; 3]>,
    latched: Option<[i16; 3]>,
    last_sent: [i16; 3],
    rng: SimRng,
}

/// How a register answers writes.
enum Access {
    ReadWrite,
    ReadOnly,
    Reserved,
}

fn access(register: u8) -> Access {
    match register {
        0x1E..=0x26 | 0x2E | 0x30 | 0x32..=0x34 | 0x36..=0x38 | 0x3A..=0x3F => Access::ReadWrite,
        0x07..=0x0D | 0x0F | 0x27..=0x2D | 0x2F | 0x31 | 0x35 | 0x39 => Access::ReadOnly,
        _ => Access::Reserved,
    }
}

impl SimLis3dh {
    /// A powered-down LIS3DH at `address` (0x18 with SA0 low, 0x19 with SA0 high), at rest.
    ///
    /// # Panics
    /// If `address` is neither: the chip cannot be strapped to anything else.
    pub fn new(address: SevenBitAddress) -> Self {
        assert!(
            address == 0x18 || address == 0x19,
            "a LIS3DH answers at 0x18 or 0x19, not {address:#04x}"
        );
        let mut regs = [0u8; 0x40];
        // Power-on values: CTRL_REG0 has a fixed bit 4, CTRL_REG1 has the axes on and ODR 0.
        regs[usize::from(reg::CTRL_REG0)] = 0x10;
        regs[usize::from(reg::CTRL_REG1)] = 0x07;
        Self {
            address,
            state: Arc::new(Mutex::new(State {
                regs,
                who_am_i: DEVICE_ID,
                pointer: 0,
                auto_increment: false,
                fault: Fault::None,
                acceleration: [0.0; 3],
                new_data: false,
                data_overrun: false,
                fifo: VecDeque::with_capacity(FIFO_DEPTH),
                latched: None,
                last_sent: [0; 3],
                rng: SimRng::new(0x4C15_3D48 ^ u64::from(address)),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked mid-transaction leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts the chip in (or out of) a fault.
    pub fn set_fault(&self, fault: Fault) {
        self.state().fault = fault;
    }

    /// The acceleration the output registers show while the FIFO is off, g.
    pub fn set_acceleration(&self, x_g: f32, y_g: f32, z_g: f32) {
        self.state().set_acceleration([x_g, y_g, z_g]);
    }

    /// One sample at the output data rate, g: into the FIFO when it is on (see the module
    /// docs), otherwise the new acceleration. Ignored while powered down.
    pub fn push_sample(&self, x_g: f32, y_g: f32, z_g: f32) {
        self.state().push_sample([x_g, y_g, z_g]);
    }

    /// Unread samples in the FIFO.
    pub fn fifo_len(&self) -> usize {
        self.state().fifo.len()
    }

    /// The current content of a read/write register (to check what a driver configured).
    pub fn register(&self, register: u8) -> u8 {
        self.state()
            .regs
            .get(usize::from(register))
            .copied()
            .unwrap_or(0)
    }

    /// Makes `WHO_AM_I` answer `id`, as a different part at the same address would.
    pub fn set_who_am_i(&self, id: u8) {
        self.state().who_am_i = id;
    }
}

impl State {
    fn reg(&self, register: u8) -> u8 {
        self.regs[usize::from(register & 0x3F)]
    }

    fn powered_down(&self) -> bool {
        self.reg(reg::CTRL_REG1) >> 4 == 0
    }

    fn fifo_mode(&self) -> u8 {
        self.reg(reg::FIFO_CTRL_REG) >> 6
    }

    fn fifo_on(&self) -> bool {
        self.reg(reg::CTRL_REG5) & 0x40 != 0 && self.fifo_mode() != 0b00
    }

    fn set_acceleration(&mut self, g: [f32; 3]) {
        self.acceleration = g;
        self.data_overrun |= self.new_data;
        self.new_data = true;
    }

    fn push_sample(&mut self, g: [f32; 3]) {
        if self.powered_down() {
            return;
        }
        if !self.fifo_on() {
            self.set_acceleration(g);
            return;
        }
        if self.fifo.len() == FIFO_DEPTH {
            if self.fifo_mode() == 0b01 {
                // FIFO mode: full means stop collecting.
                return;
            }
            self.fifo.pop_front();
        }
        self.fifo.push_back(g);
    }

    /// The sample the output registers show now (before byte-level faults).
    fn next_sample(&mut self) -> [i16; 3] {
        if self.powered_down() || self.fault == Fault::Stuck {
            return self.last_sent;
        }
        let g = if self.fifo_on() {
            match self.fifo.front() {
                Some(g) => *g,
                None => return self.last_sent,
            }
        } else {
            self.acceleration
        };
        let noisy = g.map(|axis| {
            if self.fault == Fault::Noise {
                axis + self.rng.range(-f64::from(NOISE_G), f64::from(NOISE_G)) as f32
            } else {
                axis
            }
        });
        let (ctrl1, ctrl4) = (self.reg(reg::CTRL_REG1), self.reg(reg::CTRL_REG4));
        let raw = noisy.map(|axis| encode(axis, ctrl1, ctrl4));
        self.last_sent = raw;
        raw
    }

    fn output_byte(&mut self, register: u8) -> u8 {
        let sample = match self.latched {
            Some(sample) => sample,
            None => {
                let sample = self.next_sample();
                self.latched = Some(sample);
                sample
            }
        };
        let offset = usize::from(register - reg::OUT_X_L);
        let mut byte = sample[offset / 2].to_le_bytes()[offset % 2];
        if register == reg::OUT_X_H && self.fault == Fault::CorruptCrc {
            byte ^= 0x40;
        }
        if register == reg::OUT_Z_H {
            self.latched = None;
            self.new_data = false;
            self.data_overrun = false;
            if self.fifo_on() {
                self.fifo.pop_front();
            }
        }
        byte
    }

    fn status(&self) -> u8 {
        let (available, overrun) = if self.fifo_on() {
            (!self.fifo.is_empty(), self.fifo.len() == FIFO_DEPTH)
        } else {
            (self.new_data, self.data_overrun)
        };
        // ZYXDA, ZDA, YDA, XDA in bits 3:0; ZYXOR, ZOR, YOR, XOR in bits 7:4.
        (if available { 0x0F } else { 0 }) | (if overrun { 0xF0 } else { 0 })
    }

    fn fifo_src(&self) -> u8 {
        if !self.fifo_on() {
            return 0x20;
        }
        let stored = self.fifo.len();
        let threshold = usize::from(self.reg(reg::FIFO_CTRL_REG) & 0x1F);
        let watermark = stored > 0 && stored >= threshold;
        // FSS is 5 bits: a full FIFO reads 31 with the overrun bit.
        let level = stored.min(FIFO_DEPTH - 1) as u8;
        u8::from(watermark) << 7
            | u8::from(stored == FIFO_DEPTH) << 6
            | u8::from(stored == 0) << 5
            | level
    }

    fn read_register(&mut self, register: u8) -> u8 {
        match register {
            reg::WHO_AM_I => self.who_am_i,
            reg::STATUS_REG => self.status(),
            reg::OUT_X_L..=reg::OUT_Z_H => self.output_byte(register),
            reg::FIFO_SRC_REG => self.fifo_src(),
            // The auxiliary ADC, interrupt sources and reserved addresses read as zero.
            0x00..=0x3F => self.reg(register),
            _ => 0,
        }
    }

    fn write_register(&mut self, register: u8, value: u8) -> Result<(), SimI2cError> {
        match access(register) {
            Access::Reserved => Err(SimI2cError::DataNack),
            Access::ReadOnly => Ok(()),
            Access::ReadWrite => {
                self.regs[usize::from(register)] = value;
                if !self.fifo_on() {
                    // Bypass mode (or FIFO off) empties the FIFO.
                    self.fifo.clear();
                }
                Ok(())
            }
        }
    }

    fn advance(&mut self) {
        if self.auto_increment {
            self.pointer = (self.pointer + 1) & 0x7F;
        }
    }
}

/// Encodes an axis in g as the chip's left-justified output for its `CTRL_REG1`/`CTRL_REG4`.
fn encode(g: f32, ctrl_reg1: u8, ctrl_reg4: u8) -> i16 {
    let fs = (ctrl_reg4 >> 4) & 0b11;
    let full_scale_g = [2.0, 4.0, 8.0, 16.0][usize::from(fs)];
    let hr_mg_per_digit = [1.0, 2.0, 4.0, 12.0][usize::from(fs)];
    let low_power = ctrl_reg1 & 0x08 != 0;
    let high_resolution = ctrl_reg4 & 0x08 != 0;
    // Resolution in bits, and the step relative to high-resolution mode.
    let (bits, step) = if low_power {
        (8, 16.0)
    } else if high_resolution {
        (12, 1.0)
    } else {
        (10, 4.0)
    };
    let g = f64::from(g).clamp(-full_scale_g, full_scale_g);
    let max = f64::from((1i32 << (bits - 1)) - 1);
    let digits = (g * 1000.0 / (hr_mg_per_digit * step))
        .round()
        .clamp(-max - 1.0, max) as i16;
    digits << (16 - bits)
}

impl I2cChip for SimLis3dh {
    fn address(&self) -> SevenBitAddress {
        self.address
    }

    fn fault(&self) -> Fault {
        self.state().fault
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SimI2cError> {
        let mut state = self.state();
        let Some((&sub_address, data)) = bytes.split_first() else {
            // An address-only write (a probe): nothing changes.
            return Ok(());
        };
        state.pointer = sub_address & !AUTO_INCREMENT;
        state.auto_increment = sub_address & AUTO_INCREMENT != 0;
        state.latched = None;
        for &value in data {
            let register = state.pointer;
            state.write_register(register, value)?;
            state.advance();
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), SimI2cError> {
        let mut state = self.state();
        for byte in buf {
            let register = state.pointer;
            *byte = state.read_register(register);
            state.advance();
        }
        // A stop ends the access: a sample not read to OUT_Z_H is not kept latched.
        state.latched = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use embedded_hal::i2c::I2c;
    use firmware::drivers::lis3dh::{
        Acceleration, Address, DataRate, Error, FifoRead, Lis3dh, Range,
    };

    use super::*;
    use crate::chips::SimI2c;

    const RANGES: [(Range, f32); 4] = [
        (Range::G2, 0.001),
        (Range::G4, 0.002),
        (Range::G8, 0.004),
        (Range::G16, 0.012),
    ];

    fn bus_with(chip: &SimLis3dh) -> SimI2c {
        let mut bus = SimI2c::new();
        bus.attach(chip.clone());
        bus
    }

    fn driver(chip: &SimLis3dh) -> Lis3dh<SimI2c> {
        Lis3dh::new(bus_with(chip), Address::Sa0Low).expect("a LIS3DH on the bus")
    }

    /// Within half a step (plus float slack) of `expected`.
    fn within(got: Acceleration, expected: [f32; 3], step_g: f32) -> bool {
        let tolerance = step_g / 2.0 + 1e-5;
        [got.x_g, got.y_g, got.z_g]
            .iter()
            .zip(expected)
            .all(|(g, e)| (g - e).abs() <= tolerance)
    }

    fn streaming(chip: &SimLis3dh) -> Lis3dh<SimI2c> {
        let mut accel = driver(chip);
        accel
            .configure(DataRate::Hz400, Range::G4)
            .expect("configured");
        accel.enable_fifo_stream().expect("FIFO on");
        accel
    }

    fn sample(i: usize) -> [f32; 3] {
        let i = i as f32;
        [0.01 * i, -0.02 * i, 1.0 - 0.005 * i]
    }

    #[test]
    fn the_driver_reads_back_a_set_acceleration_in_every_range() {
        let chip = SimLis3dh::new(0x18);
        let mut accel = driver(&chip);
        for (range, step) in RANGES {
            let expected = [0.123, -0.456, 0.987];
            chip.set_acceleration(expected[0], expected[1], expected[2]);
            accel.configure(DataRate::Hz100, range).expect("configured");
            let got = accel.read().expect("a sample");
            assert!(within(got, expected, step), "{range:?}: {got:?}");
        }
        assert_eq!(chip.register(0x20), 0x57);
        assert_eq!(chip.register(0x23), 0xB8);
    }

    #[test]
    fn twenty_pushed_samples_come_out_in_order() {
        let chip = SimLis3dh::new(0x18);
        let mut accel = streaming(&chip);
        for i in 0..20 {
            let [x, y, z] = sample(i);
            chip.push_sample(x, y, z);
        }
        let mut out = [Acceleration::default(); 32];
        let got = accel.read_fifo(&mut out).expect("drained");
        assert_eq!(
            got,
            FifoRead {
                count: 20,
                overrun: false
            }
        );
        for (i, a) in out.iter().take(20).enumerate() {
            assert!(within(*a, sample(i), 0.002), "sample {i}: {a:?}");
        }
        assert_eq!(chip.fifo_len(), 0);
        assert_eq!(accel.read_fifo(&mut out).expect("drained").count, 0);
    }

    #[test]
    fn forty_pushed_samples_leave_the_newest_32_and_an_overrun() {
        let chip = SimLis3dh::new(0x18);
        let mut accel = streaming(&chip);
        for i in 0..40 {
            let [x, y, z] = sample(i);
            chip.push_sample(x, y, z);
        }
        let mut out = [Acceleration::default(); 32];
        let got = accel.read_fifo(&mut out).expect("drained");
        assert_eq!(
            got,
            FifoRead {
                count: 32,
                overrun: true
            }
        );
        for (slot, a) in out.iter().enumerate() {
            assert!(within(*a, sample(slot + 8), 0.002), "slot {slot}: {a:?}");
        }
        assert_eq!(
            accel.read_fifo(&mut out).expect("drained"),
            FifoRead {
                count: 0,
                overrun: false
            }
        );
    }

    #[test]
    fn a_full_fifo_reads_as_an_overrun_even_at_exactly_32() {
        let chip = SimLis3dh::new(0x18);
        let accel = streaming(&chip);
        for i in 0..32 {
            let [x, y, z] = sample(i);
            chip.push_sample(x, y, z);
        }
        let mut bus = accel.release();
        let mut src = [0u8];
        bus.write_read(0x18, &[0x2F], &mut src).expect("read");
        assert_eq!(src[0], 0xDF, "watermark, overrun, level 31");
        let mut accel = Lis3dh::new(bus, Address::Sa0Low).expect("a LIS3DH");
        accel
            .configure(DataRate::Hz400, Range::G4)
            .expect("configured");
        let mut out = [Acceleration::default(); 32];
        let got = accel.read_fifo(&mut out).expect("drained");
        assert_eq!(got.count, 32);
        assert!(within(out[31], sample(31), 0.002));
    }

    #[test]
    fn fifo_mode_stops_collecting_when_full() {
        let chip = SimLis3dh::new(0x19);
        let mut bus = bus_with(&chip);
        // ODR 100 Hz, ±2 g high resolution, FIFO on in FIFO mode.
        bus.write(0x19, &[0x20, 0x57]).expect("CTRL_REG1");
        bus.write(0x19, &[0x23, 0x88]).expect("CTRL_REG4");
        bus.write(0x19, &[0x24, 0x40]).expect("CTRL_REG5");
        bus.write(0x19, &[0x2E, 0x40]).expect("FIFO_CTRL_REG");
        for i in 0..40 {
            let [x, y, z] = sample(i);
            chip.push_sample(x, y, z);
        }
        let mut accel = Lis3dh::new(bus, Address::Sa0High).expect("a LIS3DH");
        let mut out = [Acceleration::default(); 32];
        let got = accel.read_fifo(&mut out).expect("drained");
        assert_eq!(got.count, 32);
        assert!(within(out[0], sample(0), 0.001));
        assert!(within(out[31], sample(31), 0.001));
    }

    #[test]
    fn the_register_pointer_advances_only_with_bit_7() {
        let chip = SimLis3dh::new(0x18);
        let mut bus = bus_with(&chip);
        let mut buf = [0u8; 3];
        bus.write_read(0x18, &[0x0F], &mut buf).expect("read");
        assert_eq!(buf, [0x33; 3]);
        // One auto-incrementing write of CTRL_REG1..CTRL_REG4.
        bus.write(0x18, &[0xA0, 0x47, 0x00, 0x00, 0x98])
            .expect("write");
        let mut regs = [0u8; 4];
        bus.write_read(0x18, &[0xA0], &mut regs).expect("read");
        assert_eq!(regs, [0x47, 0x00, 0x00, 0x98]);
        // Without bit 7, every byte goes to the same register.
        bus.write(0x18, &[0x21, 0x01, 0x02]).expect("write");
        assert_eq!(chip.register(0x21), 0x02);
        assert_eq!(chip.register(0x22), 0x00);
        // Read-only registers ignore writes; reserved ones refuse them.
        bus.write(0x18, &[0x0F, 0x00]).expect("ignored");
        bus.write_read(0x18, &[0x0F], &mut buf[..1]).expect("read");
        assert_eq!(buf[0], 0x33);
        assert_eq!(bus.write(0x18, &[0x10, 0x00]), Err(SimI2cError::DataNack));
    }

    #[test]
    fn values_are_encoded_left_justified_per_mode_and_clamped() {
        // High resolution (CTRL_REG4 HR), ±2 g: 1 g = 1000 steps of 1 mg.
        assert_eq!(encode(1.0, 0x57, 0x88), 16000);
        assert_eq!(encode(-1.0, 0x57, 0x88), -16000);
        // ±16 g: 12 mg steps; beyond full scale clamps to 16 g = 1333 steps.
        assert_eq!(encode(1.0, 0x57, 0xB8), 83 << 4);
        assert_eq!(encode(40.0, 0x57, 0xB8), 1333 << 4);
        // Normal mode (no HR): 10 bits of 4 mg at ±2 g.
        assert_eq!(encode(1.0, 0x57, 0x80), 250 << 6);
        // Low-power mode: 8 bits of 16 mg at ±2 g.
        assert_eq!(encode(1.0, 0x5F, 0x80), 63 << 8);
        assert_eq!(encode(-2.0, 0x5F, 0x80), -125 << 8);
    }

    #[test]
    fn a_powered_down_chip_takes_no_samples() {
        let chip = SimLis3dh::new(0x18);
        let mut bus = bus_with(&chip);
        bus.write(0x18, &[0x24, 0x40]).expect("CTRL_REG5");
        bus.write(0x18, &[0x2E, 0x80]).expect("FIFO_CTRL_REG");
        chip.push_sample(0.0, 0.0, 1.0);
        assert_eq!(chip.fifo_len(), 0);
        chip.set_acceleration(0.0, 0.0, 1.0);
        let mut accel = Lis3dh::new(bus, Address::Sa0Low).expect("a LIS3DH");
        assert_eq!(accel.read().expect("a sample"), Acceleration::default());
    }

    #[test]
    fn status_reports_new_data_and_overrun() {
        let chip = SimLis3dh::new(0x18);
        let mut bus = bus_with(&chip);
        bus.write(0x18, &[0x20, 0x57]).expect("CTRL_REG1");
        let mut status = [0u8];
        bus.write_read(0x18, &[0x27], &mut status).expect("read");
        assert_eq!(status[0], 0x00);
        chip.set_acceleration(0.0, 0.0, 1.0);
        bus.write_read(0x18, &[0x27], &mut status).expect("read");
        assert_eq!(status[0], 0x0F);
        chip.set_acceleration(0.0, 0.0, 1.0);
        bus.write_read(0x18, &[0x27], &mut status).expect("read");
        assert_eq!(status[0], 0xFF);
        let mut out = [0u8; 6];
        bus.write_read(0x18, &[0xA8], &mut out).expect("read");
        bus.write_read(0x18, &[0x27], &mut status).expect("read");
        assert_eq!(status[0], 0x00);
    }

    #[test]
    fn another_part_at_the_address_is_refused() {
        let chip = SimLis3dh::new(0x18);
        chip.set_who_am_i(0x32);
        assert_eq!(
            Lis3dh::new(bus_with(&chip), Address::Sa0Low).err(),
            Some(Error::WrongDevice(0x32))
        );
        // And nothing answers at the other address.
        assert_eq!(
            Lis3dh::new(bus_with(&chip), Address::Sa0High).err(),
            Some(Error::I2c(SimI2cError::AddressNack))
        );
    }

    #[test]
    fn a_nacking_chip_is_a_bus_error() {
        let chip = SimLis3dh::new(0x18);
        let mut accel = driver(&chip);
        chip.set_fault(Fault::Nack);
        assert_eq!(accel.read(), Err(Error::I2c(SimI2cError::AddressNack)));
        chip.set_fault(Fault::None);
        assert!(accel.read().is_ok());
    }

    #[test]
    fn a_stuck_chip_repeats_its_last_sample() {
        let chip = SimLis3dh::new(0x18);
        let mut accel = driver(&chip);
        accel
            .configure(DataRate::Hz100, Range::G2)
            .expect("configured");
        chip.set_acceleration(0.5, 0.0, 1.0);
        let before = accel.read().expect("a sample");
        chip.set_fault(Fault::Stuck);
        chip.set_acceleration(-0.5, 0.3, 0.0);
        assert_eq!(accel.read().expect("a sample"), before);
        chip.set_fault(Fault::None);
        assert!(within(
            accel.read().expect("a sample"),
            [-0.5, 0.3, 0.0],
            0.001
        ));
    }

    #[test]
    fn a_corrupting_chip_flips_a_bit_of_x() {
        let chip = SimLis3dh::new(0x18);
        let mut accel = driver(&chip);
        accel
            .configure(DataRate::Hz100, Range::G2)
            .expect("configured");
        chip.set_acceleration(0.25, -0.25, 1.0);
        chip.set_fault(Fault::CorruptCrc);
        let got = accel.read().expect("a sample");
        // Bit 14 of the left-justified value is 1024 steps of 1 mg.
        assert!((got.x_g - 1.274).abs() < 1e-5, "{got:?}");
        assert!(within(
            Acceleration { x_g: 0.25, ..got },
            [0.25, -0.25, 1.0],
            0.001
        ));
    }

    #[test]
    fn a_noisy_chip_stays_within_half_a_g() {
        let chip = SimLis3dh::new(0x18);
        let mut accel = driver(&chip);
        accel
            .configure(DataRate::Hz100, Range::G4)
            .expect("configured");
        chip.set_acceleration(0.0, 0.0, 1.0);
        chip.set_fault(Fault::Noise);
        let reads: Vec<Acceleration> = (0..50).map(|_| accel.read().expect("a sample")).collect();
        assert!(
            reads
                .iter()
                .all(|a| within(*a, [0.0, 0.0, 1.0], 2.0 * NOISE_G + 0.002))
        );
        assert!(reads.windows(2).any(|w| w[0] != w[1]));
        assert!(reads.iter().any(|a| (a.z_g - 1.0).abs() > 0.1));
    }
}
