//! The terminal side of `infer --chat`: a line editor with history on the
//! terminal (even when stdin carries pipeline documents), and Ctrl-C
//! stopping the answer being generated.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
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

/// A line editor on the controlling terminal, with the input history of
/// earlier runs (see [`History`]).
pub struct Term {
    ed: DefaultEditor,
    history: Option<History>,
}

impl Term {
    /// Opens `/dev/tty` (stdin may carry the pipeline documents).
    pub fn open() -> anyhow::Result<Term> {
        std::fs::File::open("/dev/tty").context("chatting needs a terminal: opening /dev/tty")?;
        let mut ed = editor()?;
        let history = History::new(
            std::env::var_os("HOME"),
            std::env::var_os("OLLAMA_NOHISTORY"),
        );
        if let Some(h) = &history {
            h.load(&mut ed);
        }
        Ok(Term { ed, history })
    }
}

fn editor() -> anyhow::Result<DefaultEditor> {
    let config = Config::builder()
        .behavior(Behavior::PreferTerm)
        .history_ignore_dups(true)?
        .max_history_size(HISTORY_LIMIT)?
        .build();
    DefaultEditor::with_config(config).context("opening the line editor")
}

impl LineSource for Term {
    fn read_line(&mut self, prompt: &str) -> std::io::Result<Input> {
        match self.ed.readline(prompt) {
            Ok(line) => {
                remember(&mut self.ed, self.history.as_ref(), &line);
                Ok(Input::Line(line))
            }
            Err(ReadlineError::Interrupted) => Ok(Input::Interrupted),
            Err(ReadlineError::Eof) => Ok(Input::Eof),
            Err(ReadlineError::Io(e)) => Err(e),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Adds a typed line to the editor's history (up-arrow) and, when it is
/// new there, to the history file at once, so that a crash loses nothing.
fn remember(ed: &mut DefaultEditor, history: Option<&History>, line: &str) {
    if line.trim().is_empty() {
        return;
    }
    if ed.add_history_entry(line).unwrap_or(false) {
        if let Some(h) = history {
            let _ = h.append(line); // a read-only home does not end the chat
        }
    }
}

/// Lines kept, as Ollama's REPL keeps them.
const HISTORY_LIMIT: usize = 100;

/// The REPL's input history: `$HOME/.ollama/history`, one line per entry,
/// the file Ollama's REPL reads and writes (and in its format: plain lines,
/// not rustyline's `#V2` one). It is under `$HOME` even when
/// `OLLAMA_MODELS` puts the store elsewhere. `OLLAMA_NOHISTORY` set to a
/// true value (or to anything that is not a boolean, as Ollama reads it)
/// turns it off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    path: PathBuf,
}

impl History {
    /// The history for this `HOME` and `OLLAMA_NOHISTORY` (passed in, so
    /// tests need not touch the process environment); `None` when off or
    /// when there is no home.
    pub fn new(home: Option<OsString>, nohistory: Option<OsString>) -> Option<History> {
        let off = nohistory
            .map(|v| v.to_string_lossy().into_owned())
            .filter(|v| !v.is_empty())
            .is_some_and(|v| !matches!(v.as_str(), "0" | "f" | "F" | "false" | "FALSE" | "False"));
        let home = home.filter(|h| !h.is_empty())?;
        (!off).then(|| History {
            path: Path::new(&home).join(".ollama").join("history"),
        })
    }

    /// Loads the last [`HISTORY_LIMIT`] lines into the editor (no file yet
    /// is fine), and trims a longer file to them, as Ollama's REPL keeps it.
    pub fn load(&self, ed: &mut DefaultEditor) {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return;
        };
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let keep = &lines[lines.len().saturating_sub(HISTORY_LIMIT)..];
        for l in keep {
            let _ = ed.add_history_entry(*l);
        }
        if keep.len() < lines.len() {
            let tmp = self.path.with_extension("tmp");
            let body: String = keep.iter().map(|l| format!("{l}\n")).collect();
            let written = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(body.as_bytes()));
            if written.is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
    }

    /// Appends one line to the file, creating `~/.ollama` if needed.
    pub fn append(&self, line: &str) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600) // as Ollama's: prompts can be private
            .open(&self.path)?;
        f.write_all(format!("{}\n", line.replace('\n', " ")).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(ed: &DefaultEditor) -> Vec<String> {
        ed.history().iter().cloned().collect()
    }

    #[test]
    fn lines_typed_in_one_run_come_back_in_the_next() {
        let home = tempfile::tempdir().unwrap();
        let h = History::new(Some(home.path().into()), None).unwrap();
        assert_eq!(h.path, home.path().join(".ollama/history"));

        let mut first = editor().unwrap();
        h.load(&mut first); // no file yet
        for line in [
            "hello",
            "hello",
            "  ",
            "/set verbose",
            "why is the sky blue?",
        ] {
            remember(&mut first, Some(&h), line);
        }
        drop(first);
        let text = std::fs::read_to_string(home.path().join(".ollama/history")).unwrap();
        assert_eq!(text, "hello\n/set verbose\nwhy is the sky blue?\n");

        let mut second = editor().unwrap();
        h.load(&mut second);
        assert_eq!(
            entries(&second),
            ["hello", "/set verbose", "why is the sky blue?"]
        );
        remember(&mut second, Some(&h), "/bye");
        let mut third = editor().unwrap();
        h.load(&mut third);
        assert_eq!(entries(&third).last().map(String::as_str), Some("/bye"));
    }

    #[test]
    fn history_is_capped_and_reads_ollamas_file() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".ollama")).unwrap();
        let file = home.path().join(".ollama/history");
        let body: String = (0..250).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&file, body).unwrap();
        let h = History::new(Some(home.path().into()), Some("0".into())).unwrap();
        let mut ed = editor().unwrap();
        h.load(&mut ed);
        let got = entries(&ed);
        assert_eq!(got.len(), HISTORY_LIMIT);
        assert_eq!(got[0], "line 150");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().lines().count(),
            HISTORY_LIMIT
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn ollama_nohistory_turns_it_off() {
        let home = || Some(OsString::from("/home/u"));
        for off in ["1", "true", "yes"] {
            assert_eq!(History::new(home(), Some(off.into())), None, "{off}");
        }
        for on in ["0", "false", ""] {
            assert!(History::new(home(), Some(on.into())).is_some(), "{on:?}");
        }
        assert!(History::new(home(), None).is_some());
        assert_eq!(History::new(None, None), None);
    }
}
