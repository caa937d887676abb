//! Who this node is and which boot this is: the node id from the MCU's 96-bit unique id, a boot
//! id from a counter logged in flash, and why the MCU reset.

use protocol::{NodeId, ResetReason};
use stm32f4xx_hal::flash::{FlashExt, LockedFlash};
use stm32f4xx_hal::rcc::Rcc;
use stm32f4xx_hal::signature::Uid;

/// FNV-1a, 64-bit: small, no tables, and stable across compilers (unlike `core::hash` derives).
struct Fnv1a64(u64);

impl Fnv1a64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(Self::PRIME);
        }
    }
}

/// The node id: FNV-1a 64 of the 12 unique-id bytes in register order (UID[31:0] = wafer X,
/// Y as little-endian u16s, then the wafer number and the 7 ASCII lot-number bytes), as
/// RM0383 ("Device electronic signature") lays them out at 0x1FFF_7A10. Same chip, same id, forever.
pub fn node_id() -> NodeId {
    let uid = Uid::get();
    let mut hash = Fnv1a64::new();
    hash.write(&uid.x().to_le_bytes());
    hash.write(&uid.y().to_le_bytes());
    hash.write(&[uid.waf_num()]);
    hash.write(uid.lot_num().as_bytes());
    NodeId(hash.0)
}

/// Flash sector 7 of an STM32F411xE: the last 128 KiB, kept out of `memory.x`.
const LOG_SECTOR: u8 = 7;
/// Its offset from the start of flash (0x0806_0000).
const LOG_OFFSET: usize = 0x6_0000;
/// Its length.
const LOG_LEN: usize = 128 * 1024;
/// One record: the counter and its bitwise complement, both little-endian u32.
const RECORD_LEN: usize = 8;

/// Reads the boot counter log, appends the next value and returns it: one more than the last
/// logged value, 1 on a fresh chip.
///
/// The log is append-only: each boot programs one 8-byte record into the first erased slot, so
/// a sector erase is needed only every 16 384 boots (and flash endurance is 10 000 erases per
/// sector). A record counts only if its second word is the complement of the first, so a write
/// torn by a power loss is skipped, not misread; the first fully erased record ends the log.
/// Must run before interrupts are enabled: erase and program stall instruction fetches from
/// the (single) flash bank, for up to a few seconds for the erase.
///
/// If the write fails (a flash fault; or a chip without sector 7, which gets 0 every boot) the
/// next boot may repeat this value: there is no event kind to report it with.
pub fn next_boot_count(flash: &mut LockedFlash) -> u32 {
    let mut last = 0u32;
    let mut free = None;
    let Some(log) = flash.read().get(LOG_OFFSET..LOG_OFFSET + LOG_LEN) else {
        return 0;
    };
    for (slot, record) in log.chunks_exact(RECORD_LEN).enumerate() {
        let value = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
        let check = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
        if value == u32::MAX && check == u32::MAX {
            free = Some(slot * RECORD_LEN);
            break;
        }
        if check == !value {
            last = value;
        }
    }
    let boot = last.wrapping_add(1);
    let mut record = [0u8; RECORD_LEN];
    record[..4].copy_from_slice(&boot.to_le_bytes());
    record[4..].copy_from_slice(&(!boot).to_le_bytes());

    let mut unlocked = flash.unlocked();
    let offset = match free {
        Some(offset) => Ok(offset),
        // Full: start the log over; the value carries on from `last`.
        None => unlocked.erase(LOG_SECTOR).map(|()| 0),
    };
    let _ = offset.and_then(|offset| unlocked.program(LOG_OFFSET + offset, record.iter()));
    boot
}

/// Why the MCU reset, from the RCC_CSR flags; then clears them for the next boot.
///
/// Every reset source also pulls NRST, so the pin flag alone (reset button, debugger) is
/// `Unknown`. A power-on sets both POR and BOR, hence POR is checked first.
pub fn reset_reason(rcc: &Rcc) -> ResetReason {
    let csr = rcc.csr().read();
    let reason = if csr.wdgrstf().bit_is_set() || csr.wwdgrstf().bit_is_set() {
        ResetReason::Watchdog
    } else if csr.porrstf().bit_is_set() {
        ResetReason::PowerOn
    } else if csr.borrstf().bit_is_set() {
        ResetReason::Brownout
    } else if csr.sftrstf().bit_is_set() {
        ResetReason::Software
    } else {
        ResetReason::Unknown
    };
    rcc.csr().modify(|_, w| w.rmvf().set_bit());
    reason
}
