//! The one error type of this crate.

use std::fmt;

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The template source is larger than [`crate::Limits::max_template_bytes`].
    TemplateTooLarge,
    /// Blocks or expressions nest deeper than [`crate::Limits::max_depth`].
    TooDeep,
    /// Rendering took more steps than [`crate::Limits::max_steps`] (loops, calls).
    TooManySteps,
    /// The output grew past [`crate::Limits::max_output_bytes`].
    OutputTooLarge,
    /// The template does not parse.
    Syntax,
    /// The template failed while rendering (a type error, `raise_exception`, ...).
    Render,
    /// The request itself is not acceptable (e.g. a role with odd characters).
    Request,
}

/// An error from parsing or rendering a chat template.
///
/// Messages are one lowercase line naming what failed, e.g.
/// `go template: line 3: unexpected {{end}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    msg: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            msg: msg.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}
