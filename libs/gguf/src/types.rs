//! The ggml tensor types and llama.cpp file types, as tables.

use std::fmt;

/// A ggml tensor type, by its numeric id in the file.
///
/// Ids the table does not know (or that were removed from ggml) are kept as
/// they are: [`GgmlType::is_known`] is false, [`GgmlType::name`] says
/// `"unknown"`, and `Display` prints `type=NN`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(u32);

/// One row of the ggml type table: name, elements per block, bytes per block.
/// A block size of 0 marks a type removed from ggml (its id is reserved).
const GGML_TYPES: [(&str, u64, u64); 43] = [
    ("F32", 1, 4),        // 0
    ("F16", 1, 2),        // 1
    ("Q4_0", 32, 18),     // 2
    ("Q4_1", 32, 20),     // 3
    ("Q4_2", 0, 0),       // 4, removed
    ("Q4_3", 0, 0),       // 5, removed
    ("Q5_0", 32, 22),     // 6
    ("Q5_1", 32, 24),     // 7
    ("Q8_0", 32, 34),     // 8
    ("Q8_1", 32, 36),     // 9
    ("Q2_K", 256, 84),    // 10
    ("Q3_K", 256, 110),   // 11
    ("Q4_K", 256, 144),   // 12
    ("Q5_K", 256, 176),   // 13
    ("Q6_K", 256, 210),   // 14
    ("Q8_K", 256, 292),   // 15
    ("IQ2_XXS", 256, 66), // 16
    ("IQ2_XS", 256, 74),  // 17
    ("IQ3_XXS", 256, 98), // 18
    ("IQ1_S", 256, 50),   // 19
    ("IQ4_NL", 32, 18),   // 20
    ("IQ3_S", 256, 110),  // 21
    ("IQ2_S", 256, 82),   // 22
    ("IQ4_XS", 256, 136), // 23
    ("I8", 1, 1),         // 24
    ("I16", 1, 2),        // 25
    ("I32", 1, 4),        // 26
    ("I64", 1, 8),        // 27
    ("F64", 1, 8),        // 28
    ("IQ1_M", 256, 56),   // 29
    ("BF16", 1, 2),       // 30
    ("Q4_0_4_4", 0, 0),   // 31, removed (runtime repacking now)
    ("Q4_0_4_8", 0, 0),   // 32, removed
    ("Q4_0_8_8", 0, 0),   // 33, removed
    ("TQ1_0", 256, 54),   // 34
    ("TQ2_0", 256, 66),   // 35
    ("IQ4_NL_4_4", 0, 0), // 36, removed
    ("IQ4_NL_4_8", 0, 0), // 37, removed
    ("IQ4_NL_8_8", 0, 0), // 38, removed
    ("MXFP4", 32, 17),    // 39
    ("NVFP4", 64, 36),    // 40
    ("Q1_0", 128, 18),    // 41
    ("Q2_0", 64, 18),     // 42
];

impl GgmlType {
    /// 32-bit float.
    pub const F32: GgmlType = GgmlType(0);
    /// 16-bit IEEE float.
    pub const F16: GgmlType = GgmlType(1);
    /// 4-bit, 32 per block, one f16 scale.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// 4-bit, 32 per block, f16 scale and min.
    pub const Q4_1: GgmlType = GgmlType(3);
    /// 5-bit, 32 per block, one f16 scale.
    pub const Q5_0: GgmlType = GgmlType(6);
    /// 5-bit, 32 per block, f16 scale and min.
    pub const Q5_1: GgmlType = GgmlType(7);
    /// 8-bit, 32 per block, one f16 scale.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// 8-bit, 32 per block, scale and sum.
    pub const Q8_1: GgmlType = GgmlType(9);
    /// 2-bit k-quant, 256 per super-block.
    pub const Q2_K: GgmlType = GgmlType(10);
    /// 3-bit k-quant, 256 per super-block.
    pub const Q3_K: GgmlType = GgmlType(11);
    /// 4-bit k-quant, 256 per super-block.
    pub const Q4_K: GgmlType = GgmlType(12);
    /// 5-bit k-quant, 256 per super-block.
    pub const Q5_K: GgmlType = GgmlType(13);
    /// 6-bit k-quant, 256 per super-block.
    pub const Q6_K: GgmlType = GgmlType(14);
    /// 8-bit k-quant (intermediate), 256 per super-block.
    pub const Q8_K: GgmlType = GgmlType(15);
    /// 4-bit non-linear, 32 per block.
    pub const IQ4_NL: GgmlType = GgmlType(20);
    /// 8-bit integer.
    pub const I8: GgmlType = GgmlType(24);
    /// 16-bit integer.
    pub const I16: GgmlType = GgmlType(25);
    /// 32-bit integer.
    pub const I32: GgmlType = GgmlType(26);
    /// 64-bit integer.
    pub const I64: GgmlType = GgmlType(27);
    /// 64-bit float.
    pub const F64: GgmlType = GgmlType(28);
    /// bfloat16.
    pub const BF16: GgmlType = GgmlType(30);
    /// 4-bit microscaling float, 32 per block.
    pub const MXFP4: GgmlType = GgmlType(39);

    /// The type with this id (known or not).
    pub const fn from_id(id: u32) -> GgmlType {
        GgmlType(id)
    }

    /// The numeric id as stored in the file.
    pub const fn id(self) -> u32 {
        self.0
    }

    fn row(self) -> Option<&'static (&'static str, u64, u64)> {
        GGML_TYPES.get(self.0 as usize)
    }

    /// Whether the table knows this id and it has a data layout (not removed).
    pub fn is_known(self) -> bool {
        self.row().is_some_and(|r| r.1 != 0)
    }

    /// The ggml name in upper case (`"Q4_K"`, `"F16"`); removed types keep
    /// their old name; ids past the table give `"unknown"`.
    pub fn name(self) -> &'static str {
        self.row().map_or("unknown", |r| r.0)
    }

    /// Elements per block (1 for plain types); 0 when the layout is unknown.
    pub fn block_size(self) -> u64 {
        self.row().map_or(0, |r| r.1)
    }

    /// Bytes per block; 0 when the layout is unknown.
    pub fn type_size(self) -> u64 {
        self.row().map_or(0, |r| r.2)
    }

    /// Bytes taken by `n_elements` elements of this type, or `None` when the
    /// layout is unknown, `n_elements` is not a whole number of blocks, or
    /// the size overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let (bs, ts) = (self.block_size(), self.type_size());
        if bs == 0 || n_elements % bs != 0 {
            return None;
        }
        (n_elements / bs).checked_mul(ts)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.row().is_some() {
            f.write_str(self.name())
        } else {
            write!(f, "type={}", self.0)
        }
    }
}

impl fmt::Debug for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GgmlType({}={})", self.0, self.name())
    }
}

/// The file type (`general.file_type`): what the file was quantized to, as
/// llama.cpp's `llama_ftype` enum numbers it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FileType(u32);

/// `llama_ftype` names without the `MOSTLY_` prefix, indexed by id.
const FILE_TYPES: [&str; 42] = [
    "F32",           // 0
    "F16",           // 1
    "Q4_0",          // 2
    "Q4_1",          // 3
    "Q4_1_SOME_F16", // 4, removed
    "Q4_2",          // 5, removed
    "Q4_3",          // 6, removed
    "Q8_0",          // 7
    "Q5_0",          // 8
    "Q5_1",          // 9
    "Q2_K",          // 10
    "Q3_K_S",        // 11
    "Q3_K_M",        // 12
    "Q3_K_L",        // 13
    "Q4_K_S",        // 14
    "Q4_K_M",        // 15
    "Q5_K_S",        // 16
    "Q5_K_M",        // 17
    "Q6_K",          // 18
    "IQ2_XXS",       // 19
    "IQ2_XS",        // 20
    "Q2_K_S",        // 21
    "IQ3_XS",        // 22
    "IQ3_XXS",       // 23
    "IQ1_S",         // 24
    "IQ4_NL",        // 25
    "IQ3_S",         // 26
    "IQ3_M",         // 27
    "IQ2_S",         // 28
    "IQ2_M",         // 29
    "IQ4_XS",        // 30
    "IQ1_M",         // 31
    "BF16",          // 32
    "Q4_0_4_4",      // 33, removed
    "Q4_0_4_8",      // 34, removed
    "Q4_0_8_8",      // 35, removed
    "TQ1_0",         // 36
    "TQ2_0",         // 37
    "MXFP4",         // 38 (llama.cpp: MXFP4_MOE)
    "NVFP4",         // 39
    "Q1_0",          // 40
    "Q2_0",          // 41
];

impl FileType {
    /// The file type with this id (known or not).
    pub const fn from_id(id: u32) -> FileType {
        FileType(id)
    }

    /// The numeric id (`general.file_type`).
    pub const fn id(self) -> u32 {
        self.0
    }

    /// The name Ollama shows as "quantization" (`"Q4_K_M"`, `"Q4_1"`, `"F16"`);
    /// `"unknown"` for ids past the table.
    pub fn name(self) -> &'static str {
        FILE_TYPES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("unknown")
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match FILE_TYPES.get(self.0 as usize) {
            Some(n) => f.write_str(n),
            None => write!(f, "unknown({})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_table_matches_block_layouts() {
        assert_eq!(GgmlType::Q4_K.name(), "Q4_K");
        assert_eq!(
            (GgmlType::Q4_K.block_size(), GgmlType::Q4_K.type_size()),
            (256, 144)
        );
        assert_eq!(
            (GgmlType::Q4_1.block_size(), GgmlType::Q4_1.type_size()),
            (32, 20)
        );
        assert_eq!(
            (GgmlType::Q6_K.block_size(), GgmlType::Q6_K.type_size()),
            (256, 210)
        );
        assert_eq!(GgmlType::from_id(42).name(), "Q2_0");
        assert!(GgmlType::from_id(42).is_known());
        // removed ids keep a name, but no layout
        assert_eq!(GgmlType::from_id(4).name(), "Q4_2");
        assert!(!GgmlType::from_id(4).is_known());
        assert_eq!(GgmlType::from_id(4).bytes_for(32), None);
        // past the table
        let t = GgmlType::from_id(43);
        assert!(!t.is_known());
        assert_eq!(t.name(), "unknown");
        assert_eq!(t.to_string(), "type=43");
        assert_eq!(GgmlType::from_id(u32::MAX).block_size(), 0);
    }

    #[test]
    fn bytes_for_checks_blocks_and_overflow() {
        assert_eq!(GgmlType::F32.bytes_for(10), Some(40));
        assert_eq!(GgmlType::Q4_0.bytes_for(64), Some(36));
        assert_eq!(GgmlType::Q4_0.bytes_for(33), None);
        assert_eq!(GgmlType::F64.bytes_for(u64::MAX), None);
        assert_eq!(GgmlType::Q4_0.bytes_for(0), Some(0));
    }

    #[test]
    fn file_type_names() {
        assert_eq!(FileType::from_id(15).name(), "Q4_K_M");
        assert_eq!(FileType::from_id(3).name(), "Q4_1");
        assert_eq!(FileType::from_id(1).name(), "F16");
        assert_eq!(FileType::from_id(7).name(), "Q8_0");
        assert_eq!(FileType::from_id(32).name(), "BF16");
        assert_eq!(FileType::from_id(1000).name(), "unknown");
        assert_eq!(FileType::from_id(1000).to_string(), "unknown(1000)");
    }
}
