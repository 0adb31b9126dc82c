//! Metadata values. Arrays keep their raw bytes and decode on access, so a
//! 262k-entry vocabulary costs no allocation until asked for.

use std::fmt;

/// The type tag of a metadata value (GGUF `gguf_metadata_value_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// 0
    U8,
    /// 1
    I8,
    /// 2
    U16,
    /// 3
    I16,
    /// 4
    U32,
    /// 5
    I32,
    /// 6
    F32,
    /// 7
    Bool,
    /// 8, length-prefixed UTF-8
    String,
    /// 9, element type + length + elements
    Array,
    /// 10
    U64,
    /// 11
    I64,
    /// 12
    F64,
}

impl ValueType {
    /// The type with this id, if there is one.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Lower-case name (`"u32"`, `"string"`, `"array"`).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Bytes per value for fixed-size types; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// One metadata value.
#[derive(Clone, PartialEq)]
pub enum Value<'a> {
    /// `u8`
    U8(u8),
    /// `i8`
    I8(i8),
    /// `u16`
    U16(u16),
    /// `i16`
    I16(i16),
    /// `u32`
    U32(u32),
    /// `i32`
    I32(i32),
    /// `f32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// A UTF-8 string, borrowed from the file.
    Str(&'a str),
    /// `u64`
    U64(u64),
    /// `i64`
    I64(i64),
    /// `f64`
    F64(f64),
    /// An array (validated at parse, decoded on access).
    Array(Array<'a>),
}

impl<'a> Value<'a> {
    /// The type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::String,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// The type for messages: `"u32"`, `"string"`, `"array of f32"`.
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {}", a.elem_type().name()),
            v => v.value_type().name().to_string(),
        }
    }

    /// An integer of any width, if it is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An integer of any width that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float, or an integer converted to one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self
                .as_i64()
                .map(|v| v as f64)
                .or_else(|| self.as_u64().map(|v| v as f64)),
        }
    }

    /// A float, or an integer converted to one, as `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            _ => self.as_f64().map(|v| v as f32),
        }
    }

    /// A bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An array.
    pub fn as_array(&self) -> Option<&Array<'a>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "u8 {v}"),
            Value::I8(v) => write!(f, "i8 {v}"),
            Value::U16(v) => write!(f, "u16 {v}"),
            Value::I16(v) => write!(f, "i16 {v}"),
            Value::U32(v) => write!(f, "u32 {v}"),
            Value::I32(v) => write!(f, "i32 {v}"),
            Value::F32(v) => write!(f, "f32 {v}"),
            Value::Bool(v) => write!(f, "bool {v}"),
            Value::Str(v) => write!(f, "string {:?}", v.chars().take(64).collect::<String>()),
            Value::U64(v) => write!(f, "u64 {v}"),
            Value::I64(v) => write!(f, "i64 {v}"),
            Value::F64(v) => write!(f, "f64 {v}"),
            Value::Array(a) => write!(f, "array of {} {}", a.len(), a.elem_type().name()),
        }
    }
}

/// An array value: element type, length, and the raw (already validated)
/// little-endian bytes of its elements.
#[derive(Clone, PartialEq)]
pub struct Array<'a> {
    elem: ValueType,
    len: usize,
    raw: &'a [u8],
    /// `raw` as text, when the parser could validate it in one piece.
    text: Option<&'a str>,
    nested: Vec<Array<'a>>,
}

impl fmt::Debug for Array<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "array of {} {}", self.len, self.elem.name())
    }
}

impl<'a> Array<'a> {
    pub(crate) fn new(
        elem: ValueType,
        len: usize,
        raw: &'a [u8],
        text: Option<&'a str>,
        nested: Vec<Array<'a>>,
    ) -> Array<'a> {
        Array {
            elem,
            len,
            raw,
            text,
            nested,
        }
    }

    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements' raw bytes as stored (for fixed-size types: `len × size`
    /// little-endian values).
    pub fn raw_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// The elements of a string array, borrowed from the file; `None` for
    /// other element types.
    pub fn strs(&self) -> Option<StrIter<'a>> {
        (self.elem == ValueType::String).then_some(StrIter {
            raw: self.raw,
            text: self.text,
            pos: 0,
            left: self.len,
        })
    }

    /// The nested arrays of an array of arrays (empty otherwise).
    pub fn arrays(&self) -> &[Array<'a>] {
        &self.nested
    }

    fn fixed<const N: usize, T>(&self, want: ValueType, f: fn([u8; N]) -> T) -> Option<Vec<T>> {
        (self.elem == want).then(|| {
            self.raw
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        })
    }

    /// The elements of an `f32` array (no other element type).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        self.fixed(ValueType::F32, f32::from_le_bytes)
    }

    /// The elements of an `i32` array (no other element type).
    pub fn to_i32_vec(&self) -> Option<Vec<i32>> {
        self.fixed(ValueType::I32, i32::from_le_bytes)
    }

    /// Every element as a [`Value`] (nested arrays are cloned).
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + '_ {
        let size = self.elem.fixed_size().unwrap_or(1);
        let scalars = match self.elem {
            ValueType::String | ValueType::Array => None,
            _ => Some(
                self.raw
                    .chunks_exact(size)
                    .map(move |c| decode_scalar(self.elem, c)),
            ),
        };
        let strs = self.strs().map(|s| s.map(Value::Str));
        let nested = self.nested.iter().cloned().map(Value::Array);
        scalars
            .into_iter()
            .flatten()
            .chain(strs.into_iter().flatten())
            .chain(nested)
    }
}

fn decode_scalar<'a>(t: ValueType, c: &[u8]) -> Value<'a> {
    let b = |i: usize| c.get(i).copied().unwrap_or(0);
    let a2 = [b(0), b(1)];
    let a4 = [b(0), b(1), b(2), b(3)];
    let a8 = [b(0), b(1), b(2), b(3), b(4), b(5), b(6), b(7)];
    match t {
        ValueType::U8 => Value::U8(b(0)),
        ValueType::I8 => Value::I8(b(0) as i8),
        ValueType::Bool => Value::Bool(b(0) != 0),
        ValueType::U16 => Value::U16(u16::from_le_bytes(a2)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(a2)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(a4)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(a4)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(a4)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(a8)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(a8)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(a8)),
        ValueType::String | ValueType::Array => Value::Bool(false),
    }
}

/// Iterator over a string array's elements, borrowed from the file.
#[derive(Clone, Debug)]
pub struct StrIter<'a> {
    raw: &'a [u8],
    text: Option<&'a str>,
    pos: usize,
    left: usize,
}

impl<'a> Iterator for StrIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        // The parser validated every length prefix and UTF-8 sequence; a
        // failure here can only mean a hand-built Array, so it ends the walk.
        let len = self.raw.get(self.pos..)?.first_chunk::<8>()?;
        let start = self.pos + 8;
        let end = start.checked_add(usize::try_from(u64::from_le_bytes(*len)).ok()?)?;
        let s = match self.text {
            Some(t) => t.get(start..end)?,
            None => std::str::from_utf8(self.raw.get(start..end)?).ok()?,
        };
        self.pos = end;
        self.left -= 1;
        Some(s)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}
