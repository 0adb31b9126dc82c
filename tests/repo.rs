//! Checks on the repository itself: man pages up to date, dependency boundaries.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tools() -> Vec<String> {
    let mut t: Vec<String> = std::fs::read_dir(root().join("tools"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    t.sort();
    t
}

/// Every man page equals what the tool's clap definition renders now
/// (regenerate with scripts/gen-man.sh).
#[test]
fn man_pages_are_fresh() {
    for tool in tools() {
        let out = Command::new(pipeline_tests::bin(&tool))
            .arg("--generate-man")
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool} --generate-man failed");
        let page = root().join("man").join(format!("{tool}.1"));
        let on_disk = std::fs::read(&page).unwrap_or_default();
        assert!(
            on_disk == out.stdout,
            "{} is stale or missing: run scripts/gen-man.sh",
            page.display()
        );
    }
}

/// The normal and build dependencies of package `krate`, one per line
/// (`name vX.Y.Z …`), as `cargo tree` prints them.
fn dependency_tree(krate: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal,build",
            "-p",
            krate,
            "--prefix",
            "none",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree -p {krate}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The store and network tools never link ggml (or llama.cpp).
#[test]
fn store_tools_do_not_link_ggml() {
    for tool in [
        "resolve",
        "verify",
        "fetch-blob",
        "model-create",
        "model-list",
        "model-remove",
        "model-copy",
        "model-export",
        "model-import",
        "model-push",
        "gguf-inspect",
    ] {
        let tree = dependency_tree(tool);
        for banned in ["llama-cpp-sys-2", "ggml ", "engine ", "models ", "runner "] {
            assert!(
                !tree.lines().any(|l| l.starts_with(banned)),
                "{tool} depends on {banned}:\n{tree}"
            );
        }
    }
}

/// Only `serve` knows about HTTP serving: no library below it (and no
/// other tool) links the server stack.
#[test]
fn only_serve_links_the_http_server() {
    let mut crates: Vec<String> = [
        "protocol", "cli", "store", "gguf", "registry", "ggml", "engine", "models", "runner",
        "template",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    crates.extend(tools().into_iter().filter(|t| t != "serve"));
    for krate in crates {
        let tree = dependency_tree(&krate);
        for banned in ["axum ", "hyper ", "tokio ", "serve "] {
            assert!(
                !tree.lines().any(|l| l.starts_with(banned)),
                "{krate} depends on {banned}:\n{tree}"
            );
        }
    }
}
