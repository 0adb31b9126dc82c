//! Which engine runs a model and where ([`plan`]), and loading it there
//! from one parse of the file ([`Header`], [`load`]).
//!
//! The file is mapped and parsed once: the tokenizer, the chat template and
//! the layer count the plan needs come from that parse, and the native
//! engine builds its weights from it ([`models::load_parsed`]). llama.cpp's
//! engine reads the file itself.
//!
//! Errors here do not name the model file: the caller does, once (`infer`
//! says "running FILE: …").

use engine::generate::Decode;
use engine::kv_cache::KvType;
use engine::llama_cpp::{ContextOptions, LlamaContext, LlamaModel, ModelOptions};
use engine::session::SessionOptions;
use engine::tokenizer::Tokenizer;

use crate::split::RpcPlan;
use crate::{EngineChoice, InferOptions};

// ---- the file ----

/// Maps the model file of `opts` for its metadata (and, unless
/// `--no-mmap`, the native engine's weights).
pub(crate) fn map(opts: &InferOptions) -> Result<models::File, String> {
    models::File::map(&opts.model).map_err(|e| format!("cannot open the model file: {e}"))
}

/// What a run reads from the model's metadata before it loads the weights.
pub(crate) struct Header {
    /// `general.architecture`.
    pub(crate) arch: String,
    /// The model's tokenizer (ours, for either engine).
    pub(crate) tok: Tokenizer,
    /// `tokenizer.chat_template`.
    pub(crate) template: Option<String>,
    /// `<arch>.block_count`, if present.
    pub(crate) n_layer: Option<usize>,
}

impl Header {
    /// Reads the header of a parsed GGUF.
    pub(crate) fn read(gg: &gguf::Gguf<'_>) -> Result<Header, String> {
        let arch = gg.architecture().unwrap_or("").to_string();
        let n_layer = gg
            .get_u64(&format!("{arch}.block_count"))
            .and_then(|n| usize::try_from(n).ok());
        Ok(Header {
            tok: Tokenizer::from_gguf(gg).map_err(|e| format!("tokenizer: {e}"))?,
            template: gg.get_str("tokenizer.chat_template").map(str::to_owned),
            n_layer,
            arch,
        })
    }
}

/// A model loaded on the engine a [`Plan`] chose.
pub(crate) enum Loaded {
    /// Ours.
    Native(models::Loaded),
    /// llama.cpp's.
    LlamaCpp(LlamaModel),
}

/// Loads the model of `opts` as `plan` decided. `gg` is the parse of `map`,
/// the file mapped by [`map`]; the native engine builds on them (on a copy
/// read into memory with `--no-mmap`), without parsing the file again.
pub(crate) fn load(
    opts: &InferOptions,
    plan: &Plan,
    gg: &gguf::Gguf<'_>,
    map: &models::File,
) -> Result<Loaded, String> {
    if !plan.native {
        return llama_model(opts, plan).map(Loaded::LlamaCpp);
    }
    let file = match opts.no_mmap {
        true => models::File::read(&opts.model)
            .map_err(|e| format!("cannot read the model file: {e}"))?,
        false => map.clone(),
    };
    let lo = models::LoadOptions {
        no_mmap: opts.no_mmap,
        repack: !opts.no_repack,
        gpu: plan.gpu,
        ..Default::default()
    };
    models::load_parsed(gg, &file, &lo)
        .map(Loaded::Native)
        .map_err(|e| e.to_string())
}

/// Loads the model with llama.cpp's engine (across RPC workers when the
/// plan says so).
fn llama_model(opts: &InferOptions, plan: &Plan) -> Result<LlamaModel, String> {
    let mut mo = ModelOptions {
        n_gpu_layers: opts.gpu_layers,
        use_mmap: !opts.no_mmap,
        repack: !opts.no_repack,
        ..Default::default()
    };
    if let Some(rpc) = &plan.rpc {
        mo.n_gpu_layers = rpc.n_gpu_layers;
        mo.devices = rpc.workers.clone();
        mo.tensor_split = rpc.tensor_split.clone();
    }
    LlamaModel::load(&opts.model, &mo).map_err(|e| match e.kind() {
        // the path is the caller's to name; llama.cpp logs why
        engine::llama_cpp::ErrorKind::Load(_) => {
            "llama.cpp cannot load the model (LLPIPE_LLAMA_LOG=1 shows its log)".to_string()
        }
        _ => e.to_string(),
    })
}

// ---- the plan ----

/// Which engine runs the model and where, with the notices to print.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The native engine (else llama.cpp's).
    pub(crate) native: bool,
    /// The native engine's weights and compute go to this GPU.
    pub(crate) gpu: Option<ggml::Device>,
    /// llama.cpp's engine splits the layers across these RPC workers.
    pub(crate) rpc: Option<RpcPlan>,
    /// One-line notices for stderr.
    pub(crate) notices: Vec<String>,
}

/// Chooses the engine and device for `opts` and a model of `arch` with
/// `n_layer` layers. `--gpu-layers N` (N < 0: all) with a GPU: the native
/// engine offloads everything when N covers every layer; a partial offload
/// runs on llama.cpp's engine, which splits layers between CPU and GPU
/// (an error when `--engine native` was asked for). Without a GPU (a CPU
/// build, or no device found) the flag is ignored, with a notice. `--rpc`
/// connects to the workers and runs on llama.cpp's engine ([`crate::split`]).
pub(crate) fn plan(
    opts: &InferOptions,
    arch: &str,
    n_layer: Option<usize>,
) -> Result<Plan, String> {
    let mut native = use_native(opts.engine, arch)?;
    let mut notices = vec![];
    let mut gpu = None;
    let mut rpc = None;
    if !opts.rpc.is_empty() {
        if opts.engine == EngineChoice::Native {
            return Err(
                "the native engine runs on one machine: --rpc runs on llama.cpp's \
                        engine (drop --engine native)"
                    .into(),
            );
        }
        if opts.gpu_layers != 0 {
            return Err(
                "--rpc and --gpu-layers do not combine: with --rpc the local share \
                        of the layers runs on the CPU"
                    .into(),
            );
        }
        let n = n_layer.ok_or("--rpc needs the model's block_count, and it has none")?;
        let (p, notice) = crate::split::plan(opts, n)?;
        native = false;
        rpc = Some(p);
        notices.push(notice);
    }
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
        rpc,
        notices,
    })
}

/// Whether `engine` runs `arch` natively; an error when the native engine
/// is asked for and does not support it.
pub(crate) fn use_native(engine: EngineChoice, arch: &str) -> Result<bool, String> {
    match engine {
        EngineChoice::Auto => Ok(models::supports(arch)),
        EngineChoice::Native if !models::supports(arch) => Err(format!(
            "architecture {arch:?} is not supported by the native engine (try --engine llama.cpp)"
        )),
        EngineChoice::Native => Ok(true),
        EngineChoice::LlamaCpp => Ok(false),
    }
}

/// The native session's options from `opts`.
pub(crate) fn session_options(opts: &InferOptions) -> SessionOptions {
    SessionOptions {
        n_ctx: opts.n_ctx,
        n_batch: opts.n_batch,
        n_seq: opts.n_seq.max(1),
        n_threads: opts.n_threads,
        kv_type: opts.kv_type,
        flash_attn: opts.flash_attn,
        batch_invariant: opts.batch_invariant,
    }
}

// ---- llama.cpp behind `Decode` ----

/// llama.cpp's engine behind [`Decode`] (sequence 0) and, through
/// `hold`'s `MultiDecode`, several sequences at once.
pub(crate) struct LlamaDecode<'m> {
    pub(crate) ctx: LlamaContext<'m>,
    /// The tokens in each sequence's cells.
    pub(crate) seqs: Vec<Vec<i32>>,
    /// The last decode's logits: one row, or one per step.
    pub(crate) logits: Vec<f32>,
}

impl<'m> LlamaDecode<'m> {
    /// A llama.cpp context for `m` as `opts` asks: `opts.n_seq` sequences,
    /// each with the whole context (as the native session's).
    pub(crate) fn new(m: &'m LlamaModel, opts: &InferOptions) -> Result<LlamaDecode<'m>, String> {
        let kv = opts.kv_type;
        let n_seq = opts.n_seq.max(1);
        let co = ContextOptions {
            n_ctx: opts.n_ctx.min(m.n_ctx_train()) as u32,
            n_seq: n_seq as u32,
            n_batch: opts.n_batch as u32,
            n_threads: opts.n_threads as i32,
            type_k: kv,
            type_v: kv,
            flash_attn: opts.flash_attn || opts.kv_type != KvType::F16,
        };
        Ok(LlamaDecode {
            ctx: LlamaContext::new(m, &co).map_err(|e| e.to_string())?,
            seqs: vec![vec![]; n_seq],
            logits: vec![],
        })
    }

    /// The tokens in the cells of sequence `seq`.
    pub(crate) fn history_of(&self, seq: usize) -> &[i32] {
        &self.seqs[seq]
    }

    /// Runs `tokens` after those of sequence `seq`; the logits of the last.
    pub(crate) fn decode_seq(&mut self, seq: usize, tokens: &[i32]) -> engine::Result<&[f32]> {
        let pos = self.seqs[seq].len();
        self.ctx.decode_seq(seq, tokens, pos).map_err(ctx_err)?;
        self.seqs[seq].extend_from_slice(tokens);
        self.logits.clear();
        self.logits
            .extend_from_slice(self.ctx.logits_last().map_err(ctx_err)?);
        Ok(&self.logits)
    }

    /// One token after each of several sequences, in one decode; the
    /// logits after each, in the order of `steps`.
    pub(crate) fn step(&mut self, steps: &[(usize, i32)]) -> engine::Result<&[f32]> {
        let items: Vec<(usize, usize, i32)> = steps
            .iter()
            .map(|&(s, t)| (s, self.seqs.get(s).map_or(0, Vec::len), t))
            .collect();
        self.ctx.step(&items).map_err(ctx_err)?;
        self.logits.clear();
        for (i, &(s, t)) in steps.iter().enumerate() {
            self.seqs[s].push(t);
            self.logits
                .extend_from_slice(self.ctx.logits_ith(i).map_err(ctx_err)?);
        }
        Ok(&self.logits)
    }

    /// Makes room in sequence `seq`: keeps `num_keep` tokens and the later
    /// half of the rest, decoded again.
    pub(crate) fn shift_seq(&mut self, seq: usize, num_keep: usize) -> engine::Result<()> {
        let h = &self.seqs[seq];
        let n = h.len();
        let keep = num_keep.min(n.saturating_sub(1));
        let mut kept = h[..keep].to_vec();
        kept.extend_from_slice(&h[keep + (n - keep) / 2..]);
        self.truncate_seq(seq, 0);
        self.decode_seq(seq, &kept).map(|_| ())
    }

    /// Forgets the tokens of sequence `seq` after the first `n`.
    pub(crate) fn truncate_seq(&mut self, seq: usize, n: usize) {
        if let Some(h) = self.seqs.get_mut(seq) {
            h.truncate(n);
            self.ctx.truncate_seq(seq, h.len());
        }
    }

    /// The final hidden states of `tokens` run after those of sequence
    /// `seq`, `[n_embd] × tokens.len()`.
    pub(crate) fn hidden_seq(&mut self, seq: usize, tokens: &[i32]) -> engine::Result<Vec<f32>> {
        let pos = self.seqs.get(seq).map_or(0, Vec::len);
        let h = self.ctx.hidden(seq, tokens, pos).map_err(ctx_err)?;
        self.seqs[seq].extend_from_slice(tokens);
        Ok(h)
    }
}

fn ctx_err(e: engine::llama_cpp::Error) -> engine::Error {
    engine::Error::invalid(e.to_string())
}

impl Decode for LlamaDecode<'_> {
    fn n_ctx(&self) -> usize {
        self.ctx.n_ctx() as usize
    }
    fn n_past(&self) -> usize {
        self.seqs[0].len()
    }
    fn decode(&mut self, tokens: &[i32]) -> engine::Result<&[f32]> {
        self.decode_seq(0, tokens)
    }
    fn shift(&mut self, num_keep: usize) -> engine::Result<()> {
        self.shift_seq(0, num_keep)
    }
    fn truncate(&mut self, n: usize) {
        self.truncate_seq(0, n)
    }
}
