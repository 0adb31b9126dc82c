//! `resolve`: a model name → its pipeline document.

use protocol::{media, Blob, ModelDoc};
use serde_json::{Map, Value};

use crate::manifest::{Descriptor, Manifest};
use crate::{fsutil, Digest, Error, Name, Result, Store};

/// Text layers larger than this are not inlined (licenses run to ~30 KiB).
pub const MAX_INLINE_TEXT: u64 = 1 << 20;

/// Options of [`resolve()`].
#[derive(Clone, Debug, Default)]
pub struct ResolveOptions {
    /// Do not inline small text layers.
    pub no_inline: bool,
}

/// Finds `name` in the store (case-insensitively, as Ollama does) and
/// describes it: manifest, every blob with its path and presence, small
/// text layers inlined.
pub fn resolve(store: &Store, name: &Name, opts: &ResolveOptions) -> Result<ModelDoc> {
    let (stored, _path, bytes) = store.read_manifest(name)?;
    let mut doc = store.model_doc(&stored, &bytes)?;
    if opts.no_inline {
        doc.blobs_mut().for_each(|b| b.text = None);
    }
    Ok(doc)
}

impl Store {
    /// Builds the pipeline document of `name` from manifest bytes (read from
    /// the store or fetched from a registry): every digest validated, each
    /// blob's store path and presence, small present text layers inlined.
    pub fn model_doc(&self, name: &Name, manifest_bytes: &[u8]) -> Result<ModelDoc> {
        let manifest = Manifest::parse(manifest_bytes, &name.short())?;
        let value: Value =
            serde_json::from_slice(manifest_bytes).map_err(|e| Error::BadManifest {
                path: name.short(),
                why: e.to_string(),
            })?;
        Ok(ModelDoc {
            name: name.short(),
            parts: name.clone(),
            manifest_path: Some(self.manifest_path(name)),
            manifest_digest: Digest::of_bytes(manifest_bytes),
            manifest: value,
            manifest_text: None,
            config: Some(self.blob(&manifest.config)?),
            layers: manifest
                .layers
                .iter()
                .map(|l| self.blob(l))
                .collect::<Result<_>>()?,
            extra: Map::new(),
        })
    }

    fn blob(&self, d: &Descriptor) -> Result<Blob> {
        let path = self.blob_path(&d.digest);
        let present = self.has_blob(&d.digest)?;
        let text = if present && media::is_text(&d.media_type) && d.size <= MAX_INLINE_TEXT {
            let bytes = fsutil::read_small_file(&path, MAX_INLINE_TEXT)?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        } else {
            None
        };
        Ok(Blob {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            path: Some(path),
            present,
            text,
            extra: Map::new(),
        })
    }
}
