//! Runs a model for a prompt or a chat: what `infer` does, for it and for a
//! server to share. [`infer`] is a one-shot run, [`chat`] a conversation
//! with `ollama run`'s `/set` and `/show` commands; both take
//! [`InferOptions`] (flags, or an Ollama model's params and messages layers
//! through [`InferOptions::apply_params`] and
//! [`InferOptions::apply_messages`]). A server holds a model loaded for
//! many runs with [`hold`].
//!
//! A run maps and parses the GGUF once: the tokenizer, the chat template
//! and the engine choice come from that parse, and the native engine
//! (`models`) builds its weights from it. It runs the native engine for
//! architectures `models::supports`, and llama.cpp's (`engine::llama_cpp`)
//! otherwise, for a partial GPU offload, or when asked, with a one-line
//! notice. Tokenizing, sampling, stop strings and streaming are ours with
//! either engine. Without `raw` the prompt goes through the model's chat
//! template ([`prompt`]).
//!
//! Errors are one line and do not name the model file: the caller names it
//! once (`infer: error: running FILE: …`).
//!
//! ```no_run
//! let mut o = runner::InferOptions::default();
//! o.model = "SmolLM2-135M-Instruct.Q4_1.gguf".into();
//! o.prompt = "Why is the sky blue?".into();
//! let summary = runner::infer(&o, &mut |ev| {
//!     if let runner::Event::Token { text, .. } | runner::Event::Text(text) = ev {
//!         print!("{text}");
//!     }
//!     Ok(())
//! })?;
//! eprintln!("{} tokens", summary.stats.eval_count);
//! # Ok::<(), String>(())
//! ```
#![deny(missing_docs)]

mod batch;
pub mod chat;
mod hold;
mod infer;
mod options;
mod plan;
pub mod prompt;
mod split;
pub mod think;
pub mod tools;

pub use batch::{BatchJob, EmbedJob, Embedded, Task};
pub use chat::{chat, ChatOptions, Turn};
pub use hold::{hold, Held, Job, RunResult};
pub use infer::{infer, Event, Logprob, Summary, TokenLogprobs};
pub use options::{EngineChoice, InferOptions};
pub use template::Message;
pub use think::ThinkSplitter;
