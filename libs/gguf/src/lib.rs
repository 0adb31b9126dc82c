//! A GGUF reader over a byte slice, and what `ollama show` tells from it.
//!
//! [`parse`] reads the header of a GGUF v2/v3 file held in memory (an mmap
//! or a `Vec`): metadata in file order, and tensor infos whose data ranges
//! are checked against the file. Strings and arrays borrow from the bytes, so
//! a 262k-token vocabulary is validated once and never copied.
//!
//! The parser is meant for hostile input: every count and length is checked
//! against the bytes left before anything is allocated, arithmetic on header
//! values is checked, and each failure is one [`Error`] naming the field.
//! What [`parse`] refuses (see /work/shared/HOSTILE.md rows 19–32):
//!
//! - a short or non-`GGUF` header; versions other than 2 and 3 (a
//!   byte-swapped 2/3 is named as such);
//! - counts or lengths that cannot fit in the bytes left, strings over
//!   [`MAX_STRING_LEN`], arrays over [`MAX_ARRAY_LEN`] or nested deeper than
//!   [`MAX_ARRAY_DEPTH`], unknown value types, bools other than 0/1,
//!   non-UTF-8 strings, empty or duplicate keys;
//! - `general.alignment` that is not a `u32` power of two up to [`MAX_ALIGNMENT`];
//! - tensors with more than [`MAX_DIMS`] dims, negative dims, element or
//!   byte counts that overflow, rows not a multiple of the block size, empty,
//!   long or duplicate names, misaligned, overlapping or out-of-file data, or
//!   an unknown type whose size cannot be taken from the next tensor's offset
//!   (an unknown type id is otherwise kept raw, see [`GgmlType::is_known`]);
//! - `tokenizer.ggml.scores` / `token_type` that are not `f32` / `i32`
//!   arrays as long as `tokenizer.ggml.tokens`, and `tokenizer.ggml.*_token_id`
//!   values outside the vocabulary.
//!
//! Zero-sized dims are accepted (llama.cpp's `TENSORS_ZERO_DIM` must load).
//! [`show`] turns a parsed file into what `ollama show` prints.
//!
//! ```
//! // A minimal file: header, one metadata entry, no tensors.
//! let mut f = Vec::new();
//! f.extend_from_slice(b"GGUF");
//! f.extend_from_slice(&3u32.to_le_bytes());
//! f.extend_from_slice(&0u64.to_le_bytes()); // tensors
//! f.extend_from_slice(&1u64.to_le_bytes()); // metadata entries
//! let key = b"general.architecture";
//! f.extend_from_slice(&(key.len() as u64).to_le_bytes());
//! f.extend_from_slice(key);
//! f.extend_from_slice(&8u32.to_le_bytes()); // string
//! f.extend_from_slice(&5u64.to_le_bytes());
//! f.extend_from_slice(b"llama");
//!
//! let g = gguf::parse(&f).unwrap();
//! assert_eq!(g.version(), 3);
//! assert_eq!(g.architecture(), Some("llama"));
//! assert_eq!(g.parameter_count(), 0);
//! assert_eq!(gguf::format_parameter_count(134_515_008), "135M");
//!
//! // Any prefix of it is refused with a message, never a panic.
//! let err = gguf::parse(&f[..f.len() - 1]).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "truncated gguf: value of general.architecture needs 5 bytes but 4 are left (at byte 64)"
//! );
//! assert!(gguf::parse(&f[..30]).is_err());
//! ```
#![deny(missing_docs)]

mod error;
mod reader;
pub mod show;
mod types;
mod value;

pub use error::{Error, ErrorKind};
pub use reader::{
    parse, Gguf, TensorInfo, DEFAULT_ALIGNMENT, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN,
    MAX_DIMS, MAX_STRING_LEN, MAX_TENSOR_NAME,
};
pub use types::{FileType, GgmlType};
pub use value::{Array, StrIter, Value, ValueType};

/// A parameter count the way Ollama shows it: `"135M"`, `"268M"`, `"8.0B"`,
/// `"1.2B"`, `"14.8B"`, `"22K"`.
///
/// Billions keep one decimal unless whole (`"8.0B"`, `"1B"`) as Ollama's
/// `format.HumanNumber` does. Millions keep three significant digits
/// (`"135M"`, `"26.5M"`, `"1.25M"`), as ollama.com and `ollama list` tags show
/// them; `HumanNumber` itself would print `"134.52M"`.
pub fn format_parameter_count(n: u64) -> String {
    const K: f64 = 1e3;
    const M: f64 = 1e6;
    const B: f64 = 1e9;
    let x = n as f64;
    if n >= 1_000_000_000 {
        let b = x / B;
        if b == b.floor() {
            format!("{b:.0}B")
        } else {
            format!("{b:.1}B")
        }
    } else if n >= 1_000_000 {
        let m = x / M;
        match m {
            m if m >= 100.0 => format!("{m:.0}M"),
            m if m >= 10.0 => format!("{m:.1}M"),
            m => format!("{m:.2}M"),
        }
    } else if n >= 1_000 {
        format!("{:.0}K", x / K)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_format() {
        assert_eq!(format_parameter_count(134_515_008), "135M");
        assert_eq!(format_parameter_count(268_098_176), "268M");
        assert_eq!(format_parameter_count(8_030_261_248), "8.0B");
        assert_eq!(format_parameter_count(1_235_814_400), "1.2B");
        assert_eq!(format_parameter_count(1_000_000_000), "1B");
        assert_eq!(format_parameter_count(2_850_000_000), "2.9B");
        assert_eq!(format_parameter_count(26_500_000), "26.5M");
        assert_eq!(format_parameter_count(1_000_000), "1.00M");
        assert_eq!(format_parameter_count(22_000), "22K");
        assert_eq!(format_parameter_count(999), "999");
        assert_eq!(format_parameter_count(0), "0");
    }
}
