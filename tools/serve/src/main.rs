//! `serve`: Ollama's HTTP API (and OpenAI's) over the store and engines.

use anyhow::{bail, Context};
use clap::Parser;
use cli::placement::Engine;
use runner::EngineChoice;

/// Serve the store's models over Ollama's HTTP API and OpenAI's, for the
/// clients that talk to `ollama serve` (ollama-python, openai-python, Open
/// WebUI, editors).
///
/// It listens on OLLAMA_HOST (default 127.0.0.1:11434; `host`, `host:port`,
/// `:port` or `http://host:port`) and serves the store at OLLAMA_MODELS
/// (default ~/.ollama/models). A model loads on first use and stays loaded
/// for keep_alive (OLLAMA_KEEP_ALIVE, default 5m; 0 unloads after the
/// request, negative never). OLLAMA_MAX_LOADED_MODELS (default 3) bounds
/// the loaded models, the least recently used idle one is unloaded first;
/// OLLAMA_MAX_QUEUE (default 512) bounds the waiting requests, beyond which
/// they get 503. OLLAMA_NUM_PARALLEL (default 1) requests to one model run
/// together, one token of each per forward pass (continuous batching, on
/// either engine; each with the whole context); more wait. Embeddings
/// (/api/embed) are the mean of the final hidden states, unit length, on
/// either engine. Bound to
/// loopback, requests whose Host header is not local get 403; browser
/// origins are allowed as in Ollama, plus OLLAMA_ORIGINS (comma-separated,
/// `*` wildcards). One log line per request goes to stderr.
///
/// Routes: GET|HEAD /, /api/version, /api/tags, POST /api/show,
/// /api/generate, /api/chat, GET /api/ps, POST /api/copy, DELETE
/// /api/delete, HEAD|POST /api/blobs/sha256:HEX, POST /api/pull, /api/push
/// (to and from OCI registries; NDJSON progress), /api/create (from a model,
/// or from an uploaded GGUF blob named by digest; `quantize` for an F16/F32 one), /api/embed,
/// /api/embeddings, POST /v1/chat/completions, /v1/completions,
/// /v1/embeddings, GET /v1/models, /v1/models/NAME. Generation takes
/// `format` ("json" or a JSON schema; OpenAI's `response_format`) for
/// structured output, `logprobs` and `top_logprobs`, and as the model's
/// template allows (`/api/show`'s capabilities; else 400 in Ollama's words)
/// `think` (reasoning split into `thinking`), `tools` (calls parsed into
/// `message.tool_calls`) and `suffix` (fill in the middle).
/// Pull and push find credentials as fetch-blob and model-push do
/// (LLPIPE_REGISTRY_USERNAME and LLPIPE_REGISTRY_PASSWORD, else docker's
/// config.json).
#[derive(Parser, Debug)]
#[command(
    name = "serve",
    version,
    after_help = "Example: OLLAMA_HOST=127.0.0.1:11434 serve &\n  curl -s localhost:11434/api/generate -d '{\"model\":\"smollm2:135m\",\"prompt\":\"Hi\",\"stream\":false}'"
)]
struct Args {
    /// Context length of each loaded model, capped at the model's; a
    /// request's num_ctx (or num_thread, num_batch, num_gpu, use_mmap)
    /// option loads another copy [default: 4096, or OLLAMA_CONTEXT_LENGTH].
    #[arg(long)]
    ctx: Option<usize>,
    /// CPU threads per model [default: physical cores].
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    place: cli::placement::Placement,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_usize(name: &str) -> anyhow::Result<Option<usize>> {
    env(name)
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .with_context(|| format!("{name}={v:?} is not a non-negative integer"))
        })
        .transpose()
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let a: Args = cli::parse_args();
        let mut o = serve::Options {
            addr: serve::parse_host(&env("OLLAMA_HOST").unwrap_or_default())
                .map_err(anyhow::Error::msg)?,
            store: store_from_env()?,
            ..Default::default()
        };
        if let Some(n) = a.ctx.or(env_usize("OLLAMA_CONTEXT_LENGTH")?) {
            o.load.n_ctx = n;
        }
        if let Some(t) = a.threads {
            o.load.n_threads = t;
        }
        if o.load.n_ctx < 4 || o.load.n_threads == 0 {
            bail!("--ctx must be at least 4 and --threads at least 1");
        }
        let p = a.place;
        (o.load.gpu_layers, o.load.rpc, o.load.tensor_split) =
            (p.gpu_layers, p.rpc, p.tensor_split);
        o.load.engine = match p.engine {
            Some(Engine::Native) => EngineChoice::Native,
            Some(Engine::LlamaCpp) => EngineChoice::LlamaCpp,
            None => EngineChoice::Auto,
        };
        if let Some(k) = env("OLLAMA_KEEP_ALIVE") {
            let v = k
                .parse::<serde_json::Value>()
                .unwrap_or(serde_json::Value::String(k.clone()));
            o.keep_alive = serve::parse_keep_alive(&v)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("OLLAMA_KEEP_ALIVE={k:?}"))?;
        }
        if let Some(n) = env_usize("OLLAMA_MAX_LOADED_MODELS")?.filter(|&n| n > 0) {
            o.sched.max_loaded = n;
        }
        if let Some(n) = env_usize("OLLAMA_MAX_QUEUE")? {
            o.sched.max_queue = n;
        }
        if let Some(n) = env_usize("OLLAMA_NUM_PARALLEL")?.filter(|&n| n > 0) {
            o.sched.num_parallel = n;
        }
        if let Some(origins) = env("OLLAMA_ORIGINS") {
            o.origins = origins.split(',').map(str::to_owned).collect();
        }
        serve::serve(o).map_err(anyhow::Error::msg)?;
        Ok(cli::Outcome::Ok)
    })
}

fn store_from_env() -> anyhow::Result<store::Store> {
    store::Store::from_env().context("opening the model store")
}
