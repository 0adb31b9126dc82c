//! `infer`: load a GGUF, tokenize a prompt, generate, stream text.
//!
//! [`infer`] is the one entry point of the `infer` tool. It runs the native
//! engine for architectures [`crate::supports`], and llama.cpp's engine
//! (`engine::reference`) otherwise or when asked, with a one-line notice.
//! Tokenizing, sampling, stop strings and streaming are ours in both cases.
//! Without `raw` the prompt goes through the model's chat template
//! ([`render_prompt`], [`encode_prompt`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use engine::generate::{generate, Decode, GenerateOptions, Stats};
use engine::kv_cache::KvType;
use engine::reference::{ContextOptions, ModelOptions, RefContext, RefModel};
use engine::sampler::{Sampler, SamplerOptions};
use engine::session::{Session, SessionOptions};
use engine::stop::StopBuffer;
use engine::tokenizer::{StreamDecoder, Tokenizer};

use crate::{load, supports, LoadOptions};

mod prompt;

pub use prompt::{encode_prompt, encode_rendered, render_prompt};
pub use template::Message;

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
    /// Context length (capped at the model's).
    pub n_ctx: usize,
    /// Prompt batch size.
    pub n_batch: usize,
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
    /// Layers to offload to a GPU (GPU builds only). The native engine
    /// offloads all layers or none: a partial offload runs on llama.cpp's.
    pub gpu_layers: i32,
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
            draft_max: engine::generate::DRAFT_MAX,
            n_ctx: 4096,
            n_batch: 512,
            n_threads: engine::default_threads(),
            kv_type: KvType::F16,
            flash_attn: true,
            batch_invariant: false,
            no_mmap: false,
            gpu_layers: 0,
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

/// What [`infer`] reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// A generated token and the text it completes (may be empty while a
    /// multi-byte character or a possible stop string is pending).
    Token {
        /// Token id.
        id: i32,
        /// Text ready to print.
        text: &'a str,
    },
    /// Text released at the end (held back earlier).
    Text(&'a str),
    /// A one-line notice for stderr.
    Notice(&'a str),
}

/// Counts and durations of a run, as Ollama reports them.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Engine counts and times.
    pub stats: Stats,
    /// Loading the model and preparing the cache.
    pub load_duration: Duration,
    /// The whole call.
    pub total_duration: Duration,
    /// `"native"` or `"llama.cpp"`.
    pub engine: &'static str,
}

impl Summary {
    /// The final record's fields (durations in ns), as in Ollama's API.
    pub fn to_json(&self) -> serde_json::Value {
        let ns = |d: Duration| d.as_nanos() as u64;
        serde_json::json!({
            "done": true,
            "done_reason": self.stats.done_reason.as_str(),
            "engine": self.engine,
            "total_duration": ns(self.total_duration),
            "load_duration": ns(self.load_duration),
            "prompt_eval_count": self.stats.prompt_eval_count,
            "prompt_eval_duration": ns(self.stats.prompt_eval_duration),
            "eval_count": self.stats.eval_count,
            "eval_duration": ns(self.stats.eval_duration),
            "draft_count": self.stats.draft_count,
            "draft_accepted": self.stats.draft_accepted,
        })
    }

    /// The statistics block `ollama run --verbose` prints.
    pub fn verbose_text(&self) -> String {
        let s = &self.stats;
        let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        format!(
            "total duration:       {:?}\nload duration:        {:?}\nprompt eval count:    {} token(s)\nprompt eval duration: {:?}\nprompt eval rate:     {:.2} tokens/s\neval count:           {} token(s)\neval duration:        {:?}\neval rate:            {:.2} tokens/s\n",
            self.total_duration,
            self.load_duration,
            s.prompt_eval_count,
            s.prompt_eval_duration,
            rate(s.prompt_eval_count, s.prompt_eval_duration),
            s.eval_count,
            s.eval_duration,
            rate(s.eval_count, s.eval_duration),
        ) + &if s.draft_count > 0 {
            format!(
                "drafted:              {} token(s), {} kept\n",
                s.draft_count, s.draft_accepted
            )
        } else {
            String::new()
        }
    }
}

/// Loads the model, runs the prompt and streams generated text to `on_event`.
pub fn infer(
    opts: &InferOptions,
    on_event: &mut dyn FnMut(Event) -> std::io::Result<()>,
) -> Result<Summary, String> {
    let t0 = Instant::now();
    let path = opts.model.display().to_string();
    let bytes = std::fs::File::open(&opts.model).map_err(|e| format!("cannot open {path}: {e}"))?;
    // SAFETY: read-only map, see `crate::load`.
    let map =
        unsafe { memmap2::Mmap::map(&bytes) }.map_err(|e| format!("cannot map {path}: {e}"))?;
    let gg = gguf::parse(&map).map_err(|e| format!("{path}: {e}"))?;
    let arch = gg.architecture().unwrap_or("").to_string();
    let tok = Tokenizer::from_gguf(&gg).map_err(|e| format!("tokenizer of {path}: {e}"))?;
    let template = gg.get_str("tokenizer.chat_template").map(str::to_owned);
    let n_layer = block_count(&gg, &arch);
    drop(gg);
    let prompt = encode_prompt(&tok, template.as_deref(), opts)?;
    let mut sampler = Sampler::new(opts.sampler.clone()).map_err(|e| e.to_string())?;
    let gen = GenerateOptions {
        num_predict: opts.num_predict,
        num_keep: opts.num_keep,
        draft_max: opts.draft_max,
        // as llama.cpp's --ignore-eos: end tokens are never sampled
        suppress: if opts.ignore_eos {
            tok.eog_tokens().iter().map(|&t| t as i32).collect()
        } else {
            vec![]
        },
    };
    let plan = plan(opts, &arch, n_layer)?;
    for notice in &plan.notices {
        on_event(Event::Notice(notice)).map_err(|e| e.to_string())?;
    }
    let native = plan.native;
    let mut out = Output {
        tok: &tok,
        utf8: StreamDecoder::new(),
        stop: StopBuffer::new(&opts.stop),
        on_event,
        io: None,
    };
    let is_eog = |t: i32| u32::try_from(t).is_ok_and(|t| tok.is_eog(t));
    let mut summary = Summary::default();
    let mut run = |dec: &mut dyn Decode, summary: &mut Summary| {
        summary.load_duration = t0.elapsed();
        let r = generate(dec, &prompt, &mut sampler, &gen, &is_eog, &mut |t| {
            Ok(out.token(t))
        });
        summary.stats = r.map_err(|e| e.to_string())?;
        if let Some(e) = out.io.take() {
            return Err(e.to_string());
        }
        out.finish().map_err(|e| e.to_string())
    };
    if native {
        summary.engine = "native";
        let loaded =
            load(&opts.model, &load_options(opts, &plan)).map_err(|e| format!("{path}: {e}"))?;
        let mut sess = Session::new(loaded.model.as_ref(), &session_options(opts))
            .map_err(|e| e.to_string())?;
        run(&mut sess, &mut summary)?;
    } else {
        summary.engine = "llama.cpp";
        let m = ref_model(opts)?;
        let mut dec = RefDecode::new(&m, opts)?;
        run(&mut dec, &mut summary)?;
    }
    summary.total_duration = t0.elapsed();
    Ok(summary)
}

/// Which engine runs the model and where, with the notices to print.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The native engine (else llama.cpp's).
    pub(crate) native: bool,
    /// The native engine's weights and compute go to this GPU.
    pub(crate) gpu: Option<ggml::Device>,
    /// One-line notices for stderr.
    pub(crate) notices: Vec<String>,
}

/// The layer count of an `arch` GGUF (`<arch>.block_count`), if present.
pub(crate) fn block_count(gg: &gguf::Gguf<'_>, arch: &str) -> Option<usize> {
    gg.get_u64(&format!("{arch}.block_count"))
        .and_then(|n| usize::try_from(n).ok())
}

/// Chooses the engine and device for `opts` and a model of `arch` with
/// `n_layer` layers. `--gpu-layers N` (N < 0: all) with a GPU: the native
/// engine offloads everything when N covers every layer; a partial offload
/// runs on llama.cpp's engine, which splits layers between CPU and GPU
/// (an error when `--engine native` was asked for). Without a GPU (a CPU
/// build, or no device found) the flag is ignored, with a notice.
pub(crate) fn plan(
    opts: &InferOptions,
    arch: &str,
    n_layer: Option<usize>,
) -> Result<Plan, String> {
    let mut native = use_native(opts.engine, arch)?;
    let mut notices = vec![];
    let mut gpu = None;
    if opts.gpu_layers != 0 {
        let wanted = usize::try_from(opts.gpu_layers).unwrap_or(usize::MAX);
        let all = n_layer.is_some_and(|n| wanted >= n);
        let of = n_layer.map_or("?".into(), |n| n.to_string());
        match ggml::Device::gpu() {
            None => notices.push(
                "infer: --gpu-layers ignored: no GPU backend in this build or no GPU found".into(),
            ),
            Some(dev) if native && all => gpu = Some(dev),
            Some(_) if native && opts.engine == EngineChoice::Native => {
                return Err(format!(
                    "the native engine offloads all layers or none: --gpu-layers {} of {of} \
                     (use --gpu-layers -1, or --engine llama.cpp to split layers)",
                    opts.gpu_layers
                ))
            }
            Some(_) if native => {
                native = false;
                notices.push(format!(
                    "infer: offloading {} of {of} layers: running on llama.cpp's engine, which splits layers",
                    opts.gpu_layers
                ));
            }
            Some(_) => {}
        }
    }
    if !native {
        notices.insert(0, format!("infer: running {arch} with llama.cpp's engine"));
    }
    Ok(Plan {
        native,
        gpu,
        notices,
    })
}

/// Whether `engine` runs `arch` natively; an error when the native engine
/// is asked for and does not support it.
pub(crate) fn use_native(engine: EngineChoice, arch: &str) -> Result<bool, String> {
    match engine {
        EngineChoice::Auto => Ok(supports(arch)),
        EngineChoice::Native if !supports(arch) => Err(format!(
            "architecture {arch:?} is not supported by the native engine (try --engine llama.cpp)"
        )),
        EngineChoice::Native => Ok(true),
        EngineChoice::LlamaCpp => Ok(false),
    }
}

/// How the native engine loads the model of `opts` as `plan` decided.
pub(crate) fn load_options(opts: &InferOptions, plan: &Plan) -> LoadOptions {
    LoadOptions {
        no_mmap: opts.no_mmap,
        gpu: plan.gpu,
        ..Default::default()
    }
}

/// The native session's options from `opts`.
pub(crate) fn session_options(opts: &InferOptions) -> SessionOptions {
    SessionOptions {
        n_ctx: opts.n_ctx,
        n_batch: opts.n_batch,
        n_threads: opts.n_threads,
        kv_type: opts.kv_type,
        flash_attn: opts.flash_attn,
        batch_invariant: opts.batch_invariant,
    }
}

/// Loads the model with llama.cpp's engine.
pub(crate) fn ref_model(opts: &InferOptions) -> Result<RefModel, String> {
    let mo = ModelOptions {
        n_gpu_layers: opts.gpu_layers,
        use_mmap: !opts.no_mmap,
        ..Default::default()
    };
    RefModel::load(&opts.model, &mo).map_err(|e| format!("{}: {e}", opts.model.display()))
}

/// Streams token text: complete UTF-8 characters only, stop strings cut.
pub(crate) struct Output<'a> {
    pub(crate) tok: &'a Tokenizer,
    pub(crate) utf8: StreamDecoder,
    pub(crate) stop: StopBuffer,
    pub(crate) on_event: &'a mut dyn FnMut(Event) -> std::io::Result<()>,
    pub(crate) io: Option<std::io::Error>,
}

impl Output<'_> {
    /// Emits a token's text; `false` ends generation (stop string or I/O error).
    pub(crate) fn token(&mut self, id: i32) -> bool {
        let piece = self.tok.token_to_piece(id as u32, false).to_vec();
        let text = self.utf8.push(&piece);
        let (text, stopped) = self.stop.push(&text);
        if let Err(e) = (self.on_event)(Event::Token { id, text: &text }) {
            self.io = Some(e);
            return false;
        }
        !stopped
    }
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        let rest = self.utf8.finish();
        let (mut text, stopped) = self.stop.push(&rest);
        if !stopped {
            text.push_str(&self.stop.finish());
        }
        if !text.is_empty() {
            (self.on_event)(Event::Text(&text))?;
        }
        Ok(())
    }
}

/// llama.cpp's engine behind [`Decode`].
pub(crate) struct RefDecode<'m> {
    pub(crate) ctx: RefContext<'m>,
    pub(crate) history: Vec<i32>,
    pub(crate) logits: Vec<f32>,
}

impl<'m> RefDecode<'m> {
    /// A llama.cpp context for `m` as `opts` asks.
    pub(crate) fn new(m: &'m RefModel, opts: &InferOptions) -> Result<RefDecode<'m>, String> {
        let kv = match opts.kv_type {
            KvType::F16 => engine::reference::KvType::F16,
            KvType::Q8_0 => engine::reference::KvType::Q8_0,
            KvType::Q4_0 => engine::reference::KvType::Q4_0,
        };
        let co = ContextOptions {
            n_ctx: opts.n_ctx.min(m.n_ctx_train()) as u32,
            n_batch: opts.n_batch as u32,
            n_threads: opts.n_threads as i32,
            type_k: kv,
            type_v: kv,
            flash_attn: opts.flash_attn || opts.kv_type != KvType::F16,
        };
        Ok(RefDecode {
            ctx: RefContext::new(m, &co).map_err(|e| e.to_string())?,
            history: vec![],
            logits: vec![],
        })
    }
}

impl Decode for RefDecode<'_> {
    fn n_ctx(&self) -> usize {
        self.ctx.n_ctx() as usize
    }
    fn n_past(&self) -> usize {
        self.history.len()
    }
    fn decode(&mut self, tokens: &[i32]) -> engine::Result<&[f32]> {
        let ctx_err = |e: engine::reference::Error| engine::Error::invalid(e.to_string());
        self.ctx
            .decode(tokens, self.history.len())
            .map_err(ctx_err)?;
        self.history.extend_from_slice(tokens);
        self.logits.clear();
        self.logits.extend_from_slice(self.ctx.logits_last());
        Ok(&self.logits)
    }
    fn shift(&mut self, num_keep: usize) -> engine::Result<()> {
        let n = self.history.len();
        let keep = num_keep.min(n.saturating_sub(1));
        let mut kept = self.history[..keep].to_vec();
        kept.extend_from_slice(&self.history[keep + (n - keep) / 2..]);
        self.ctx.clear();
        self.history.clear();
        self.decode(&kept).map(|_| ())
    }
    fn truncate(&mut self, n: usize) {
        self.history.truncate(n);
        self.ctx.truncate(self.history.len());
    }
}
