//! Character classes for the pre-tokenizers and the GPT-2 byte-to-unicode map.
//!
//! The classes follow llama.cpp's (one general-category bit per code point, from the same
//! Unicode version, plus a `WHITESPACE` bit), so text splits exactly as it does there.

use super::unicode_data::RANGES;

/// Flags of one code point; `0` means "outside the text" (no character at all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags(pub u16);

// The full set of llama.cpp's category bits; the splitters test only some of them.
#[allow(dead_code)]
impl Flags {
    pub const UNDEFINED: u16 = 1;
    pub const NUMBER: u16 = 1 << 1;
    pub const LETTER: u16 = 1 << 2;
    pub const SEPARATOR: u16 = 1 << 3;
    pub const MARK: u16 = 1 << 4;
    pub const PUNCT: u16 = 1 << 5;
    pub const SYMBOL: u16 = 1 << 6;
    pub const CONTROL: u16 = 1 << 7;
    pub const WHITESPACE: u16 = 1 << 8;

    pub fn letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    pub fn number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    pub fn whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    pub fn punct(self) -> bool {
        self.0 & Self::PUNCT != 0
    }
    /// A character is there (any flag set).
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

/// Unicode `White_Space` code points (what `\s` means in the tokenizer regexes).
const WHITESPACE: [u32; 25] = [
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
    0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
];

/// The flags of `c`.
pub(crate) fn flags(c: char) -> Flags {
    let cp = c as u32;
    let i = RANGES.partition_point(|&(start, _)| start <= cp);
    // RANGES starts at 0, so i >= 1.
    let mut f = RANGES[i - 1].1 as u16;
    if WHITESPACE.binary_search(&cp).is_ok() {
        f |= Flags::WHITESPACE;
    }
    Flags(f)
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map
/// to themselves, the 68 others to U+0100.. in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(cp).expect("byte map stays below U+0200");
    }
    table
}

/// The inverse of [`byte_to_char_table`]: for code points below U+0144, the byte they
/// stand for (`-1` where none).
pub(crate) fn char_to_byte_table(table: &[char; 256]) -> [i16; 0x144] {
    let mut inv = [-1i16; 0x144];
    for (b, &c) in table.iter().enumerate() {
        inv[c as usize] = b as i16;
    }
    inv
}

/// The byte a GPT-2 byte-level character stands for, if it is one.
pub(crate) fn char_to_byte(c: char, inv: &[i16; 0x144]) -> Option<u8> {
    inv.get(c as usize).and_then(|&b| u8::try_from(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_common_characters() {
        assert!(flags('a').letter() && flags('Ж').letter() && flags('中').letter());
        assert!(flags('7').number() && flags('٣').number() && flags('½').number());
        assert!(
            flags(' ').whitespace() && flags('\u{3000}').whitespace() && flags('\n').whitespace()
        );
        assert!(
            !flags('\u{200B}').whitespace(),
            "zero-width space is not White_Space"
        );
        assert!(flags('!').punct() && flags('「').punct() && !flags('$').punct());
        assert_eq!(flags('$').0, Flags::SYMBOL);
        assert_eq!(flags('\u{0301}').0, Flags::MARK);
        assert_eq!(flags('\u{10FFFF}').0, Flags::UNDEFINED);
        // U+1FAE8 (shaking face) is assigned in Unicode 15.0, U+1FAE9 only in 16.0.
        assert_eq!(flags('\u{1FAE8}').0, Flags::SYMBOL);
        assert_eq!(flags('\u{1FAE9}').0, Flags::UNDEFINED);
    }

    #[test]
    fn table_is_unicode_15_1_like_llama_cpp() {
        assert_eq!(super::super::unicode_data::UNICODE_VERSION, "15.1.0");
    }

    #[test]
    fn byte_map_is_gpt2s() {
        let t = byte_to_char_table();
        let inv = char_to_byte_table(&t);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xAD], '\u{143}');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[b as usize], &inv), Some(b));
        }
        assert_eq!(char_to_byte(' ', &inv), None);
        assert_eq!(char_to_byte('中', &inv), None);
    }
}
