//! The parser: header, metadata, tensor infos, and the checks that make a
//! hostile file fail cleanly.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, ErrorKind};
use crate::types::{FileType, GgmlType};
use crate::value::{Array, Value, ValueType};

// ---- limits ----

/// Longest string accepted (ollama's cap); real strings are far shorter.
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// Most elements in one array (ollama's cap); real vocabularies hold ~262k.
pub const MAX_ARRAY_LEN: u64 = 64 << 20;
/// Deepest array nesting (an array of arrays is depth 2).
pub const MAX_ARRAY_DEPTH: u32 = 3;
/// Largest `general.alignment` accepted.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Tensor names must be shorter than this (ggml's `GGML_MAX_NAME`).
pub const MAX_TENSOR_NAME: usize = 64;
/// The alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Smallest metadata entry: key length, a 1-byte key, type, a 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest tensor info: name length, a 1-byte name, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 4 + 8;

/// One tensor's description from the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (`"blk.0.attn_q.weight"`).
    pub name: String,
    /// Shape in ggml order: `dims[0]` (ne\[0\]) is the contiguous row length.
    pub dims: Vec<u64>,
    /// Element type; may be unknown (`ggml_type.is_known() == false`), then
    /// `n_bytes` is the gap to the next tensor's data.
    pub ggml_type: GgmlType,
    /// Start of the data, relative to [`Gguf::data_offset`].
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (product of `dims`; 1 for zero dims).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
}

/// A parsed GGUF header, borrowing strings and tensor data from the bytes.
#[derive(Clone, Debug)]
pub struct Gguf<'a> {
    bytes: &'a [u8],
    version: u32,
    alignment: u64,
    data_offset: u64,
    kv: Vec<(&'a str, Value<'a>)>,
    kv_index: HashMap<&'a str, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Parses a whole GGUF file held in `bytes` (an mmap or a `Vec`).
///
/// Every count and length is checked against the bytes left before anything
/// is allocated, so memory stays within a small multiple of `bytes.len()`,
/// and every tensor's data range is checked to lie inside `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Gguf<'_>, Error> {
    Gguf::parse(bytes)
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: impl FnOnce() -> String) -> Result<&'a [u8], Error> {
        let left = self.left();
        if n > left {
            let kind = ErrorKind::Truncated {
                field: field(),
                need: n,
                left,
            };
            return Err(Error::new(kind, Some(self.pos as u64)));
        }
        // n <= left <= usize::MAX here
        let n = n as usize;
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: impl FnOnce() -> String) -> Result<[u8; N], Error> {
        let s = self.take(N as u64, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: impl FnOnce() -> String) -> Result<u32, Error> {
        self.array::<4>(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: impl FnOnce() -> String) -> Result<u64, Error> {
        self.array::<8>(field).map(u64::from_le_bytes)
    }

    fn string(&mut self, field: &impl Fn() -> String) -> Result<&'a str, Error> {
        let start = self.pos as u64;
        let n = self.u64(|| format!("length of {}", field()))?;
        if n > MAX_STRING_LEN {
            let why = format!("string length {n} exceeds the {MAX_STRING_LEN}-byte limit");
            return Err(Error::invalid(field(), why, Some(start)));
        }
        let s = self.take(n, field)?;
        simdutf8::basic::from_utf8(s)
            .map_err(|_| Error::invalid(field(), "string is not valid UTF-8", Some(start)))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value<'a>, Error> {
        let at = self.pos as u64;
        let Some(vt) = ValueType::from_id(ty) else {
            return Err(Error::invalid(
                format!("type of {key}"),
                format!("unknown value type {ty}"),
                Some(at),
            ));
        };
        let field = || format!("value of {key}");
        Ok(match vt {
            ValueType::U8 => Value::U8(self.array::<1>(field)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array::<1>(field)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array::<2>(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array::<2>(field)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array::<4>(field)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array::<4>(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array::<4>(field)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array::<8>(field)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array::<8>(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array::<8>(field)?)),
            ValueType::Bool => match self.array::<1>(field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(Error::invalid(
                        field(),
                        format!("bool byte is {b}, expected 0 or 1"),
                        Some(at),
                    ))
                }
            },
            ValueType::String => Value::Str(self.string(&field)?),
            ValueType::Array => Value::Array(self.array_value(key, depth + 1)?),
        })
    }

    /// Walks `n` strings. When every length is below 128 its 8 bytes are
    /// ASCII, so the whole region is valid UTF-8 exactly when every string
    /// is, and one validation pass replaces 262k small ones; that region is
    /// returned for zero-cost slicing later. Otherwise (or to find the bad
    /// element) each string is validated alone.
    fn string_array(&mut self, key: &str, n: usize) -> Result<Option<&'a str>, Error> {
        let start = self.pos;
        let b = self.b;
        let mut pos = start;
        let mut small = true;
        for _ in 0..n {
            let len = b
                .get(pos..pos + 8)
                .map(|l| u64::from_le_bytes(l.try_into().unwrap_or([0xFF; 8])));
            let left = (b.len() - pos).saturating_sub(8) as u64;
            match len {
                Some(l) if l <= left && l <= MAX_STRING_LEN => {
                    small &= l < 128;
                    pos += 8 + l as usize;
                }
                _ => {
                    small = false;
                    break;
                }
            }
        }
        if small {
            if let Ok(text) = simdutf8::basic::from_utf8(&b[start..pos]) {
                self.pos = pos;
                return Ok(Some(text));
            }
        }
        // slow path: validates each element and names the first bad one
        for i in 0..n {
            self.string(&|| format!("{key}[{i}]"))?;
        }
        Ok(None)
    }

    fn array_value(&mut self, key: &str, depth: u32) -> Result<Array<'a>, Error> {
        let at = self.pos as u64;
        let field = || format!("array {key}");
        if depth > MAX_ARRAY_DEPTH {
            let why = format!("arrays nested deeper than {MAX_ARRAY_DEPTH}");
            return Err(Error::invalid(field(), why, Some(at)));
        }
        let ty = self.u32(|| format!("element type of {}", field()))?;
        let Some(elem) = ValueType::from_id(ty) else {
            return Err(Error::invalid(
                field(),
                format!("unknown element type {ty}"),
                Some(at),
            ));
        };
        let len = self.u64(|| format!("length of {}", field()))?;
        let min = match elem {
            ValueType::String => 8,
            ValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1) as u64,
        };
        if len > MAX_ARRAY_LEN || len > self.left() / min {
            let why = format!(
                "{len} elements of {} cannot fit in the {} bytes left (limit {MAX_ARRAY_LEN} elements)",
                elem.name(),
                self.left()
            );
            return Err(Error::invalid(field(), why, Some(at)));
        }
        // len <= left / min, so it fits usize and bounds every allocation below
        let n = len as usize;
        let start = self.pos;
        let mut nested = Vec::new();
        let mut text = None;
        match elem {
            ValueType::String => {
                text = self.string_array(key, n)?;
            }
            ValueType::Array => {
                nested.reserve(n);
                for i in 0..n {
                    nested.push(self.array_value(&format!("{key}[{i}]"), depth + 1)?);
                }
            }
            ValueType::Bool => {
                let raw = self.take(len, field)?;
                if let Some(i) = raw.iter().position(|&b| b > 1) {
                    let why = format!("element {i} is byte {}, expected 0 or 1", raw[i]);
                    return Err(Error::invalid(
                        format!("array {key}"),
                        why,
                        Some(start as u64 + i as u64),
                    ));
                }
            }
            t => {
                self.take(len * t.fixed_size().unwrap_or(1) as u64, field)?;
            }
        }
        Ok(Array::new(elem, n, &self.b[start..self.pos], text, nested))
    }
}

impl<'a> Gguf<'a> {
    /// Parses a whole GGUF file; see the free function [`parse`].
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>, Error> {
        let mut c = Cursor { b: bytes, pos: 0 };
        let magic = c.array::<4>(|| "magic".into())?;
        if &magic != b"GGUF" {
            return Err(Error::new(ErrorKind::BadMagic(magic), Some(0)));
        }
        let version = c.u32(|| "version".into())?;
        if version != 2 && version != 3 {
            let byte_swapped = matches!(version.swap_bytes(), 1..=3);
            return Err(Error::new(
                ErrorKind::UnsupportedVersion {
                    version,
                    byte_swapped,
                },
                Some(4),
            ));
        }
        let n_tensors = c.u64(|| "tensor count".into())?;
        let n_kv = c.u64(|| "metadata count".into())?;
        if n_kv > c.left() / MIN_KV_BYTES {
            let why = format!(
                "{n_kv} entries cannot fit in the {} bytes left (truncated file or corrupt count)",
                c.left()
            );
            return Err(Error::invalid("metadata count", why, Some(16)));
        }
        if n_tensors > c.left() / MIN_TENSOR_INFO_BYTES {
            let why = format!(
                "{n_tensors} tensor infos cannot fit in the {} bytes left (truncated file or corrupt count)",
                c.left()
            );
            return Err(Error::invalid("tensor count", why, Some(8)));
        }

        // ---- metadata ----
        let mut kv = Vec::with_capacity(n_kv as usize);
        let mut kv_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let at = c.pos as u64;
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            if key.is_empty() {
                return Err(Error::invalid(
                    format!("key of metadata entry {i}"),
                    "empty key",
                    Some(at),
                ));
            }
            let ty = c.u32(|| format!("type of {key}"))?;
            let value = c.value(ty, key, 0)?;
            if kv_index.insert(key, kv.len()).is_some() {
                return Err(Error::new(
                    ErrorKind::DuplicateKey(key.to_string()),
                    Some(at),
                ));
            }
            kv.push((key, value));
        }
        let alignment = match kv_index.get("general.alignment").map(|&i| &kv[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() && u64::from(*a) <= MAX_ALIGNMENT => {
                u64::from(*a)
            }
            Some(v) => {
                let why = format!("{v:?}: must be a u32 power of two from 1 to {MAX_ALIGNMENT}");
                return Err(Error::invalid("general.alignment", why, None));
            }
        };

        // ---- tensor infos ----
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names: HashSet<&'a str> = HashSet::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let at = c.pos as u64;
            let name = c.string(&|| format!("name of tensor {i}"))?;
            let field = || format!("tensor {name:?}");
            if name.is_empty() || name.len() >= MAX_TENSOR_NAME {
                let why = format!("name length {} is not in 1..{MAX_TENSOR_NAME}", name.len());
                return Err(Error::invalid(format!("name of tensor {i}"), why, Some(at)));
            }
            if !names.insert(name) {
                return Err(Error::new(
                    ErrorKind::DuplicateTensor(name.into()),
                    Some(at),
                ));
            }
            let n_dims = c.u32(|| format!("n_dims of {}", field()))?;
            if n_dims > MAX_DIMS {
                return Err(Error::invalid(
                    field(),
                    format!("n_dims {n_dims} exceeds {MAX_DIMS}"),
                    Some(at),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let ne = c.u64(|| format!("dim {d} of {}", field()))?;
                if ne > i64::MAX as u64 {
                    return Err(Error::invalid(
                        field(),
                        format!("dim {d} is negative ({})", ne as i64),
                        Some(at),
                    ));
                }
                dims.push(ne);
            }
            let n_elements = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64);
            let Some(n_elements) = n_elements else {
                return Err(Error::invalid(
                    field(),
                    format!("element count of shape {dims:?} overflows"),
                    Some(at),
                ));
            };
            let ggml_type = GgmlType::from_id(c.u32(|| format!("type of {}", field()))?);
            let offset = c.u64(|| format!("offset of {}", field()))?;
            if offset % alignment != 0 {
                let why =
                    format!("data offset {offset} is not a multiple of the alignment {alignment}");
                return Err(Error::invalid(field(), why, Some(at)));
            }
            let n_bytes = if ggml_type.is_known() {
                let ne0 = dims.first().copied().unwrap_or(1);
                if ne0 % ggml_type.block_size() != 0 {
                    let why = format!(
                        "row length {ne0} is not a multiple of the {ggml_type} block size {}",
                        ggml_type.block_size()
                    );
                    return Err(Error::invalid(field(), why, Some(at)));
                }
                match ggml_type
                    .bytes_for(n_elements)
                    .filter(|&b| b <= isize::MAX as u64)
                {
                    Some(b) => b,
                    None => return Err(Error::invalid(field(), "data size overflows", Some(at))),
                }
            } else {
                u64::MAX // unknown layout: filled in from the next tensor's offset below
            };
            tensors.push(TensorInfo {
                name: name.to_string(),
                dims,
                ggml_type,
                offset,
                n_bytes,
            });
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        check_tensor_data(&mut tensors, data_offset, bytes.len() as u64)?;
        let tensor_index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();

        let g = Gguf {
            bytes,
            version,
            alignment,
            data_offset,
            kv,
            kv_index,
            tensors,
            tensor_index,
        };
        g.check_tokenizer()?;
        Ok(g)
    }

    /// Checks the tokenizer arrays and special-token ids against each other.
    fn check_tokenizer(&self) -> Result<(), Error> {
        let Some(tokens) = self.get("tokenizer.ggml.tokens") else {
            return Ok(());
        };
        let n_vocab = match tokens.as_array() {
            Some(a) if a.elem_type() == ValueType::String => a.len(),
            _ => {
                let why = format!("is {}, expected an array of strings", tokens.type_name());
                return Err(Error::invalid("tokenizer.ggml.tokens", why, None));
            }
        };
        for (key, want) in [
            ("tokenizer.ggml.scores", ValueType::F32),
            ("tokenizer.ggml.token_type", ValueType::I32),
        ] {
            let Some(v) = self.get(key) else { continue };
            match v.as_array() {
                Some(a) if a.elem_type() == want && a.len() == n_vocab => {}
                Some(a) if a.elem_type() == want => {
                    let why = format!(
                        "has {} entries but tokenizer.ggml.tokens has {n_vocab}",
                        a.len()
                    );
                    return Err(Error::invalid(key, why, None));
                }
                _ => {
                    let why = format!("is {}, expected an array of {}", v.type_name(), want.name());
                    return Err(Error::invalid(key, why, None));
                }
            }
        }
        for (key, v) in &self.kv {
            if !(key.starts_with("tokenizer.ggml.") && key.ends_with("_token_id")) {
                continue;
            }
            let ok = v.as_u64().is_some_and(|id| id < n_vocab as u64);
            if !ok {
                let why = format!("{v:?} is not a token id below the vocabulary size {n_vocab}");
                return Err(Error::invalid(*key, why, None));
            }
        }
        Ok(())
    }

    // ---- header ----

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset where tensor data starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    // ---- metadata ----

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(&'a str, Value<'a>)] {
        &self.kv
    }

    /// The value of a key.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.kv_index.get(key).map(|&i| &self.kv[i].1)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(Value::as_str)
    }

    /// An integer value of any width that fits `u64` (negative gives `None`).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    /// A float or integer value, as `f32`.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(Value::as_f32)
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    /// An array of strings, e.g. `tokenizer.ggml.tokens` (zero-copy).
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&'a str>> {
        self.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.strs())
            .map(Iterator::collect)
    }

    /// An array of `f32` (exactly that element type), e.g. `tokenizer.ggml.scores`.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get(key)
            .and_then(Value::as_array)
            .and_then(Array::to_f32_vec)
    }

    /// An array of `i32` (exactly that element type), e.g. `tokenizer.ggml.token_type`.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.get(key)
            .and_then(Value::as_array)
            .and_then(Array::to_i32_vec)
    }

    /// An integer value; a missing key or another type is an error naming it.
    pub fn require_u64(&self, key: &str) -> Result<u64, Error> {
        self.require(key, "an integer", Value::as_u64)
    }

    /// A float or integer value; a missing key or another type is an error.
    pub fn require_f32(&self, key: &str) -> Result<f32, Error> {
        self.require(key, "a number", Value::as_f32)
    }

    /// A string value; a missing key or another type is an error.
    pub fn require_str(&self, key: &str) -> Result<&'a str, Error> {
        self.require(key, "a string", Value::as_str)
    }

    fn require<T>(
        &self,
        key: &str,
        expected: &'static str,
        f: impl Fn(&Value<'a>) -> Option<T>,
    ) -> Result<T, Error> {
        let v = self
            .get(key)
            .ok_or_else(|| Error::new(ErrorKind::MissingKey(key.into()), None))?;
        f(v).ok_or_else(|| {
            let found = v.type_name();
            Error::new(
                ErrorKind::WrongType {
                    key: key.into(),
                    expected,
                    found,
                },
                None,
            )
        })
    }

    /// `general.architecture` (`"llama"`, `"gemma3"`).
    pub fn architecture(&self) -> Option<&'a str> {
        self.get_str("general.architecture")
    }

    /// The value of `<arch>.<key>`, e.g. `arch_get("context_length")`.
    pub fn arch_get(&self, key: &str) -> Option<&Value<'a>> {
        self.get(&format!("{}.{key}", self.architecture()?))
    }

    /// `<arch>.<key>` as an integer.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        self.arch_get(key).and_then(Value::as_u64)
    }

    /// `<arch>.<key>` as a float.
    pub fn arch_f32(&self, key: &str) -> Option<f32> {
        self.arch_get(key).and_then(Value::as_f32)
    }

    /// `<arch>.<key>` as a string.
    pub fn arch_str(&self, key: &str) -> Option<&'a str> {
        self.arch_get(key).and_then(Value::as_str)
    }

    /// `general.file_type`, the quantization the file was made with.
    pub fn file_type(&self) -> Option<FileType> {
        self.get_u64("general.file_type")
            .and_then(|v| u32::try_from(v).ok())
            .map(FileType::from_id)
    }

    // ---- tensors ----

    /// Every tensor info, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's data. Ranges of this file's tensors were checked at parse;
    /// an info from elsewhere that falls outside the file gives an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &'a [u8] {
        let start = self.data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match (start, end) {
            (Some(s), Some(e)) => usize::try_from(s)
                .ok()
                .zip(usize::try_from(e).ok())
                .and_then(|(s, e)| self.bytes.get(s..e))
                .unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Total number of elements over all tensors (what Ollama calls the
    /// parameter count).
    pub fn parameter_count(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.n_elements()))
    }
}

/// Fills in the size of unknown-type tensors from the next tensor's offset,
/// then checks that every tensor lies inside the file and none overlap.
fn check_tensor_data(
    tensors: &mut [TensorInfo],
    data_offset: u64,
    file_len: u64,
) -> Result<(), Error> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    let data_len = file_len.saturating_sub(data_offset);
    for k in 0..order.len() {
        let i = order[k];
        let field = |t: &TensorInfo| format!("tensor {:?}", t.name);
        if !tensors[i].ggml_type.is_known() {
            let next = order[k + 1..]
                .iter()
                .map(|&j| tensors[j].offset)
                .find(|&o| o > tensors[i].offset);
            match next {
                Some(o) => tensors[i].n_bytes = o - tensors[i].offset,
                None => {
                    let t = tensors[i].ggml_type;
                    let why = format!(
                        "ggml type {} ({}) is unknown and its data size cannot be computed",
                        t.id(),
                        t.name()
                    );
                    return Err(Error::invalid(field(&tensors[i]), why, None));
                }
            }
        }
        let t = &tensors[i];
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|e| e > data_len) {
            let why = format!(
                "data [{}, +{}) lies outside the {data_len} bytes of tensor data (file is {file_len} bytes, data starts at {data_offset})",
                t.offset, t.n_bytes
            );
            return Err(Error::invalid(field(t), why, None));
        }
        if k > 0 {
            let p = &tensors[order[k - 1]];
            if p.offset + p.n_bytes > t.offset {
                let why = format!(
                    "data at {} overlaps tensor {:?} ({} bytes at {})",
                    t.offset, p.name, p.n_bytes, p.offset
                );
                return Err(Error::invalid(field(t), why, None));
            }
        }
    }
    Ok(())
}
