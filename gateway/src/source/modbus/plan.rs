//! Which read requests one poll makes.
//!
//! Registers of the same table whose spans touch or overlap share one request; gaps are never
//! bridged, because reading unmapped addresses makes many PLCs answer "illegal data address".

use super::config::{RegisterMap, RegisterTable};

/// Most registers one read request may ask for (Modbus application protocol, 0x03/0x04).
const MAX_READ_WORDS: u32 = 125;

/// One read request and the metrics decoded from its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadBlock {
    pub(crate) table: RegisterTable,
    pub(crate) start: u16,
    pub(crate) count: u16,
    /// (index into the device's registers, offset of its first word in this block)
    pub(crate) members: Vec<(usize, usize)>,
}

/// Groups a validated register list into read requests, ordered by table and address.
pub(crate) fn plan_reads(registers: &[RegisterMap]) -> Vec<ReadBlock> {
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].table, registers[i].address));
    let mut blocks: Vec<ReadBlock> = Vec::new();
    for index in order {
        let register = &registers[index];
        let start = u32::from(register.address);
        let end = start + u32::from(register.data_type.words());
        if let Some(block) = blocks.last_mut() {
            let block_start = u32::from(block.start);
            let block_end = block_start + u32::from(block.count);
            let new_end = end.max(block_end);
            if block.table == register.table
                && start <= block_end
                && new_end - block_start <= MAX_READ_WORDS
            {
                block.count = u16::try_from(new_end - block_start).unwrap_or(u16::MAX);
                block.members.push((index, (start - block_start) as usize));
                continue;
            }
        }
        blocks.push(ReadBlock {
            table: register.table,
            start: register.address,
            count: register.data_type.words(),
            members: vec![(index, 0)],
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::modbus::{ByteOrder, RegisterType, WordOrder};

    fn register(table: RegisterTable, address: u16, data_type: RegisterType) -> RegisterMap {
        RegisterMap {
            metric: format!("m.r{address}").parse().expect("valid"),
            unit: String::new(),
            table,
            address,
            data_type,
            word_order: WordOrder::Big,
            byte_order: ByteOrder::Big,
            scale: 1.0,
            offset: 0.0,
        }
    }

    #[test]
    fn contiguous_registers_of_one_table_share_a_request() {
        use RegisterTable::{Holding, Input};
        use RegisterType::{F32, U16, U32};
        let registers = [
            register(Holding, 2, U32),     // 0: words 2-3
            register(Input, 0, U16),       // 1
            register(Holding, 0, F32),     // 2: words 0-1
            register(Holding, 5, U16),     // 3: gap at 4
            register(Input, 1, U16),       // 4
            register(Holding, 65534, U32), // 5: the last two addresses
        ];
        let blocks = plan_reads(&registers);
        let summary: Vec<_> = blocks
            .iter()
            .map(|b| (b.table, b.start, b.count, b.members.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Holding, 0, 4, vec![(2, 0), (0, 2)]),
                (Holding, 5, 1, vec![(3, 0)]),
                (Holding, 65534, 2, vec![(5, 0)]),
                (Input, 0, 2, vec![(1, 0), (4, 1)]),
            ]
        );
    }

    #[test]
    fn overlapping_registers_read_the_same_words_once() {
        use RegisterType::{I16, U16, U32};
        let registers = [
            register(RegisterTable::Holding, 10, U32),
            register(RegisterTable::Holding, 11, U16),
            register(RegisterTable::Holding, 11, I16),
        ];
        let blocks = plan_reads(&registers);
        assert_eq!(blocks.len(), 1);
        assert_eq!((blocks[0].start, blocks[0].count), (10, 2));
        assert_eq!(blocks[0].members, vec![(0, 0), (1, 1), (2, 1)]);
    }
}
