//! Manifests (Docker v2 schema2 and OCI image) and Ollama's config blob.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Digest, Error, Result};
use protocol::media;

/// Manifests larger than this are refused (Ollama's are about 1 KiB).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// A content descriptor: the config or a layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Validated digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Other fields (`from`, `annotations`, …), kept in order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A Docker v2 schema2 or OCI image manifest, in Ollama's field order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The manifest media type (absent in some OCI manifests).
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers.
    pub layers: Vec<Descriptor>,
    /// Other fields (`artifactType`, `annotations`, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Manifest {
    /// Parses and validates manifest bytes; `what` names it in errors.
    /// Every digest is validated, sizes must be non-negative integers, the
    /// schema version 2 and the media type, when given, a known one.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest> {
        let bad = |why: String| Error::BadManifest {
            path: what.to_string(),
            why,
        };
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(bad(format!(
                "{} bytes, more than {MAX_MANIFEST}",
                bytes.len()
            )));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.schema_version != 2 {
            return Err(bad(format!(
                "schemaVersion {} (only 2 is supported)",
                m.schema_version
            )));
        }
        if let Some(mt) = &m.media_type {
            if mt != media::DOCKER_MANIFEST && mt != media::OCI_MANIFEST {
                return Err(bad(format!("unsupported media type {mt}")));
            }
        }
        Ok(m)
    }

    /// Serializes as Ollama writes manifests: compact JSON in field order.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }

    /// The config followed by every layer.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// Config size plus layer sizes, as `ollama list` counts a model.
    pub fn total_size(&self) -> u64 {
        self.blobs().map(|d| d.size).sum()
    }
}

/// Ollama's config blob (`application/vnd.docker.container.image.v1+json`),
/// fields in Ollama's order; unknown fields kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigV2 {
    /// `gguf`.
    #[serde(default)]
    pub model_format: String,
    /// The architecture (`llama`, `gemma3`).
    #[serde(default)]
    pub model_family: String,
    /// Families, the architecture first.
    #[serde(default)]
    pub model_families: Option<Vec<String>>,
    /// Parameter count, human form (`135M`): shown as "parameter size".
    #[serde(default)]
    pub model_type: String,
    /// File type name (`Q4_1`): shown as "quantization level".
    #[serde(default)]
    pub file_type: String,
    /// Required by the image spec; Ollama writes the host's (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Required by the image spec (`linux`).
    #[serde(default)]
    pub os: String,
    /// The layers' digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootFs>,
    /// Other fields (`renderer`, `parser`, `requires`, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `rootfs` of the config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// One digest per layer.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLLAMA: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"from":"x"}]}"#;

    #[test]
    fn round_trips_ollama_bytes() {
        let m = Manifest::parse(OLLAMA.as_bytes(), "t").unwrap();
        assert_eq!(String::from_utf8(m.to_bytes()).unwrap(), OLLAMA);
        assert_eq!(m.total_size(), 0);
    }

    #[test]
    fn parses_oci_with_artifact_type() {
        let oci = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.docker.ai.model.config.v0.1+json","config":{"mediaType":"application/vnd.docker.ai.model.config.v0.1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":2},"layers":[{"mediaType":"application/vnd.docker.ai.gguf.v3","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":5,"annotations":{"a":"b"}}]}"#;
        let m = Manifest::parse(oci.as_bytes(), "t").unwrap();
        assert_eq!(
            m.extra["artifactType"],
            "application/vnd.docker.ai.model.config.v0.1+json"
        );
        assert_eq!(m.total_size(), 7);
    }

    #[test]
    fn rejects_bad_manifests() {
        for bad in [
            OLLAMA.replace("sha256:e3b0", "sha256:../../"),
            OLLAMA.replace("\"size\":0,\"from\"", "\"size\":-1,\"from\""),
            OLLAMA.replace("schemaVersion\":2", "schemaVersion\":1"),
            OLLAMA.replace("manifest.v2+json", "manifest.list.v2+json"),
            "[]".to_string(),
            String::new(),
        ] {
            assert!(Manifest::parse(bad.as_bytes(), "t").is_err(), "{bad}");
        }
        let big = vec![b' '; (MAX_MANIFEST + 1) as usize];
        assert!(Manifest::parse(&big, "t")
            .unwrap_err()
            .to_string()
            .contains("more than"));
    }
}
