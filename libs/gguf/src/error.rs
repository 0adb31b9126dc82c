//! The crate's one error type.

use std::fmt::{self, Write as _};

/// Why a GGUF file (or a lookup in it) was refused. `Display` is one line
/// that names the field and, where known, the byte offset.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    kind: ErrorKind,
    offset: Option<u64>,
}

/// What went wrong. More kinds may be added.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file ends before `field` is complete.
    Truncated {
        /// The field being read (`"header"`, `"key of metadata entry 3"`, `"value of general.name"`).
        field: String,
        /// Bytes the field needs.
        need: u64,
        /// Bytes left in the file.
        left: u64,
    },
    /// The file does not start with `GGUF`.
    BadMagic([u8; 4]),
    /// A version this reader does not accept (only 2 and 3 little-endian are).
    UnsupportedVersion {
        /// The version as read (little-endian).
        version: u32,
        /// Whether it looks like a big-endian (byte-swapped) 2 or 3.
        byte_swapped: bool,
    },
    /// A field whose value breaks a rule: a count, length, alignment, shape,
    /// type id, offset, or a tokenizer invariant.
    Invalid {
        /// The field (`"general.alignment"`, `"tensor blk.0.attn_q.weight"`).
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// A metadata key present more than once.
    DuplicateKey(String),
    /// Two tensors with the same name.
    DuplicateTensor(String),
    /// A key a `require_*` accessor needs is absent.
    MissingKey(String),
    /// A key holds another type than the accessor needs.
    WrongType {
        /// The key.
        key: String,
        /// What the accessor wanted.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, offset: Option<u64>) -> Error {
        Error { kind, offset }
    }

    pub(crate) fn invalid(
        field: impl Into<String>,
        why: impl Into<String>,
        offset: Option<u64>,
    ) -> Error {
        Error::new(
            ErrorKind::Invalid {
                field: field.into(),
                why: why.into(),
            },
            offset,
        )
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The byte offset in the file where the bad field starts, when known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Truncated { field, need, left } => {
                write!(f, "truncated gguf: {field} needs {need} bytes but {left} are left")
            }
            ErrorKind::BadMagic(m) => write!(f, "not a gguf file: magic is {:?}, expected \"GGUF\"", String::from_utf8_lossy(m)),
            ErrorKind::UnsupportedVersion { version, byte_swapped: true } => write!(
                f,
                "unsupported gguf version {version:#010x}: looks byte-swapped (a big-endian file); only little-endian v2 and v3 are read"
            ),
            ErrorKind::UnsupportedVersion { version, .. } => {
                write!(f, "unsupported gguf version {version}: only v2 and v3 are read")
            }
            ErrorKind::Invalid { field, why } => write!(f, "invalid {field}: {why}"),
            ErrorKind::DuplicateKey(k) => write!(f, "duplicate metadata key {k:?}"),
            ErrorKind::DuplicateTensor(n) => write!(f, "duplicate tensor name {n:?}"),
            ErrorKind::MissingKey(k) => write!(f, "cannot find {k} in gguf metadata"),
            ErrorKind::WrongType { key, expected, found } => {
                write!(f, "gguf metadata {key} is {found}, expected {expected}")
            }
        }
    }
}

impl fmt::Display for Error {
    /// One line: control characters from the file (a key holding `\n`) are
    /// escaped, so a message can never forge or split a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.kind.to_string().chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        if let Some(o) = self.offset {
            write!(f, " (at byte {o})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}
