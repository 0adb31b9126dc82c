//! One file per model architecture, built on the ggml wrapper
#![deny(missing_docs)]
