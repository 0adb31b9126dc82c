//! The wire format between stages, defined once.
//!
//! Every stage (`resolve`, `fetch-blob`, `verify`, `gguf-inspect`, `infer`, …)
//! reads and writes **JSON Lines**: one JSON object per line on stdout, logs
//! and progress on stderr. Each line is an envelope:
//!
//! ```text
//! {"type":"model","data":{ ... a ModelDoc ... }}
//! ```
//!
//! * `type` says what `data` holds. Types defined today: `"model"`
//!   ([`ModelDoc`]). **Types may be added**: a stage passes lines whose type it
//!   does not handle through unchanged.
//! * Inside a known type, fields a stage does not know are preserved (every
//!   struct keeps them in `extra`) and written back unchanged, so stages
//!   compose in any order.
//!
//! ## `model` — one model and its blobs
//!
//! | field | meaning |
//! |---|---|
//! | `name` | the short name as `ollama list` shows it (`smollm2:135m`) |
//! | `parts` | `{host, namespace, model, tag}` after defaults |
//! | `manifest_path` | where the manifest is (or will be) in the store |
//! | `manifest_digest` | `sha256:` of the manifest's exact bytes |
//! | `manifest` | the manifest, parsed |
//! | `manifest_text` | the manifest's exact bytes as a string; present when the manifest is not in the store yet (fetched from a registry) |
//! | `config` | the config blob, as a [`Blob`] |
//! | `layers` | every layer, as a [`Blob`] |
//!
//! A [`Blob`]: `media_type`, `digest`, `size`, `path` (where it lives in the
//! store), `present` (is it there now), and for small text layers
//! (template, system, params, license, messages) `text`, its content.
//!
//! Example (shortened):
//!
//! ```text
//! {"type":"model","data":{"name":"smollm2:135m","parts":{"host":"registry.ollama.ai","namespace":"library","model":"smollm2","tag":"135m"},"manifest_path":"/root/.ollama/models/manifests/registry.ollama.ai/library/smollm2/135m","manifest_digest":"sha256:…","manifest":{…},"config":{"media_type":"application/vnd.docker.container.image.v1+json","digest":"sha256:…","size":412,"path":"…","present":true},"layers":[{"media_type":"application/vnd.ollama.image.model","digest":"sha256:b179c952…","size":98362432,"path":"…","present":true}]}}
//! ```
//!
//! ```
//! use protocol::{Line, ModelDoc};
//! let line = r#"{"type":"model","data":{"name":"m:t","parts":{"host":"h","namespace":"n","model":"m","tag":"t"},"manifest_digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","manifest":{},"layers":[],"added_by_a_later_stage":1}}"#;
//! let parsed = Line::parse(line).unwrap();
//! let doc = parsed.model().unwrap().unwrap();
//! assert_eq!(doc.name, "m:t");
//! // unknown fields survive a round trip
//! assert!(Line::Model(doc).to_json().contains("added_by_a_later_stage"));
//! ```
#![deny(missing_docs)]

mod digest;
mod name;

use std::io::{self, BufRead, Write};
use std::path::PathBuf;

pub use digest::{sha256_reader, Algorithm, Digest, Hasher};
pub use name::Name;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Media types found in Ollama and OCI manifests.
pub mod media {
    /// Docker v2 schema2 manifest (what Ollama writes).
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// Ollama's config blob.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// The GGUF weights.
    pub const MODEL: &str = "application/vnd.ollama.image.model";
    /// A multimodal projector (GGUF).
    pub const PROJECTOR: &str = "application/vnd.ollama.image.projector";
    /// A LoRA adapter (GGUF).
    pub const ADAPTER: &str = "application/vnd.ollama.image.adapter";
    /// Go template text.
    pub const TEMPLATE: &str = "application/vnd.ollama.image.template";
    /// System prompt text.
    pub const SYSTEM: &str = "application/vnd.ollama.image.system";
    /// Runtime options, JSON.
    pub const PARAMS: &str = "application/vnd.ollama.image.params";
    /// License text.
    pub const LICENSE: &str = "application/vnd.ollama.image.license";
    /// Seed conversation, JSON array of messages.
    pub const MESSAGES: &str = "application/vnd.ollama.image.messages";
    /// Docker Model Runner's GGUF layer.
    pub const DOCKER_AI_GGUF: &str = "application/vnd.docker.ai.gguf.v3";

    /// Whether a layer of this type is small text worth inlining.
    pub fn is_text(media_type: &str) -> bool {
        [TEMPLATE, SYSTEM, PARAMS, LICENSE, MESSAGES].contains(&media_type)
    }

    /// Whether a layer of this type holds the model weights.
    pub fn is_model(media_type: &str) -> bool {
        media_type == MODEL || media_type == DOCKER_AI_GGUF
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A digest string that is not `sha256:` + 64 lowercase hex digits.
    #[error("invalid digest {0:?}: expected sha256: followed by 64 lowercase hex digits")]
    BadDigest(String),
    /// A model name that breaks the naming rules.
    #[error("invalid model name {name:?}: {why}")]
    BadName {
        /// The name as given (truncated).
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// A line that is not a JSON object with `type` and `data`.
    #[error("invalid pipeline line {line}: {why}")]
    BadLine {
        /// 1-based line number, 0 when unknown.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// Reading or writing the stream.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One blob of a model: the config or a layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Blob {
    /// Media type from the manifest.
    pub media_type: String,
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes, from the manifest.
    pub size: u64,
    /// Where the blob lives (or will live) in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Whether the blob is in the store now.
    #[serde(default)]
    pub present: bool,
    /// The content of a small text layer (template, system, params, license, messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Fields this version does not know, kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One model: its name, manifest and blobs. The `data` of a `"model"` line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelDoc {
    /// Short name as `ollama list` shows it.
    pub name: String,
    /// The name's parts after defaults.
    pub parts: Name,
    /// Where the manifest is, or will be, in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_path: Option<PathBuf>,
    /// sha256 of the manifest's exact bytes.
    pub manifest_digest: Digest,
    /// The manifest, parsed.
    pub manifest: Value,
    /// The manifest's exact bytes, when it is not in the store yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_text: Option<String>,
    /// The config blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Blob>,
    /// The layers, in manifest order.
    #[serde(default)]
    pub layers: Vec<Blob>,
    /// Fields this version does not know, kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ModelDoc {
    /// The config blob (if any) followed by every layer.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.config.iter().chain(self.layers.iter())
    }

    /// Mutable access to the config blob and every layer.
    pub fn blobs_mut(&mut self) -> impl Iterator<Item = &mut Blob> {
        self.config.iter_mut().chain(self.layers.iter_mut())
    }

    /// The first layer of the given media type.
    pub fn layer(&self, media_type: &str) -> Option<&Blob> {
        self.layers.iter().find(|l| l.media_type == media_type)
    }

    /// The weights layer (Ollama's model layer or Docker's GGUF layer).
    pub fn model_layer(&self) -> Option<&Blob> {
        self.layers.iter().find(|l| media::is_model(&l.media_type))
    }
}

/// One line of the stream.
#[derive(Clone, Debug, PartialEq)]
// A stream carries a handful of lines; boxing the document would only make
// every match on it noisier.
#[allow(clippy::large_enum_variant)]
pub enum Line {
    /// A `"model"` document.
    Model(ModelDoc),
    /// Any other type, kept verbatim (the whole object), to pass through.
    Other(Value),
}

impl Line {
    /// Parses one line. A `"model"` line whose data does not fit
    /// [`ModelDoc`] is an error; other types are kept as they are.
    pub fn parse(text: &str) -> Result<Line, Error> {
        let bad = |why: String| Error::BadLine { line: 0, why };
        let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let Some(obj) = value.as_object() else {
            return Err(bad("not a JSON object".into()));
        };
        match obj.get("type").and_then(Value::as_str) {
            Some("model") => {
                let data = obj
                    .get("data")
                    .cloned()
                    .ok_or_else(|| bad("model line without data".into()))?;
                let doc =
                    serde_json::from_value(data).map_err(|e| bad(format!("model data: {e}")))?;
                Ok(Line::Model(doc))
            }
            Some(_) => Ok(Line::Other(value)),
            None => Err(bad("no \"type\" field".into())),
        }
    }

    /// The model document, if this is one.
    pub fn model(self) -> Option<Result<ModelDoc, Error>> {
        match self {
            Line::Model(d) => Some(Ok(d)),
            Line::Other(_) => None,
        }
    }

    /// The line as compact JSON, without the newline.
    pub fn to_json(&self) -> String {
        match self {
            Line::Model(doc) => {
                let mut obj = Map::new();
                obj.insert("type".into(), Value::from("model"));
                obj.insert(
                    "data".into(),
                    serde_json::to_value(doc).expect("ModelDoc serializes"),
                );
                Value::Object(obj).to_string()
            }
            Line::Other(v) => v.to_string(),
        }
    }
}

/// Reads pipeline lines from `r`, skipping blank ones; errors carry the line number.
pub fn read_lines<R: BufRead>(r: R) -> impl Iterator<Item = Result<Line, Error>> {
    r.lines().enumerate().filter_map(|(i, l)| match l {
        Err(e) => Some(Err(Error::Io(e))),
        Ok(l) if l.trim().is_empty() => None,
        Ok(l) => Some(Line::parse(&l).map_err(|e| match e {
            Error::BadLine { why, .. } => Error::BadLine { line: i + 1, why },
            e => e,
        })),
    })
}

/// Writes one line and flushes, so the next stage can start at once.
pub fn write_line<W: Write>(w: &mut W, line: &Line) -> io::Result<()> {
    let mut s = line.to_json();
    s.push('\n');
    w.write_all(s.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins what we emit: our own output must deserialize with
    /// `deny_unknown_fields` into this mirror of [`ModelDoc`].
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        name: String,
        parts: Name,
        manifest_path: Option<PathBuf>,
        manifest_digest: Digest,
        manifest: Value,
        manifest_text: Option<String>,
        config: Option<StrictBlob>,
        layers: Vec<StrictBlob>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct StrictBlob {
        media_type: String,
        digest: Digest,
        size: u64,
        path: Option<PathBuf>,
        present: bool,
        text: Option<String>,
    }

    fn doc() -> ModelDoc {
        let d = Digest::of_bytes(b"x");
        ModelDoc {
            name: "m:t".into(),
            parts: Name::parse("m:t").unwrap(),
            manifest_path: Some("/s/manifests/x".into()),
            manifest_digest: d.clone(),
            manifest: serde_json::json!({"schemaVersion":2}),
            manifest_text: None,
            config: Some(Blob {
                media_type: media::DOCKER_CONFIG.into(),
                digest: d.clone(),
                size: 1,
                path: None,
                present: false,
                text: None,
                extra: Map::new(),
            }),
            layers: vec![Blob {
                media_type: media::SYSTEM.into(),
                digest: d,
                size: 1,
                path: Some("/s/blobs/x".into()),
                present: true,
                text: Some("x".into()),
                extra: Map::new(),
            }],
            extra: Map::new(),
        }
    }

    #[test]
    fn emits_only_documented_fields() {
        let json = Line::Model(doc()).to_json();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["type"], "model");
        let _: Strict = serde_json::from_value(v["data"].clone()).unwrap();
        assert!(!json.contains('\n'));
    }

    #[test]
    fn passes_unknown_fields_and_types_through() {
        let mut v: Value = serde_json::from_str(&Line::Model(doc()).to_json()).unwrap();
        v["data"]["future"] = serde_json::json!({"k": [1, 2]});
        v["data"]["layers"][0]["checked"] = Value::Bool(true);
        let text = v.to_string();
        let line = Line::parse(&text).unwrap();
        let back: Value = serde_json::from_str(&line.to_json()).unwrap();
        assert_eq!(back["data"]["future"], v["data"]["future"]);
        assert_eq!(back["data"]["layers"][0]["checked"], Value::Bool(true));

        let other = r#"{"type":"token","data":{"text":"hi"},"x":1}"#;
        assert_eq!(Line::parse(other).unwrap().to_json(), other);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let input = "\n{\"type\":\"model\",\"data\":{}}\n";
        let err = read_lines(input.as_bytes()).next().unwrap().unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(Line::parse("[1]").is_err());
        assert!(Line::parse("{\"data\":1}").is_err());
        let bad_digest = Line::Model(doc())
            .to_json()
            .replace("sha256:", "sha256:../");
        assert!(Line::parse(&bad_digest).is_err());
    }
}
