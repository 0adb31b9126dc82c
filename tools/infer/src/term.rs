//! The terminal side of `infer --chat`: a line editor with history on the
//! terminal (even when stdin carries pipeline documents), and Ctrl-C
//! stopping the answer being generated.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use runner::chat::{Input, LineSource};
use rustyline::config::{Behavior, Config};
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

/// Set by Ctrl-C while an answer is generated.
pub static INTERRUPT: AtomicBool = AtomicBool::new(false);

/// Whether a terminal is there to chat on: stdout is one and the
/// controlling terminal can be opened.
pub fn attached() -> bool {
    std::io::stdout().is_terminal()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .is_ok()
}

/// Makes Ctrl-C set [`INTERRUPT`] instead of ending the process. (At the
/// prompt the editor reads Ctrl-C as a key and clears the line.)
pub fn catch_ctrl_c() -> anyhow::Result<()> {
    ctrlc::set_handler(|| INTERRUPT.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")
}

/// A line editor on the controlling terminal, with history kept in
/// `$XDG_STATE_HOME/llpipe/chat_history` (else `~/.local/state/…`) unless
/// `LLPIPE_NOHISTORY` is set.
pub struct Term {
    ed: DefaultEditor,
    history: Option<PathBuf>,
}

impl Term {
    /// Opens `/dev/tty` (stdin may carry the pipeline documents).
    pub fn open() -> anyhow::Result<Term> {
        std::fs::File::open("/dev/tty").context("chatting needs a terminal: opening /dev/tty")?;
        let config = Config::builder()
            .behavior(Behavior::PreferTerm)
            .auto_add_history(true)
            .history_ignore_dups(true)?
            .max_history_size(1000)?
            .build();
        let mut ed = DefaultEditor::with_config(config).context("opening the line editor")?;
        let history = history_file();
        if let Some(h) = &history {
            let _ = ed.load_history(h); // none yet is fine
        }
        Ok(Term { ed, history })
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        if let Some(h) = &self.history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = self.ed.save_history(h);
        }
    }
}

impl LineSource for Term {
    fn read_line(&mut self, prompt: &str) -> std::io::Result<Input> {
        match self.ed.readline(prompt) {
            Ok(line) => Ok(Input::Line(line)),
            Err(ReadlineError::Interrupted) => Ok(Input::Interrupted),
            Err(ReadlineError::Eof) => Ok(Input::Eof),
            Err(ReadlineError::Io(e)) => Err(e),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

fn history_file() -> Option<PathBuf> {
    if std::env::var_os("LLPIPE_NOHISTORY").is_some() {
        return None;
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("llpipe/chat_history"))
}
