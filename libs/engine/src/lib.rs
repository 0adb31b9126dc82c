//! Tokenizer, KV cache, sampling and the generation loop
#![deny(missing_docs)]

pub mod reference;
