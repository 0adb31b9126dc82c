//! What every tool's `main` shares: the exit-code contract, quiet SIGPIPE,
//! reading pipeline documents from stdin, and man pages from clap.
//!
//! Exit codes: 0 ok, 1 a negative answer (e.g. `verify` found corruption),
//! 2 usage, I/O or network error. A closed stdout (`| head`) ends quietly with 0.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     cli::main(|| {
//!         // ... parse args, call one library function, write stdout ...
//!         Ok(cli::Outcome::Ok)
//!     })
//! }
//! ```
#![deny(missing_docs)]

use std::io::{self, BufRead, IsTerminal, Write};
use std::process::ExitCode;

pub use protocol;

pub mod cpu;
pub mod placement;

/// How a tool's run ended, when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Ok,
    /// Exit 1: the answer is negative (corrupt blob, missing model…).
    Negative,
}

/// Runs a tool body under the exit-code contract: `Ok` → 0, `Negative` → 1,
/// an error → its `{:#}` chain on stderr as one line and 2; a broken pipe on
/// stdout anywhere in the chain → 0 silently. (Before `main`, a binary built
/// for instruction sets this machine lacks has exited 2 naming them: [`cpu`].)
pub fn main(body: impl FnOnce() -> anyhow::Result<Outcome>) -> ExitCode {
    let tool = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "tool".into());
    // Never true: the start-up check exits first. Calling it links the check.
    let missing = cpu::missing_features();
    if !missing.is_empty() {
        let _ = writeln!(io::stderr(), "{tool}: error: this CPU lacks {missing}");
        return ExitCode::from(2);
    }
    match body() {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Negative) => ExitCode::from(1),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            let _ = writeln!(io::stderr(), "{tool}: error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Whether an error chain holds a broken-pipe I/O error.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
        || e.chain().any(|c| {
            matches!(c.downcast_ref::<protocol::Error>(), Some(protocol::Error::Io(io)) if io.kind() == io::ErrorKind::BrokenPipe)
        })
}

/// Parses arguments with clap; on a usage error prints clap's message and
/// exits 2 (clap's own code), `--help`/`--version` exit 0.
///
/// A lone hidden argument `--generate-man` prints the tool's man page
/// (roff, from the same clap definition as `--help`) and exits 0; `man/` is
/// generated that way by `scripts/gen-man.sh` and checked by a test.
pub fn parse_args<P: clap::CommandFactory + clap::FromArgMatches>() -> P {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 2 && args[1] == "--generate-man" {
        let page = man_page(P::command()).expect("render man page");
        let _ = io::stdout().write_all(&page);
        std::process::exit(0);
    }
    let matches = P::command().get_matches();
    P::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Whether stdin is a pipe or file (not a terminal): then documents are read from it.
pub fn stdin_has_data() -> bool {
    !io::stdin().is_terminal()
}

/// Reads every pipeline line from stdin.
pub fn stdin_lines() -> impl Iterator<Item = Result<protocol::Line, protocol::Error>> {
    protocol::read_lines(io::stdin().lock())
}

/// Non-blank, trimmed text lines of stdin (names, paths, digests).
pub fn stdin_words() -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for l in io::stdin().lock().lines() {
        let l = l?;
        let t = l.trim();
        if !t.is_empty() {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// Renders the man page of a clap command (the same definition `--help` uses).
pub fn man_page(cmd: clap::Command) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    Ok(out)
}

/// Whether stderr is a terminal (progress bars only then).
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}
