//! The engine's error type.

/// An error from the native engine: bad options, ggml failures.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
}

/// The kinds of [`Error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An option or input is out of range (the message names it).
    #[error("{0}")]
    Invalid(String),
    /// ggml could not allocate or compute.
    #[error(transparent)]
    Ggml(#[from] ggml::Error),
    /// The caller's token callback failed.
    #[error("{0}")]
    Callback(String),
}

impl Error {
    /// An [`ErrorKind::Invalid`] error.
    pub fn invalid(msg: String) -> Error {
        Error {
            kind: ErrorKind::Invalid(msg),
        }
    }
}

impl From<ggml::Error> for Error {
    fn from(e: ggml::Error) -> Error {
        Error {
            kind: ErrorKind::Ggml(e),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
