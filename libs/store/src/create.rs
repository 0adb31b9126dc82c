//! `create`: a model from a GGUF file (or an existing model) plus a Modelfile.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protocol::{media, ModelDoc};
use serde_json::Map;

use crate::manifest::{ConfigV2, Descriptor, Manifest, RootFs};
use crate::modelfile::{Command, Modelfile};
use crate::{fsutil, io_err, Digest, Error, Name, Result, Store};

/// Options of [`create()`].
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Relative paths in the Modelfile (FROM, ADAPTER) are taken from here.
    pub base_dir: Option<PathBuf>,
    /// Quantize the weights (an F16, BF16 or F32 model's) on the way in.
    pub quantize: Option<Quantize>,
}

/// A quantizer for [`CreateOptions::quantize`] (the store does not know
/// how: `engine::quantize` does).
#[derive(Clone)]
pub struct Quantize {
    /// The target type's name (`Q4_K_M`).
    pub to: String,
    /// Writes a quantized copy of the GGUF at the first path to the second,
    /// given the source's file type (`F16`); an error is one line.
    #[allow(clippy::type_complexity)]
    pub run:
        std::sync::Arc<dyn Fn(&Path, &Path, &str) -> std::result::Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for Quantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quantize").field("to", &self.to).finish()
    }
}

/// File types [`Quantize`] starts from.
const QUANTIZABLE: &[&str] = &["F32", "F16", "BF16"];

/// Creates `name` from a Modelfile: the GGUF (or the base model's layers),
/// then one layer per text (template, system, each license, params,
/// messages), a config blob filled from the GGUF header, and the manifest
/// last. Blobs already present are not written again. A GGUF that does not
/// parse is refused before anything is written.
pub fn create(
    store: &Store,
    name: &Name,
    modelfile: &Modelfile,
    opts: &CreateOptions,
) -> Result<ModelDoc> {
    let from = modelfile.from().ok_or_else(|| Error::Modelfile {
        line: 1,
        why: "no FROM instruction".into(),
    })?;
    let resolve_path = |p: &str| -> PathBuf {
        let p = Path::new(p);
        match &opts.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    };
    let from_path = resolve_path(from);
    let (mut layers, mut config) = if from_path.is_file() {
        let (layer, info) = model_layer(store, &from_path, opts.quantize.as_ref())?;
        (vec![layer], info.config())
    } else if looks_like_path(from) {
        return Err(Error::Other(format!("FROM {from}: no such GGUF file")));
    } else {
        let base = Name::parse(from)?;
        let (stored, _, bytes) = store.read_manifest(&base)?;
        let m = Manifest::parse(&bytes, &stored.short())?;
        let cfg_bytes = fsutil::read_small_file(&store.blob_path(&m.config.digest), 1 << 20)?;
        let cfg: ConfigV2 = serde_json::from_slice(&cfg_bytes).map_err(|e| Error::BadManifest {
            path: format!("config of {}", stored.short()),
            why: e.to_string(),
        })?;
        match &opts.quantize {
            None => (m.layers, cfg),
            Some(q) => {
                // the base's weights, quantized, in place of its model layer
                let at = m.layers.iter().position(|l| l.media_type == media::MODEL);
                let at = at.ok_or_else(|| {
                    Error::Other(format!("model {} has no weights layer", stored.short()))
                })?;
                let mut layers = m.layers;
                let (layer, info) =
                    model_layer(store, &store.blob_path(&layers[at].digest), Some(q))?;
                layers[at] = layer;
                (layers, info.config())
            }
        }
    };

    let set =
        |layers: &mut Vec<Descriptor>, media_type: &str, text: &str, replace: bool| -> Result<()> {
            let digest = store.write_blob(text.as_bytes())?;
            if replace {
                layers.retain(|l| l.media_type != media_type);
            }
            layers.push(Descriptor {
                media_type: media_type.into(),
                digest,
                size: text.len() as u64,
                extra: Map::new(),
            });
            Ok(())
        };
    for cmd in &modelfile.commands {
        if let Command::Adapter(p) = cmd {
            let path = resolve_path(p);
            GgufInfo::read(&path)?;
            let digest = import_file(store, &path)?;
            let size = std::fs::metadata(&path).map_err(io_err(&path))?.len();
            layers.push(Descriptor {
                media_type: media::ADAPTER.into(),
                digest,
                size,
                extra: Map::new(),
            });
        }
    }
    let last_text =
        |f: fn(&Command) -> Option<&String>| modelfile.commands.iter().rev().find_map(f);
    if let Some(t) = last_text(|c| {
        if let Command::Template(t) = c {
            Some(t)
        } else {
            None
        }
    }) {
        set(&mut layers, media::TEMPLATE, t, true)?;
    }
    if let Some(t) = last_text(|c| {
        if let Command::System(t) = c {
            Some(t)
        } else {
            None
        }
    }) {
        set(&mut layers, media::SYSTEM, t, true)?;
    }
    let licenses: Vec<&String> = modelfile
        .commands
        .iter()
        .filter_map(|c| {
            if let Command::License(t) = c {
                Some(t)
            } else {
                None
            }
        })
        .collect();
    if !licenses.is_empty() {
        layers.retain(|l| l.media_type != media::LICENSE);
        for t in licenses {
            set(&mut layers, media::LICENSE, t, false)?;
        }
    }
    if let Some(p) = modelfile.params_json()? {
        set(&mut layers, media::PARAMS, &p, true)?;
    }
    if let Some(m) = modelfile.messages_json() {
        set(&mut layers, media::MESSAGES, &m, true)?;
    }

    config.rootfs = Some(RootFs {
        kind: "layers".into(),
        diff_ids: layers.iter().map(|l| l.digest.clone()).collect(),
    });
    let config_bytes = serde_json::to_vec(&config).expect("config serializes");
    let config_digest = store.write_blob(&config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::DOCKER_MANIFEST.into()),
        config: Descriptor {
            media_type: media::DOCKER_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            extra: Map::new(),
        },
        layers,
        extra: Map::new(),
    };
    let bytes = manifest.to_bytes();
    store.write_manifest(name, &bytes)?;
    store.model_doc(name, &bytes)
}

/// The model layer of the GGUF at `src`: the file itself, or a quantized
/// copy of it (written beside the blobs, imported, removed).
fn model_layer(
    store: &Store,
    src: &Path,
    quantize: Option<&Quantize>,
) -> Result<(Descriptor, GgufInfo)> {
    let info = GgufInfo::read(src)?;
    let (digest, info) = match quantize {
        None => (import_file(store, src)?, info),
        Some(q) => {
            if !QUANTIZABLE.contains(&info.file_type.as_str()) {
                // Ollama's words
                return Err(Error::Unsupported(
                    "quantization is only supported for F16 and F32 models".into(),
                ));
            }
            fsutil::create_dirs_safely(store.root(), &store.blobs_dir())?;
            let tmp = fsutil::temp_path_for(&store.blobs_dir().join("quantize"));
            let _ = std::fs::remove_file(&tmp);
            let result = (|| -> Result<(Digest, GgufInfo)> {
                (q.run)(src, &tmp, &info.file_type).map_err(Error::Other)?;
                let out = GgufInfo::read(&tmp)?;
                Ok((import_file(store, &tmp)?, out))
            })();
            let _ = std::fs::remove_file(&tmp);
            result?
        }
    };
    let layer = Descriptor {
        media_type: media::MODEL.into(),
        digest,
        size: info.size,
        extra: Map::new(),
    };
    Ok((layer, info))
}

fn looks_like_path(s: &str) -> bool {
    s.contains('/') && (s.starts_with('.') || s.starts_with('/') || s.starts_with('~'))
        || s.ends_with(".gguf")
}

/// What create takes from a GGUF header.
struct GgufInfo {
    size: u64,
    arch: String,
    params: u64,
    file_type: String,
}

impl GgufInfo {
    fn read(path: &Path) -> Result<GgufInfo> {
        let err = |why: String| Error::Gguf {
            path: path.to_path_buf(),
            why,
        };
        let file = fsutil::open_regular(path)?;
        let size = file.metadata().map_err(io_err(path))?.len();
        // SAFETY: read-only private mapping; a file truncated under us can
        // fault, which is the same contract every mmap-based loader accepts.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let gg = gguf::parse(&map).map_err(|e| err(e.to_string()))?;
        let arch = gg
            .architecture()
            .ok_or_else(|| err("no general.architecture".into()))?
            .to_string();
        let file_type = gg
            .file_type()
            .map(|f| f.name().to_string())
            .unwrap_or_default();
        Ok(GgufInfo {
            size,
            arch,
            params: gg.parameter_count(),
            file_type,
        })
    }

    fn config(&self) -> ConfigV2 {
        ConfigV2 {
            model_format: "gguf".into(),
            model_family: self.arch.clone(),
            model_families: Some(vec![self.arch.clone()]),
            model_type: gguf::format_parameter_count(self.params),
            file_type: self.file_type.clone(),
            architecture: go_arch().into(),
            os: "linux".into(),
            rootfs: None,
            extra: Map::new(),
        }
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Copies a file into blobs/ while hashing it: temp file, fsync, rename to
/// `sha256-<hex>` (or dropped when that blob is already there).
fn import_file(store: &Store, src: &Path) -> Result<Digest> {
    fsutil::create_dirs_safely(store.root(), &store.blobs_dir())?;
    let mut input = fsutil::open_regular(src)?;
    let tmp = fsutil::temp_path_for(&store.blobs_dir().join("import"));
    let result = (|| {
        let mut out = fsutil::create_new(&tmp)?;
        let mut h = protocol::Hasher::new();
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(src)(e)),
            };
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(&tmp))?;
        }
        out.sync_all().map_err(io_err(&tmp))?;
        let digest = h.finish();
        if store.has_blob(&digest)? {
            std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        } else {
            fsutil::publish(&tmp, &store.blob_path(&digest))?;
        }
        Ok(digest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
