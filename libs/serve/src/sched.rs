//! The scheduler: which models are loaded, who may run on them, and when
//! they are unloaded.
//!
//! Each loaded model is a [`Runner`]: one OS thread that holds the model
//! ([`runner::hold`]) and runs the [`Work`] sent to it, plus a semaphore of
//! `num_parallel` slots. A request [`Scheduler::acquire`]s a [`Lease`] (a
//! slot, loading the model first if needed) and submits its work; dropping
//! the lease frees the slot and starts the model's `keep_alive` timer.
//!
//! A runner's thread serves up to `num_parallel` requests together: the
//! engine (native or llama.cpp's) holds that many sequences in its cache
//! and runs one token of each per forward pass (continuous batching,
//! [`runner::Held::run_batched`]); a request that ends frees its sequence
//! for the next at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use runner::{BatchJob, EmbedJob, Embedded, Event, InferOptions, RunResult, Task, TokenLogprobs};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Scheduler limits.
#[derive(Clone, Debug)]
pub struct SchedOptions {
    /// Most models loaded at once (`OLLAMA_MAX_LOADED_MODELS`; 0: 3).
    pub max_loaded: usize,
    /// Most requests waiting for a model (`OLLAMA_MAX_QUEUE`).
    pub max_queue: usize,
    /// Sequences per loaded model (`OLLAMA_NUM_PARALLEL`), each with the
    /// request's whole context.
    pub num_parallel: usize,
}

impl Default for SchedOptions {
    fn default() -> Self {
        SchedOptions {
            max_loaded: 3,
            max_queue: 512,
            num_parallel: 1,
        }
    }
}

/// How long a model stays loaded after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// This long after it becomes idle (zero: unload at once).
    For(Duration),
    /// Never unload.
    Forever,
}

/// Why no lease was given.
#[derive(Debug)]
pub enum SchedError {
    /// The queue is full (503).
    Busy,
    /// The model could not be loaded (500).
    Load(String),
}

/// What a loaded model is, for `/api/ps`.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Short name (`smollm2:latest`).
    pub name: String,
    /// Manifest digest, 64 hex.
    pub digest: String,
    /// Total size in bytes.
    pub size: u64,
    /// Ollama's `details` object.
    pub details: serde_json::Value,
}

/// A request to load (or find loaded) a model.
#[derive(Clone, Debug)]
pub struct LoadRequest {
    /// Load-time options: the GGUF path, context, threads, engine.
    pub load: InferOptions,
    /// For `/api/ps`.
    pub info: ModelInfo,
    /// How long to keep it loaded after this request.
    pub keep_alive: KeepAlive,
}

/// A loaded model's identity: the same file with the same load-time
/// options (Ollama reloads its one runner when they change; here a request
/// with other values gets a copy of its own, as with another context).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    model: PathBuf,
    n_ctx: usize,
    n_batch: usize,
    n_threads: usize,
    gpu_layers: i32,
    no_mmap: bool,
}

impl Key {
    fn of(load: &InferOptions) -> Key {
        Key {
            model: load.model.clone(),
            n_ctx: load.n_ctx,
            n_batch: load.n_batch,
            n_threads: load.n_threads,
            gpu_layers: load.gpu_layers,
            no_mmap: load.no_mmap,
        }
    }
}

/// What a worker reports about a job.
#[derive(Debug)]
pub enum Report {
    /// Generated text, and the log-probability of the token that ended
    /// with it when the run asked for them (never both empty).
    Text(String, Option<Box<TokenLogprobs>>),
    /// The end of the rendered prompt, before any text.
    PromptEnd(String),
    /// The run ended.
    Done(Result<RunResult, String>),
}

/// A job for a runner's thread.
pub struct Work {
    /// Prompt, sampling and limits.
    pub opts: InferOptions,
    /// Render `opts.messages` as the conversation.
    pub chat: bool,
    /// Tokens before the prompt.
    pub context: Vec<i32>,
    /// Where text and the end go; a closed receiver cancels the run.
    pub reports: tokio::sync::mpsc::Sender<Report>,
    /// Set to cancel the run.
    pub cancel: Arc<AtomicBool>,
}

/// What a runner's thread is sent.
enum Job {
    Generate(Box<Work>),
    Embed {
        inputs: Vec<String>,
        truncate: bool,
        done: tokio::sync::oneshot::Sender<Result<Embedded, String>>,
    },
}

/// One loaded model.
pub struct Runner {
    id: u64,
    key: Key,
    /// For `/api/ps`.
    pub info: ModelInfo,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    slots: Arc<Semaphore>,
    ready: watch::Receiver<Option<Result<usize, String>>>,
    /// When it unloads (`None`: never).
    expires: Mutex<Option<SystemTime>>,
    last_used: Mutex<Instant>,
}

impl Runner {
    /// When it unloads, `None` for never.
    pub fn expires_at(&self) -> Option<SystemTime> {
        *self.expires.lock().unwrap()
    }
    /// Its context length once loaded.
    pub fn n_ctx(&self) -> usize {
        match &*self.ready.borrow() {
            Some(Ok(n)) => *n,
            _ => self.key.n_ctx,
        }
    }
}

struct State {
    runners: HashMap<Key, Arc<Runner>>,
}

struct Inner {
    opts: SchedOptions,
    state: Mutex<State>,
    changed: Notify,
    pending: AtomicUsize,
    next_id: AtomicU64,
}

/// Loads, shares and unloads models; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

/// A slot on a loaded model; dropping it frees the slot.
pub struct Lease {
    inner: Arc<Inner>,
    runner: Arc<Runner>,
    keep_alive: KeepAlive,
    permit: Option<OwnedSemaphorePermit>,
    /// Time spent loading the model for this request (zero when loaded).
    pub load_duration: Duration,
}

/// Counts a waiting request while it lives.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Scheduler {
    /// A scheduler with no model loaded.
    pub fn new(opts: SchedOptions) -> Scheduler {
        Scheduler {
            inner: Arc::new(Inner {
                opts,
                state: Mutex::new(State {
                    runners: HashMap::new(),
                }),
                changed: Notify::new(),
                pending: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The loaded models.
    pub fn loaded(&self) -> Vec<Arc<Runner>> {
        let st = self.inner.state.lock().unwrap();
        st.runners.values().cloned().collect()
    }

    /// Unloads the idle model loaded from `model`, if any (every context).
    pub fn unload(&self, model: &std::path::Path) {
        let mut st = self.inner.state.lock().unwrap();
        let keys: Vec<Key> = st
            .runners
            .iter()
            .filter(|(k, r)| k.model == model && self.inner.idle(r))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(r) = st.runners.remove(&k) {
                close(&r);
            }
        }
        self.inner.changed.notify_waiters();
    }

    /// A slot on the model of `req`, loading it first (evicting the least
    /// recently used idle model at the limit). Waits while the model is
    /// busy; [`SchedError::Busy`] when too many requests wait already.
    pub async fn acquire(&self, req: LoadRequest) -> Result<Lease, SchedError> {
        let inner = &self.inner;
        if inner.pending.fetch_add(1, Ordering::SeqCst) >= inner.opts.max_queue {
            inner.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(SchedError::Busy);
        }
        let _pending = Pending(&inner.pending);
        let key = Key::of(&req.load);
        loop {
            let t0 = Instant::now();
            let Some(runner) = self.find_or_spawn(&req, &key) else {
                // at the limit and every model busy: wait for a change
                let wait = inner.changed.notified();
                let _ = tokio::time::timeout(Duration::from_millis(200), wait).await;
                continue;
            };
            let Ok(permit) = runner.slots.clone().acquire_owned().await else {
                continue; // unloaded meanwhile
            };
            let mut ready = runner.ready.clone();
            let loaded = ready.wait_for(|v| v.is_some()).await.map(|v| v.clone());
            match loaded {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    inner.remove(&runner);
                    return Err(SchedError::Load(e));
                }
                _ => {
                    inner.remove(&runner);
                    return Err(SchedError::Load("the model runner stopped".into()));
                }
            }
            if runner.slots.is_closed() {
                continue;
            }
            *runner.last_used.lock().unwrap() = Instant::now();
            *runner.expires.lock().unwrap() = expiry(req.keep_alive);
            return Ok(Lease {
                inner: inner.clone(),
                runner,
                keep_alive: req.keep_alive,
                permit: Some(permit),
                load_duration: t0.elapsed(),
            });
        }
    }

    /// The runner for `key`, else a new one if there is room (evicting the
    /// least recently used idle model at the limit); `None` when at the
    /// limit with every model busy.
    fn find_or_spawn(&self, req: &LoadRequest, key: &Key) -> Option<Arc<Runner>> {
        let inner = &self.inner;
        let mut st = inner.state.lock().unwrap();
        if let Some(r) = st.runners.get(key) {
            return Some(r.clone());
        }
        if st.runners.len() >= inner.opts.max_loaded.max(1) {
            let lru = st
                .runners
                .iter()
                .filter(|(_, r)| inner.idle(r))
                .min_by_key(|(_, r)| *r.last_used.lock().unwrap())
                .map(|(k, _)| k.clone())?;
            if let Some(r) = st.runners.remove(&lru) {
                close(&r);
            }
        }
        let r = Arc::new(self.spawn(req, key.clone()));
        st.runners.insert(key.clone(), r.clone());
        Some(r)
    }

    /// Starts a runner's thread, which loads the model and serves its jobs.
    fn spawn(&self, req: &LoadRequest, key: Key) -> Runner {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = watch::channel(None);
        let mut load = req.load.clone();
        load.n_seq = self.inner.opts.num_parallel.max(1);
        std::thread::spawn(move || worker(load, rx, ready_tx));
        Runner {
            id: self.inner.next_id.fetch_add(1, Ordering::SeqCst),
            key,
            info: req.info.clone(),
            jobs: Mutex::new(Some(jobs)),
            slots: Arc::new(Semaphore::new(self.inner.opts.num_parallel.max(1))),
            ready,
            expires: Mutex::new(expiry(req.keep_alive)),
            last_used: Mutex::new(Instant::now()),
        }
    }
}

/// A runner's thread: loads the model, reports its context length (or
/// the error), then runs jobs until the queue closes (unload): up to
/// `load.n_seq` at once, by continuous batching ([`runner::Held::run_batched`]).
fn worker(
    load: InferOptions,
    rx: mpsc::Receiver<Job>,
    ready: watch::Sender<Option<Result<usize, String>>>,
) {
    let r = runner::hold(&load, &mut |h| {
        ready.send_replace(Some(Ok(h.n_ctx())));
        h.run_batched(&mut |wait| {
            let job = if wait {
                rx.recv().ok()?
            } else {
                rx.try_recv().ok()?
            };
            Some(match job {
                Job::Generate(w) => Task::Generate(Box::new(batch_job(*w))),
                Job::Embed {
                    inputs,
                    truncate,
                    done,
                } => Task::Embed(EmbedJob {
                    inputs,
                    truncate,
                    on_done: Box::new(move |r| {
                        let _ = done.send(r);
                    }),
                }),
            })
        });
        Ok(())
    });
    if let Err(e) = r {
        ready.send_replace(Some(Err(e)));
    }
}

/// A job whose text and end go to `w.reports`; a closed receiver or
/// `w.cancel` cancels it.
fn batch_job(w: Work) -> BatchJob {
    let (reports, cancel) = (w.reports, w.cancel);
    let (text_tx, done_tx) = (reports.clone(), reports.clone());
    BatchJob {
        opts: w.opts,
        chat: w.chat,
        context: w.context,
        cancel: Box::new(move || cancel.load(Ordering::SeqCst) || reports.is_closed()),
        on_event: Box::new(move |ev| {
            let (text, lp) = match ev {
                Event::Token { text, logprobs, .. } => (text, logprobs),
                Event::Text(text) => (text, None),
                Event::Notice(_) => return Ok(()),
                Event::PromptEnd(end) => {
                    return text_tx
                        .blocking_send(Report::PromptEnd(end.to_string()))
                        .map_err(|_| std::io::Error::other("the client went away"))
                }
            };
            if text.is_empty() && lp.is_none() {
                return Ok(());
            }
            text_tx
                .blocking_send(Report::Text(text.to_string(), lp.cloned().map(Box::new)))
                .map_err(|_| std::io::Error::other("the client went away"))
        }),
        on_done: Box::new(move |r| {
            let _ = done_tx.blocking_send(Report::Done(r));
        }),
    }
}

impl Inner {
    /// No request holds a slot.
    fn idle(&self, r: &Runner) -> bool {
        r.slots.available_permits() == self.opts.num_parallel.max(1)
    }

    /// Forgets `r` (if still loaded) and stops its thread.
    fn remove(&self, r: &Arc<Runner>) {
        let mut st = self.state.lock().unwrap();
        if st.runners.get(&r.key).is_some_and(|x| x.id == r.id) {
            st.runners.remove(&r.key);
        }
        close(r);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Unloads `r` if it is idle and its time is up.
    fn expire(&self, r: &Arc<Runner>) {
        let due = r.expires_at().is_some_and(|t| t <= SystemTime::now());
        if due && self.idle(r) {
            self.remove(r);
        }
    }
}

/// Closes a runner: waiting requests retry, its thread ends after its job.
fn close(r: &Runner) {
    r.slots.close();
    r.jobs.lock().unwrap().take();
}

fn expiry(k: KeepAlive) -> Option<SystemTime> {
    match k {
        KeepAlive::For(d) => Some(SystemTime::now() + d),
        KeepAlive::Forever => None,
    }
}

impl Lease {
    /// The loaded model.
    pub fn runner(&self) -> &Arc<Runner> {
        &self.runner
    }

    /// Queues `work` on the model's thread.
    pub fn submit(&self, work: Work) -> Result<(), String> {
        self.send(Job::Generate(Box::new(work)))
    }

    /// The embeddings of `inputs` (see [`runner::Held::embed`]), computed
    /// on the model's thread between the steps of its running jobs.
    pub async fn embed(&self, inputs: Vec<String>, truncate: bool) -> Result<Embedded, String> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Job::Embed {
            inputs,
            truncate,
            done,
        })?;
        rx.await
            .unwrap_or_else(|_| Err("the model runner stopped".into()))
    }

    fn send(&self, job: Job) -> Result<(), String> {
        let jobs = self.runner.jobs.lock().unwrap();
        match jobs.as_ref().map(|j| j.send(job).is_ok()) {
            Some(true) => Ok(()),
            _ => Err("the model runner stopped".into()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.permit.take());
        let r = &self.runner;
        *r.last_used.lock().unwrap() = Instant::now();
        *r.expires.lock().unwrap() = expiry(self.keep_alive);
        match self.keep_alive {
            KeepAlive::For(d) if d.is_zero() => self.inner.expire(r),
            KeepAlive::For(d) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let (inner, r) = (self.inner.clone(), r.clone());
                    rt.spawn(async move {
                        tokio::time::sleep(d).await;
                        inner.expire(&r);
                    });
                }
            }
            KeepAlive::Forever => {}
        }
        self.inner.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, ka: KeepAlive) -> LoadRequest {
        LoadRequest {
            load: InferOptions {
                model: path.into(),
                ..Default::default()
            },
            info: ModelInfo {
                name: path.into(),
                digest: String::new(),
                size: 0,
                details: serde_json::json!({}),
            },
            keep_alive: ka,
        }
    }

    #[tokio::test]
    async fn a_model_that_fails_to_load_is_an_error_and_not_kept() {
        let s = Scheduler::new(SchedOptions::default());
        let r = s
            .acquire(req("/nonexistent/model.gguf", KeepAlive::Forever))
            .await;
        assert!(matches!(r, Err(SchedError::Load(_))), "{:?}", r.err());
        assert!(s.loaded().is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_is_busy() {
        let s = Scheduler::new(SchedOptions {
            max_queue: 0,
            ..Default::default()
        });
        let r = s.acquire(req("/x.gguf", KeepAlive::Forever)).await;
        assert!(matches!(r, Err(SchedError::Busy)));
    }
}
