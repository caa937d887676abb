//! ST LIS3DH 3-axis MEMS accelerometer on I2C, clipped to a machine to sense vibration.
//!
//! The chip is a register file behind a one-byte sub-address. A transaction writes the
//! sub-address and then either writes data bytes or (after a repeated start) reads them. The
//! sub-address only advances from byte to byte when its top bit is set, so every multi-byte
//! access here sends `0x80 | register`.
//!
//! The driver runs the chip in high-resolution mode (12-bit samples), with block data update
//! (the two bytes of an axis always come from the same sample) and all three axes on.
//! Acceleration registers hold 16-bit two's-complement values, little-endian (low byte at the
//! lower address) and left-justified: in high-resolution mode the low four bits are zero and
//! one step of the remaining 12 bits is 1, 2, 4 or 12 mg at ±2, ±4, ±8 or ±16 g. The ±16 g
//! step really is 12 mg, not 8.
//!
//! For vibration the node reads the 32-sample FIFO in stream mode: the chip keeps sampling at
//! the output data rate and the node drains whatever has piled up, so sampling jitter on the
//! node side does not matter. A FIFO burst here is one `FIFO_SRC_REG` read followed by one
//! 6-byte auto-incrementing read of `OUT_X_L..OUT_Z_H` per sample: each such read pops one
//! sample. (Some ST application notes describe the sub-address wrapping from `OUT_Z_H` back to
//! `OUT_X_L` so the whole FIFO comes out in a single read; that is not relied on here, at the
//! cost of one sub-address byte and a repeated start per sample.)
//!
//! ```
//! use demolab_firmware::drivers::lis3dh::{Address, DataRate, Lis3dh, Range};
//! # use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
//! # let mut i2c = Mock::new(&[
//! #     Transaction::write_read(0x18, vec![0x0F], vec![0x33]),
//! #     Transaction::write(0x18, vec![0x23, 0x98]),
//! #     Transaction::write(0x18, vec![0x20, 0x77]),
//! #     Transaction::write_read(0x18, vec![0xA8], vec![0, 0, 0, 0, 0x40, 0x1F]),
//! # ]);
//! let mut accel = Lis3dh::new(i2c.clone(), Address::Sa0Low)?;
//! accel.configure(DataRate::Hz400, Range::G4)?;
//! let a = accel.read()?;
//! assert!((a.z_g - 1.0).abs() < 0.002);
//! # accel.release().done();
//! # Ok::<(), demolab_firmware::drivers::lis3dh::Error<embedded_hal::i2c::ErrorKind>>(())
//! ```

use embedded_hal::i2c::I2c;

/// `WHO_AM_I`: the fixed identification register.
const WHO_AM_I: u8 = 0x0F;
/// What a LIS3DH answers in `WHO_AM_I`.
pub const DEVICE_ID: u8 = 0x33;
/// `CTRL_REG1`: output data rate (bits 7:4), low-power enable (bit 3), Z/Y/X enable (bits 2:0).
const CTRL_REG1: u8 = 0x20;
/// `CTRL_REG4`: block data update (bit 7), full scale (bits 5:4), high resolution (bit 3).
const CTRL_REG4: u8 = 0x23;
/// `CTRL_REG5`: FIFO enable (bit 6).
const CTRL_REG5: u8 = 0x24;
/// `OUT_X_L`, the first of the six acceleration output registers (X, Y, Z; low byte first).
const OUT_X_L: u8 = 0x28;
/// `FIFO_CTRL_REG`: FIFO mode (bits 7:6), trigger select (bit 5), watermark (bits 4:0).
const FIFO_CTRL_REG: u8 = 0x2E;
/// `FIFO_SRC_REG`: watermark (bit 7), overrun (bit 6), empty (bit 5), stored samples (4:0).
const FIFO_SRC_REG: u8 = 0x2F;
/// Set in the sub-address to make a multi-byte access advance through the registers.
const AUTO_INCREMENT: u8 = 0x80;

const CTRL_REG1_AXES_ON: u8 = 0b0000_0111;
const CTRL_REG4_BDU: u8 = 1 << 7;
const CTRL_REG4_HR: u8 = 1 << 3;
const CTRL_REG5_FIFO_EN: u8 = 1 << 6;
const FIFO_MODE_BYPASS: u8 = 0b00 << 6;
const FIFO_MODE_STREAM: u8 = 0b10 << 6;
const FIFO_SRC_OVRN: u8 = 1 << 6;
const FIFO_SRC_EMPTY: u8 = 1 << 5;
const FIFO_SRC_FSS: u8 = 0b0001_1111;

/// Samples the FIFO holds (each one an X, Y, Z set).
pub const FIFO_DEPTH: usize = 32;

/// The chip's I2C address, chosen by its SA0 (SDO) pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// SA0 tied low: 0x18.
    Sa0Low,
    /// SA0 tied high: 0x19 (what most breakout boards do with their pull-up).
    Sa0High,
}

impl Address {
    /// The 7-bit bus address.
    pub fn addr(self) -> u8 {
        match self {
            Address::Sa0Low => 0x18,
            Address::Sa0High => 0x19,
        }
    }
}

/// Output data rate, in normal and high-resolution mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRate {
    /// Power-down: no sampling.
    PowerDown,
    /// 1 Hz.
    Hz1,
    /// 10 Hz.
    Hz10,
    /// 25 Hz.
    Hz25,
    /// 50 Hz.
    Hz50,
    /// 100 Hz.
    Hz100,
    /// 200 Hz.
    Hz200,
    /// 400 Hz.
    Hz400,
    /// 1.344 kHz (the same code selects 5.376 kHz in low-power mode, which this driver does
    /// not use).
    Hz1344,
}

impl DataRate {
    /// The ODR field value (`CTRL_REG1` bits 7:4).
    fn bits(self) -> u8 {
        match self {
            DataRate::PowerDown => 0b0000,
            DataRate::Hz1 => 0b0001,
            DataRate::Hz10 => 0b0010,
            DataRate::Hz25 => 0b0011,
            DataRate::Hz50 => 0b0100,
            DataRate::Hz100 => 0b0101,
            DataRate::Hz200 => 0b0110,
            DataRate::Hz400 => 0b0111,
            DataRate::Hz1344 => 0b1001,
        }
    }

    /// Samples per second (0 in power-down).
    pub fn hz(self) -> f32 {
        match self {
            DataRate::PowerDown => 0.0,
            DataRate::Hz1 => 1.0,
            DataRate::Hz10 => 10.0,
            DataRate::Hz25 => 25.0,
            DataRate::Hz50 => 50.0,
            DataRate::Hz100 => 100.0,
            DataRate::Hz200 => 200.0,
            DataRate::Hz400 => 400.0,
            DataRate::Hz1344 => 1344.0,
        }
    }
}

/// Full-scale range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Range {
    /// ±2 g, 1 mg per step (the power-on default).
    #[default]
    G2,
    /// ±4 g, 2 mg per step.
    G4,
    /// ±8 g, 4 mg per step.
    G8,
    /// ±16 g, 12 mg per step.
    G16,
}

impl Range {
    /// The FS field value (`CTRL_REG4` bits 5:4).
    fn bits(self) -> u8 {
        match self {
            Range::G2 => 0b00,
            Range::G4 => 0b01,
            Range::G8 => 0b10,
            Range::G16 => 0b11,
        }
    }

    /// Sensitivity of one 12-bit high-resolution step, in mg.
    pub fn mg_per_digit(self) -> f32 {
        match self {
            Range::G2 => 1.0,
            Range::G4 => 2.0,
            Range::G8 => 4.0,
            Range::G16 => 12.0,
        }
    }
}

/// A driver error, generic over the bus error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The I2C bus failed (NACK, arbitration loss, ...).
    I2c(E),
    /// `WHO_AM_I` did not read 0x33: something else is at this address.
    WrongDevice(u8),
}

/// One acceleration sample, in g.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Acceleration {
    /// X axis, g.
    pub x_g: f32,
    /// Y axis, g.
    pub y_g: f32,
    /// Z axis, g.
    pub z_g: f32,
}

/// What a FIFO drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FifoRead {
    /// Samples read (the first `count` slots of the output buffer), oldest first.
    pub count: usize,
    /// The FIFO was full (32 unread samples). In stream mode the chip then overwrites the
    /// oldest sample at every new one, so samples may have been lost: the node did not drain
    /// it fast enough for the data rate. The chip cannot tell "exactly 32" from "more than
    /// 32", so this is set in both cases.
    pub overrun: bool,
}

/// LIS3DH driver.
#[derive(Debug)]
pub struct Lis3dh<I2C> {
    i2c: I2C,
    address: u8,
    range: Range,
}

impl<I2C: I2c> Lis3dh<I2C> {
    /// Takes the bus and checks that a LIS3DH answers at `address`. Pass `&mut bus` to keep
    /// the bus if this fails. The chip is left as it was (after power-on: powered down).
    pub fn new(i2c: I2C, address: Address) -> Result<Self, Error<I2C::Error>> {
        let mut dev = Self {
            i2c,
            address: address.addr(),
            range: Range::default(),
        };
        let id = dev.read_register(WHO_AM_I)?;
        if id != DEVICE_ID {
            return Err(Error::WrongDevice(id));
        }
        Ok(dev)
    }

    /// Gives the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    /// The range samples are converted with (the last one configured).
    pub fn range(&self) -> Range {
        self.range
    }

    /// Starts sampling at `rate` in `range`: high-resolution mode, block data update, all three
    /// axes. Writes `CTRL_REG4` first so the first sample already has the new range.
    pub fn configure(&mut self, rate: DataRate, range: Range) -> Result<(), Error<I2C::Error>> {
        self.write_register(CTRL_REG4, ctrl_reg4(range))?;
        self.range = range;
        self.write_register(CTRL_REG1, ctrl_reg1(rate))
    }

    /// Turns the FIFO on in stream mode: it keeps the 32 newest samples. Passes through bypass
    /// mode first, which empties the FIFO and clears its overrun flag.
    pub fn enable_fifo_stream(&mut self) -> Result<(), Error<I2C::Error>> {
        self.write_register(CTRL_REG5, CTRL_REG5_FIFO_EN)?;
        self.write_register(FIFO_CTRL_REG, FIFO_MODE_BYPASS)?;
        self.write_register(FIFO_CTRL_REG, FIFO_MODE_STREAM)
    }

    /// Reads one sample from the output registers. With the FIFO on, this pops its oldest
    /// sample (or repeats the last one when it is empty).
    pub fn read(&mut self) -> Result<Acceleration, Error<I2C::Error>> {
        let mut raw = [0u8; 6];
        self.i2c
            .write_read(self.address, &[AUTO_INCREMENT | OUT_X_L], &mut raw)
            .map_err(Error::I2c)?;
        Ok(Acceleration {
            x_g: raw_to_g(i16::from_le_bytes([raw[0], raw[1]]), self.range),
            y_g: raw_to_g(i16::from_le_bytes([raw[2], raw[3]]), self.range),
            z_g: raw_to_g(i16::from_le_bytes([raw[4], raw[5]]), self.range),
        })
    }

    /// Reads every sample waiting in the FIFO (at most 32) into `out`, oldest first, returning
    /// how many and whether it overran. Samples that arrive during the drain stay for the next
    /// call.
    pub fn read_fifo(
        &mut self,
        out: &mut [Acceleration; FIFO_DEPTH],
    ) -> Result<FifoRead, Error<I2C::Error>> {
        let status = decode_fifo_src(self.read_register(FIFO_SRC_REG)?);
        for slot in out.iter_mut().take(status.count) {
            *slot = self.read()?;
        }
        Ok(status)
    }

    fn read_register(&mut self, register: u8) -> Result<u8, Error<I2C::Error>> {
        let mut value = [0u8];
        self.i2c
            .write_read(self.address, &[register], &mut value)
            .map_err(Error::I2c)?;
        Ok(value[0])
    }

    fn write_register(&mut self, register: u8, value: u8) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[register, value])
            .map_err(Error::I2c)
    }
}

/// Converts a left-justified output register value to g, for high-resolution mode in `range`.
/// Also right for FIFO or normal-mode data: those are left-justified too, with more low bits
/// zero.
pub fn raw_to_g(raw: i16, range: Range) -> f32 {
    f32::from(raw >> 4) * range.mg_per_digit() / 1000.0
}

/// `CTRL_REG1` for `rate`: normal/high-resolution (low-power off), X, Y and Z on.
pub fn ctrl_reg1(rate: DataRate) -> u8 {
    rate.bits() << 4 | CTRL_REG1_AXES_ON
}

/// `CTRL_REG4` for `range`: block data update, high resolution, little-endian, no self-test.
pub fn ctrl_reg4(range: Range) -> u8 {
    CTRL_REG4_BDU | range.bits() << 4 | CTRL_REG4_HR
}

/// Decodes `FIFO_SRC_REG`. Its 5-bit level field cannot say 32: a full FIFO shows the overrun
/// bit instead, so a set overrun bit means 32 samples to read.
pub fn decode_fifo_src(value: u8) -> FifoRead {
    let overrun = value & FIFO_SRC_OVRN != 0;
    let count = if value & FIFO_SRC_EMPTY != 0 {
        0
    } else if overrun {
        FIFO_DEPTH
    } else {
        usize::from(value & FIFO_SRC_FSS)
    };
    FifoRead { count, overrun }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    const ADDR: u8 = 0x18;

    fn who_am_i(id: u8) -> Transaction {
        Transaction::write_read(ADDR, vec![0x0F], vec![id])
    }

    /// A driver past `new` (WHO_AM_I already scripted) on a mock expecting `rest` afterwards.
    fn driver(rest: &[Transaction]) -> (Lis3dh<Mock>, Mock) {
        let mut expectations = vec![who_am_i(0x33)];
        expectations.extend_from_slice(rest);
        let mock = Mock::new(&expectations);
        let dev = Lis3dh::new(mock.clone(), Address::Sa0Low).expect("a LIS3DH");
        (dev, mock)
    }

    fn sample_bytes(x: i16, y: i16, z: i16) -> Vec<u8> {
        [x, y, z].iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn who_am_i_is_checked_at_both_addresses() {
        let mut mock = Mock::new(&[Transaction::write_read(0x19, vec![0x0F], vec![0x33])]);
        let dev = Lis3dh::new(mock.clone(), Address::Sa0High).expect("a LIS3DH");
        assert_eq!(dev.range(), Range::G2);
        dev.release();
        mock.done();
    }

    #[test]
    fn another_chip_is_refused() {
        // 0x32 is what a LIS331DLH or LIS2DE answers.
        let mut mock = Mock::new(&[who_am_i(0x32)]);
        assert_eq!(
            Lis3dh::new(mock.clone(), Address::Sa0Low).err(),
            Some(Error::WrongDevice(0x32))
        );
        mock.done();
    }

    #[test]
    fn a_nack_is_a_bus_error() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let mut mock = Mock::new(&[who_am_i(0).with_error(nack)]);
        assert_eq!(
            Lis3dh::new(mock.clone(), Address::Sa0Low).err(),
            Some(Error::I2c(nack))
        );
        mock.done();

        let (mut dev, mut mock) =
            driver(&[Transaction::write_read(ADDR, vec![0xA8], vec![0; 6]).with_error(nack)]);
        assert_eq!(dev.read(), Err(Error::I2c(nack)));
        mock.done();
    }

    #[test]
    fn register_encoders() {
        assert_eq!(ctrl_reg1(DataRate::PowerDown), 0x07);
        assert_eq!(ctrl_reg1(DataRate::Hz1), 0x17);
        assert_eq!(ctrl_reg1(DataRate::Hz100), 0x57);
        assert_eq!(ctrl_reg1(DataRate::Hz400), 0x77);
        assert_eq!(ctrl_reg1(DataRate::Hz1344), 0x97);
        assert_eq!(ctrl_reg4(Range::G2), 0x88);
        assert_eq!(ctrl_reg4(Range::G4), 0x98);
        assert_eq!(ctrl_reg4(Range::G8), 0xA8);
        assert_eq!(ctrl_reg4(Range::G16), 0xB8);
    }

    #[test]
    fn configure_writes_ctrl_reg4_then_ctrl_reg1() {
        let (mut dev, mut mock) = driver(&[
            Transaction::write(ADDR, vec![0x23, 0xA8]),
            Transaction::write(ADDR, vec![0x20, 0x57]),
        ]);
        dev.configure(DataRate::Hz100, Range::G8)
            .expect("configured");
        assert_eq!(dev.range(), Range::G8);
        mock.done();
    }

    #[test]
    fn fifo_stream_is_enabled_through_bypass() {
        let (mut dev, mut mock) = driver(&[
            Transaction::write(ADDR, vec![0x24, 0x40]),
            Transaction::write(ADDR, vec![0x2E, 0x00]),
            Transaction::write(ADDR, vec![0x2E, 0x80]),
        ]);
        dev.enable_fifo_stream().expect("enabled");
        mock.done();
    }

    #[test]
    fn one_g_on_z_at_2g() {
        // +1 g at 1 mg/digit = 1000 digits = 0x3E80 left-justified; X = -0.5 g = 0xE0C0, Y = 0.
        let (mut dev, mut mock) = driver(&[Transaction::write_read(
            ADDR,
            vec![0xA8],
            vec![0xC0, 0xE0, 0x00, 0x00, 0x80, 0x3E],
        )]);
        let a = dev.read().expect("a sample");
        assert_eq!(
            a,
            Acceleration {
                x_g: -0.5,
                y_g: 0.0,
                z_g: 1.0
            }
        );
        mock.done();
    }

    #[test]
    fn raw_to_g_edges_for_every_range() {
        for (range, mg) in [
            (Range::G2, 1.0),
            (Range::G4, 2.0),
            (Range::G8, 4.0),
            (Range::G16, 12.0),
        ] {
            assert!(close(raw_to_g(0, range), 0.0));
            // The low nibble is below the 12-bit resolution.
            assert!(close(raw_to_g(0x000F, range), 0.0));
            assert!(close(raw_to_g(16, range), mg / 1000.0));
            assert!(close(raw_to_g(-16, range), -mg / 1000.0));
            assert!(close(raw_to_g(i16::MAX, range), 2047.0 * mg / 1000.0));
            assert!(close(raw_to_g(i16::MIN, range), -2048.0 * mg / 1000.0));
        }
        assert!(close(raw_to_g(i16::MAX, Range::G2), 2.047));
        assert!(close(raw_to_g(i16::MIN, Range::G16), -24.576));
    }

    #[test]
    fn fifo_src_decoding() {
        assert_eq!(
            decode_fifo_src(0x20),
            FifoRead {
                count: 0,
                overrun: false
            }
        );
        assert_eq!(decode_fifo_src(0x05).count, 5);
        assert_eq!(decode_fifo_src(0x9F).count, 31);
        assert_eq!(
            decode_fifo_src(0x5F),
            FifoRead {
                count: 32,
                overrun: true
            }
        );
    }

    #[test]
    fn a_fifo_burst_reads_the_level_then_one_sample_per_read() {
        let samples: [(i16, i16, i16); 3] = [(16, 32, 16000), (-16, 0, 15984), (160, -160, 16016)];
        let mut script = vec![Transaction::write_read(ADDR, vec![0x2F], vec![0x03])];
        for (x, y, z) in samples {
            script.push(Transaction::write_read(
                ADDR,
                vec![0xA8],
                sample_bytes(x, y, z),
            ));
        }
        let (mut dev, mut mock) = driver(&script);
        let mut out = [Acceleration::default(); FIFO_DEPTH];
        let got = dev.read_fifo(&mut out).expect("drained");
        assert_eq!(
            got,
            FifoRead {
                count: 3,
                overrun: false
            }
        );
        for (a, (x, y, z)) in out.iter().zip(samples) {
            assert!(close(a.x_g, raw_to_g(x, Range::G2)));
            assert!(close(a.y_g, raw_to_g(y, Range::G2)));
            assert!(close(a.z_g, raw_to_g(z, Range::G2)));
        }
        assert!(close(out[2].x_g, 0.010));
        assert_eq!(out[3], Acceleration::default());
        mock.done();
    }

    #[test]
    fn an_empty_fifo_reads_nothing() {
        let (mut dev, mut mock) = driver(&[Transaction::write_read(ADDR, vec![0x2F], vec![0x20])]);
        let mut out = [Acceleration::default(); FIFO_DEPTH];
        assert_eq!(
            dev.read_fifo(&mut out).expect("drained"),
            FifoRead {
                count: 0,
                overrun: false
            }
        );
        mock.done();
    }

    #[test]
    fn an_overrun_fifo_reads_all_32_and_says_so() {
        let mut script = vec![Transaction::write_read(ADDR, vec![0x2F], vec![0x5F])];
        for i in 0..32i16 {
            script.push(Transaction::write_read(
                ADDR,
                vec![0xA8],
                sample_bytes(i * 16, 0, 0),
            ));
        }
        let (mut dev, mut mock) = driver(&script);
        let mut out = [Acceleration::default(); FIFO_DEPTH];
        let got = dev.read_fifo(&mut out).expect("drained");
        assert_eq!(
            got,
            FifoRead {
                count: 32,
                overrun: true
            }
        );
        assert!(close(out[31].x_g, 0.031));
        mock.done();
    }

    #[test]
    fn a_nack_mid_burst_is_a_bus_error() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data);
        let (mut dev, mut mock) = driver(&[
            Transaction::write_read(ADDR, vec![0x2F], vec![0x02]),
            Transaction::write_read(ADDR, vec![0xA8], sample_bytes(0, 0, 16000)),
            Transaction::write_read(ADDR, vec![0xA8], vec![0; 6]).with_error(nack),
        ]);
        let mut out = [Acceleration::default(); FIFO_DEPTH];
        assert_eq!(dev.read_fifo(&mut out), Err(Error::I2c(nack)));
        mock.done();
    }
}
