//! Register-level simulated chips: they answer the exact I2C transactions of their datasheets
//! (with CRCs where the chip has them), so the real firmware drivers run on them unmodified.
//!
//! A [`SimI2c`] bus implements `embedded_hal::i2c::I2c` and routes each transaction to the chip
//! at its address; a chip implements [`I2cChip`]. Each chip takes its physical input (the
//! temperature, the acceleration, the voltage) from the simulation, and can be told to fail
//! ([`Fault`]) so tests and demos see what a broken sensor does.

pub mod ads1115;
pub mod digital;
pub mod lis3dh;
pub mod sht3x;

use embedded_hal::i2c::{self, ErrorKind, NoAcknowledgeSource, Operation, SevenBitAddress};

/// How a simulated chip misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Works as the datasheet says.
    #[default]
    None,
    /// Does not acknowledge its address (unplugged, dead).
    Nack,
    /// Answers, but its readings no longer change.
    Stuck,
    /// Corrupts the CRC (or, without CRCs, a data bit) of what it sends.
    CorruptCrc,
    /// Adds large random noise to its readings.
    Noise,
}

/// An error on the simulated bus, as a real I2C controller would report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimI2cError {
    /// Nobody (or a chip in [`Fault::Nack`]) acknowledged the address.
    AddressNack,
    /// The chip refused a data byte (an unknown command).
    DataNack,
}

impl i2c::Error for SimI2cError {
    fn kind(&self) -> ErrorKind {
        match self {
            SimI2cError::AddressNack => ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address),
            SimI2cError::DataNack => ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data),
        }
    }
}

/// A chip on the simulated bus.
pub trait I2cChip {
    /// Its 7-bit address.
    fn address(&self) -> SevenBitAddress;
    /// The fault it is in.
    fn fault(&self) -> Fault;
    /// The controller wrote `bytes` (one write operation of a transaction).
    fn write(&mut self, bytes: &[u8]) -> Result<(), SimI2cError>;
    /// The controller reads `buf.len()` bytes (one read operation of a transaction).
    fn read(&mut self, buf: &mut [u8]) -> Result<(), SimI2cError>;
}

/// A simulated I2C bus with chips on it.
#[derive(Default)]
pub struct SimI2c {
    chips: Vec<Box<dyn I2cChip + Send>>,
}

impl core::fmt::Debug for SimI2c {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let addresses: Vec<u8> = self.chips.iter().map(|c| c.address()).collect();
        f.debug_struct("SimI2c")
            .field("addresses", &addresses)
            .finish()
    }
}

impl SimI2c {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts a chip on the bus.
    pub fn attach(&mut self, chip: impl I2cChip + Send + 'static) {
        self.chips.push(Box::new(chip));
    }

    /// The chip at `address`, to change its inputs or fault.
    pub fn chip_mut(
        &mut self,
        address: SevenBitAddress,
    ) -> Option<&mut (dyn I2cChip + Send + 'static)> {
        self.chips
            .iter_mut()
            .find(|c| c.address() == address)
            .map(|c| &mut **c)
    }
}

impl i2c::ErrorType for SimI2c {
    type Error = SimI2cError;
}

impl i2c::I2c for SimI2c {
    fn transaction(
        &mut self,
        address: SevenBitAddress,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        let chip = self
            .chips
            .iter_mut()
            .find(|c| c.address() == address && c.fault() != Fault::Nack)
            .ok_or(SimI2cError::AddressNack)?;
        for operation in operations {
            match operation {
                Operation::Write(bytes) => chip.write(bytes)?,
                Operation::Read(buf) => chip.read(buf)?,
            }
        }
        Ok(())
    }
}
