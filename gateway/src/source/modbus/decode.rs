//! Register contents → numbers: pure, so every layout is tested without a device.

use super::config::{ByteOrder, RegisterType, WordOrder};

/// Decodes one value from the registers starting at its address, before scaling.
///
/// `words` are the registers as the Modbus frame carries them (big-endian 16-bit each); only the
/// first [`RegisterType::words`] are used. `byte_order` little swaps the two bytes inside each
/// register, `word_order` little puts the low word first; the two combine, so a little/little
/// `f32` is fully reversed. Too few words give NaN, which the pipeline drops as not finite.
pub fn decode_value(
    words: &[u16],
    data_type: RegisterType,
    word_order: WordOrder,
    byte_order: ByteOrder,
) -> f64 {
    let fix = |word: u16| match byte_order {
        ByteOrder::Big => word,
        ByteOrder::Little => word.swap_bytes(),
    };
    let single = |word: Option<&u16>| word.copied().map(fix);
    match data_type {
        RegisterType::U16 => single(words.first()).map_or(f64::NAN, f64::from),
        RegisterType::I16 => single(words.first())
            .map_or(f64::NAN, |w| f64::from(i16::from_be_bytes(w.to_be_bytes()))),
        RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => {
            let Some(&[first, second]) = words.get(..2) else {
                return f64::NAN;
            };
            let (high, low) = match word_order {
                WordOrder::Big => (first, second),
                WordOrder::Little => (second, first),
            };
            let bits = (u32::from(fix(high)) << 16) | u32::from(fix(low));
            match data_type {
                RegisterType::U32 => f64::from(bits),
                RegisterType::I32 => f64::from(i32::from_be_bytes(bits.to_be_bytes())),
                _ => f64::from(f32::from_bits(bits)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ByteOrder as B;
    use RegisterType as T;
    use WordOrder as W;

    // 123.456f32 is 0x42F6_E979.
    const F32_BITS: u32 = 0x42f6_e979;

    #[test]
    fn f32_in_every_word_and_byte_order() {
        let expected = f64::from(f32::from_bits(F32_BITS));
        let cases = [
            ([0x42f6, 0xe979], W::Big, B::Big),
            ([0xe979, 0x42f6], W::Little, B::Big),
            ([0xf642, 0x79e9], W::Big, B::Little),
            ([0x79e9, 0xf642], W::Little, B::Little),
        ];
        for (words, word_order, byte_order) in cases {
            let value = decode_value(&words, T::F32, word_order, byte_order);
            assert_eq!(
                value, expected,
                "{words:04x?} {word_order:?} {byte_order:?}"
            );
            assert!((value - 123.456).abs() < 1e-4);
        }
    }

    #[test]
    fn sixteen_bit_types() {
        assert_eq!(decode_value(&[0xffff], T::I16, W::Big, B::Big), -1.0);
        assert_eq!(decode_value(&[0xffff], T::U16, W::Big, B::Big), 65535.0);
        assert_eq!(decode_value(&[0x8000], T::I16, W::Big, B::Big), -32768.0);
        // 0x0180 = 384; byte-swapped on the wire as 0x8001.
        assert_eq!(decode_value(&[0x8001], T::U16, W::Big, B::Little), 384.0);
        // Word order is irrelevant to one register.
        assert_eq!(decode_value(&[0x0102], T::U16, W::Little, B::Big), 258.0);
    }

    #[test]
    fn thirty_two_bit_integers_split_across_two_words() {
        // 70000 = 0x0001_1170.
        assert_eq!(
            decode_value(&[0x0001, 0x1170], T::U32, W::Big, B::Big),
            70000.0
        );
        assert_eq!(
            decode_value(&[0x1170, 0x0001], T::U32, W::Little, B::Big),
            70000.0
        );
        // -70000 = 0xFFFE_EE90.
        assert_eq!(
            decode_value(&[0xfffe, 0xee90], T::I32, W::Big, B::Big),
            -70000.0
        );
        assert_eq!(
            decode_value(&[0x90ee, 0xfeff], T::I32, W::Little, B::Little),
            -70000.0
        );
        assert_eq!(
            decode_value(&[0xffff, 0xffff], T::U32, W::Big, B::Big),
            4_294_967_295.0
        );
    }

    #[test]
    fn extra_words_are_ignored_and_missing_words_give_nan() {
        assert_eq!(decode_value(&[7, 1, 2], T::U16, W::Big, B::Big), 7.0);
        assert!(decode_value(&[0x42f6], T::F32, W::Big, B::Big).is_nan());
        assert!(decode_value(&[], T::I16, W::Big, B::Big).is_nan());
    }
}
