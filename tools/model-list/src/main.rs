//! `model-list`: the models in the store, like `ollama list`.

use std::io::Write;

use clap::Parser;
use cli::Outcome;
use store::Store;

/// List the models in the store: NAME, ID (first 12 hex digits of the
/// manifest digest), SIZE and MODIFIED, most recent first, like `ollama list`.
#[derive(Parser, Debug)]
#[command(
    name = "model-list",
    version,
    after_help = "Exit status: 0 ok, 2 I/O error or unreadable manifest."
)]
struct Args {
    /// Print JSON Lines ({"type":"listing","data":{name, id, digest, size, modified_at}}) instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    cli::main(|| {
        let args: Args = cli::parse_args();
        let store = Store::from_env()?;
        let entries = store::list(&store)?;
        let mut out = std::io::stdout().lock();
        if args.json {
            for e in &entries {
                let modified = time::OffsetDateTime::from(e.modified)
                    .format(&time::format_description::well_known::Rfc3339)?;
                let data = serde_json::json!({"name": e.name.short(), "id": e.digest.short(), "digest": e.digest, "size": e.size, "modified_at": modified});
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"type": "listing", "data": data})
                )?;
            }
            return Ok(Outcome::Ok);
        }
        let width = entries
            .iter()
            .map(|e| e.name.short().len())
            .max()
            .unwrap_or(0)
            .max(4)
            + 4;
        writeln!(out, "{:<width$}{:<16}{:<10}MODIFIED", "NAME", "ID", "SIZE")?;
        let now = std::time::SystemTime::now();
        for e in &entries {
            let ago = now.duration_since(e.modified).unwrap_or_default();
            writeln!(
                out,
                "{:<width$}{:<16}{:<10}{}",
                e.name.short(),
                e.digest.short(),
                human_size(e.size),
                human_ago(ago)
            )?;
        }
        Ok(Outcome::Ok)
    })
}

/// Ollama's size format: decimal units, e.g. "98 MB", "1.3 GB".
fn human_size(b: u64) -> String {
    let (v, unit) = match b {
        b if b >= 1_000_000_000 => (b as f64 / 1e9, "GB"),
        b if b >= 1_000_000 => (b as f64 / 1e6, "MB"),
        b if b >= 1_000 => (b as f64 / 1e3, "KB"),
        b => return format!("{b} B"),
    };
    if v >= 10.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

fn human_ago(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = match s {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        86_400..=604_799 => (s / 86_400, "day"),
        604_800..=2_591_999 => (s / 604_800, "week"),
        _ => (s / 2_592_000, "month"),
    };
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_like_ollama() {
        assert_eq!(super::human_size(98_362_432 + 900), "98 MB");
        assert_eq!(super::human_size(1_300_000_000), "1.3 GB");
        assert_eq!(super::human_size(512), "512 B");
    }
}
