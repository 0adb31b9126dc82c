//! What a run is asked for: [`InferOptions`], filled from flags and from an
//! Ollama model's params and messages layers.

use std::path::PathBuf;

use engine::kv_cache::KvType;
use engine::sampler::SamplerOptions;
use template::Message;

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineChoice {
    /// Native where supported, llama.cpp otherwise.
    #[default]
    Auto,
    /// Ours (fails for unsupported architectures).
    Native,
    /// llama.cpp's, in process.
    LlamaCpp,
}

/// Everything `infer` needs.
#[derive(Clone, Debug)]
pub struct InferOptions {
    /// The GGUF file.
    pub model: PathBuf,
    /// The prompt text.
    pub prompt: String,
    /// Send the prompt as is, without the chat template.
    pub raw: bool,
    /// System message for the chat template (`--system`, else the system layer).
    pub system: Option<String>,
    /// An Ollama template layer (Go template); it wins over the GGUF's
    /// `tokenizer.chat_template`.
    pub template: Option<String>,
    /// Earlier turns (the messages layer), put before the prompt.
    pub messages: Vec<Message>,
    /// Sampling parameters.
    pub sampler: SamplerOptions,
    /// Most tokens to generate (`None`: until end of generation).
    pub num_predict: Option<usize>,
    /// Tokens kept at the start when the context is shifted.
    pub num_keep: usize,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Most tokens drafted (prompt lookup) and verified per step when
    /// sampling is greedy; 0: one token per step (see `engine::generate`).
    pub draft_max: usize,
    /// Never sample end-of-generation tokens (llama.cpp's `--ignore-eos`;
    /// for benchmarks that need a fixed token count).
    pub ignore_eos: bool,
    /// Structured output: the text must be JSON (or match a JSON schema).
    pub format: Option<engine::grammar::Format>,
    /// Whether the model is asked to think (the template's `.Think`,
    /// Jinja's `enable_thinking`); `None` leaves it unset.
    pub think: Option<bool>,
    /// The thinking level asked for (`"low"`, `"medium"`, `"high"`,
    /// `"max"`): the template's `.ThinkLevel`; `None` leaves the default.
    pub think_level: Option<String>,
    /// Tool definitions for the template (`[{"type":"function",…}]`).
    pub tools: Option<serde_json::Value>,
    /// Text after the cursor: fill in the middle (the template's `.Suffix`).
    pub suffix: Option<String>,
    /// Report each token's log-probability with this many most likely
    /// alternatives ([`crate::Event::Token`]); `None`: none.
    pub logprobs: Option<usize>,
    /// Context length (capped at the model's).
    pub n_ctx: usize,
    /// Prompt batch size.
    pub n_batch: usize,
    /// Sequences the cache holds, each with a context of `n_ctx`, run
    /// together one token each per pass (a server's parallel requests;
    /// native engine: see [`crate::hold`]).
    pub n_seq: usize,
    /// CPU threads.
    pub n_threads: usize,
    /// KV cache element type.
    pub kv_type: KvType,
    /// Fused flash attention (forced on for quantized caches). On by
    /// default, as llama.cpp's CPU default: faster here, and the same greedy
    /// text as llama.cpp's tools on our test prompts (README, Performance).
    pub flash_attn: bool,
    /// Results independent of how the prompt is split into batches (one-row
    /// kernels for every pass: slower prompts); native engine on the CPU.
    pub batch_invariant: bool,
    /// Read the model into memory instead of mapping it.
    pub no_mmap: bool,
    /// Keep weights in the file's layout: no CPU repacking into interleaved
    /// blocks (llama.cpp's `--no-repack`). Repacked kernels add in another
    /// order; RPC workers never repack, so a split run gives a local run's
    /// bits only with this.
    pub no_repack: bool,
    /// Layers to offload to a GPU (GPU builds only). The native engine
    /// offloads all layers or none: a partial offload runs on llama.cpp's.
    pub gpu_layers: i32,
    /// ggml RPC workers (`HOST:PORT`, served by `infer-worker`) to split
    /// the layers across, with the local CPU, on llama.cpp's engine.
    pub rpc: Vec<String>,
    /// Shares of the layers for `--rpc`: one per worker device in order,
    /// then optionally the local CPU's (absent: none stay local); empty:
    /// in proportion to each side's free memory.
    pub tensor_split: Vec<f32>,
    /// Which engine.
    pub engine: EngineChoice,
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions {
            model: PathBuf::new(),
            prompt: String::new(),
            raw: false,
            system: None,
            template: None,
            messages: vec![],
            sampler: SamplerOptions::default(),
            num_predict: None,
            num_keep: 4,
            stop: vec![],
            ignore_eos: false,
            format: None,
            think: None,
            think_level: None,
            tools: None,
            suffix: None,
            logprobs: None,
            draft_max: engine::generate::DRAFT_MAX,
            n_ctx: 4096,
            n_batch: 512,
            n_seq: 1,
            n_threads: engine::default_threads(),
            kv_type: KvType::F16,
            flash_attn: true,
            batch_invariant: false,
            no_mmap: false,
            no_repack: false,
            gpu_layers: 0,
            rpc: vec![],
            tensor_split: vec![],
            engine: EngineChoice::Auto,
        }
    }
}

impl InferOptions {
    /// Applies an Ollama params layer (`{"temperature":0.2,"stop":[…],…}`);
    /// unknown keys are ignored, known ones of the wrong type are errors.
    pub fn apply_params(&mut self, json: &str) -> Result<(), String> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("params layer is not JSON: {e}"))?;
        let obj = v.as_object().ok_or("params layer is not a JSON object")?;
        let num = |k: &str| {
            obj.get(k)
                .map(|x| x.as_f64().ok_or(format!("params {k} is not a number")))
        };
        let int = |k: &str| {
            obj.get(k)
                .map(|x| x.as_i64().ok_or(format!("params {k} is not an integer")))
        };
        let s = &mut self.sampler;
        if let Some(x) = num("temperature") {
            s.temperature = x? as f32;
        }
        if let Some(x) = num("top_p") {
            s.top_p = x? as f32;
        }
        if let Some(x) = num("min_p") {
            s.min_p = x? as f32;
        }
        if let Some(x) = num("repeat_penalty") {
            s.repeat_penalty = x? as f32;
        }
        let nonneg = |k: &str, x: i64| {
            usize::try_from(x).map_err(|_| format!("params {k} = {x} is negative"))
        };
        if let Some(x) = int("top_k") {
            s.top_k = nonneg("top_k", x?)?;
        }
        if let Some(x) = int("repeat_last_n") {
            s.repeat_last_n = nonneg("repeat_last_n", x?)?;
        }
        if let Some(x) = int("seed") {
            s.seed = x? as u64;
        }
        if let Some(x) = int("num_ctx") {
            self.n_ctx = nonneg("num_ctx", x?)?;
        }
        if let Some(x) = int("num_keep") {
            self.num_keep = nonneg("num_keep", x?)?;
        }
        if let Some(x) = int("num_predict") {
            self.num_predict = usize::try_from(x?).ok();
        }
        if let Some(st) = obj.get("stop") {
            let arr = st.as_array().ok_or("params stop is not a list")?;
            self.stop = arr
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or("params stop holds a non-string")
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// Sets [`InferOptions::messages`] from an Ollama messages layer, a JSON
    /// array of `{"role":…,"content":…}`.
    pub fn apply_messages(&mut self, json: &str) -> Result<(), String> {
        self.messages =
            serde_json::from_str(json).map_err(|e| format!("messages layer is not valid: {e}"))?;
        Ok(())
    }
}
