//! Remote resolve: name → manifest from the registry → pipeline document.

use protocol::{media, ModelDoc, Name};
use serde_json::{json, Value};
use url::Url;

use crate::client::{base_for_host, read_capped, Body, Session};
use crate::{Error, RemoteOptions, Result};

/// Largest manifest accepted, in bytes as received (never decompressed).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest descriptor size accepted (1 TiB).
pub(crate) const MAX_BLOB_SIZE: u64 = 1 << 40;

/// Parses a model name that may start with `http://` or `https://`.
///
/// Returns the name and, when a scheme was given, the registry base URL
/// (`http://127.0.0.1:5000`) to put in [`RemoteOptions::base_url`].
/// `http://host/ns/model:tag` therefore implies an insecure registry.
pub fn parse_name(arg: &str) -> Result<(Name, Option<String>)> {
    for scheme in ["http", "https"] {
        let prefix = format!("{scheme}://");
        if arg.len() >= prefix.len() && arg[..prefix.len()].eq_ignore_ascii_case(&prefix) {
            let rest = &arg[prefix.len()..];
            // After a scheme the first part is always the host: `http://h/m` is h/library/m.
            let name = match rest.matches('/').count() {
                1 => {
                    let (h, m) = rest.split_once('/').unwrap_or((rest, ""));
                    Name::parse(&format!("{h}/{}/{m}", Name::DEFAULT_NAMESPACE))?
                }
                _ => Name::parse(rest)?,
            };
            if !rest.contains('/') {
                return Err(Error::Name(protocol::Error::BadName {
                    name: arg.chars().take(200).collect(),
                    why: "a name with a scheme needs a host: scheme://host[:port]/[namespace/]model[:tag]".into(),
                }));
            }
            let base = format!("{scheme}://{}", name.host);
            return Ok((name, Some(base)));
        }
    }
    Ok((Name::parse(arg)?, None))
}

/// The session for a model: base URL from `base_url`, else from the name's host.
pub(crate) fn session_for(
    name: &Name,
    base_url: Option<&str>,
    opts: &RemoteOptions,
    scope: String,
) -> Result<Session> {
    let base = match base_url {
        Some(b) => {
            let u = Url::parse(b).map_err(|e| Error::Auth(format!("registry URL {b:?}: {e}")))?;
            if u.path() != "/" || u.query().is_some() || u.host_str().is_none() {
                return Err(Error::Auth(format!(
                    "registry URL {b:?} must be scheme://host[:port]"
                )));
            }
            u
        }
        None => base_for_host(&name.host, opts.insecure)?,
    };
    Session::new(base, opts, scope)
}

/// Fetches `name`'s manifest from its registry and describes it: the
/// document [`store::Store::model_doc`] builds, with `manifest_text` set to
/// the exact bytes, `present` flags from the store, and `extra.registry`
/// holding the base URL. Nothing is written to the store.
///
/// The manifest is capped at [`MAX_MANIFEST`] bytes and must be a Docker v2
/// or OCI image manifest whose `mediaType` matches the `Content-Type`; every
/// digest is validated before the document exists.
pub fn resolve_remote(name: &Name, opts: &RemoteOptions) -> Result<ModelDoc> {
    let what = format!("model {}", name.short());
    let scope = format!("repository:{}:pull", name.repository());
    let session = session_for(name, opts.base_url.as_deref(), opts, scope)?;
    let url = session.url(&format!("v2/{}/manifests/{}", name.repository(), name.tag))?;
    let accept = format!("{}, {}", media::DOCKER_MANIFEST, media::OCI_MANIFEST);
    let resp = session.request("GET", url, &[("Accept", accept)], &Body::None, &what)?;
    if resp.status() != 200 {
        return Err(session.status_error(resp, &what));
    }
    let content_type = resp
        .header("content-type")
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let header_digest = resp.header("docker-content-digest").map(str::to_string);
    let bytes = read_capped(
        resp,
        MAX_MANIFEST,
        &format!("{what}: manifest from {}", session.name()),
    )?;
    check_manifest(&bytes, content_type.as_deref(), &what)?;
    let digest = protocol::Digest::of_bytes(&bytes);
    if let Some(h) = header_digest {
        if h != digest.to_string() {
            return Err(Error::BadManifest {
                what,
                why: format!("Docker-Content-Digest {h} does not match the body's {digest}"),
            });
        }
    }
    let store = match &opts.store {
        Some(s) => s.clone(),
        None => store::Store::from_env()?,
    };
    let mut doc = store.model_doc(name, &bytes)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::BadManifest {
        what,
        why: "not UTF-8".into(),
    })?;
    doc.manifest_text = Some(text);
    doc.extra.insert(
        "registry".into(),
        json!({"url": session.name(), "insecure": session.insecure}),
    );
    Ok(doc)
}

/// The checks made before any document exists (HOSTILE rows 1, 3, 6, 7, 12).
pub(crate) fn check_manifest(bytes: &[u8], content_type: Option<&str>, what: &str) -> Result<()> {
    let bad = |why: String| Error::BadManifest {
        what: what.to_string(),
        why,
    };
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(bad(format!(
            "{} bytes, more than {MAX_MANIFEST}",
            bytes.len()
        )));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    if obj.contains_key("manifests") {
        return Err(bad(
            "an index (\"manifests\") is not supported; ambiguous or multi-platform manifest"
                .into(),
        ));
    }
    let mt = obj
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no mediaType".into()))?;
    if mt != media::DOCKER_MANIFEST && mt != media::OCI_MANIFEST {
        return Err(bad(format!("unsupported mediaType {mt}")));
    }
    if let Some(ct) = content_type {
        if ct != mt {
            return Err(bad(format!(
                "mediaType {mt} differs from Content-Type {ct}"
            )));
        }
    }
    // digests, schemaVersion, non-negative integer sizes
    let m = store::Manifest::parse(bytes, what)?;
    let mut seen: Vec<(&protocol::Digest, u64)> = Vec::new();
    for d in m.blobs() {
        if d.size > MAX_BLOB_SIZE {
            return Err(bad(format!(
                "blob {} declares {} bytes, more than {MAX_BLOB_SIZE}",
                d.digest, d.size
            )));
        }
        if (d.size == 0) != (d.digest == protocol::Digest::of_bytes(b"")) {
            return Err(bad(format!(
                "blob {} with size {}: only the empty blob has size 0",
                d.digest, d.size
            )));
        }
        if let Some((_, s)) = seen.iter().find(|(g, _)| *g == &d.digest) {
            if *s != d.size {
                return Err(bad(format!(
                    "blob {} listed twice with sizes {s} and {}",
                    d.digest, d.size
                )));
            }
        }
        seen.push((&d.digest, d.size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(mt: &str, cfg_digest: &str, size: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{cfg_digest}","size":{size}}},"layers":[]}}"#
        )
    }

    #[test]
    fn names_with_schemes() {
        let (n, b) = parse_name("http://127.0.0.1:5000/library/smollm2:135m").unwrap();
        assert_eq!(
            (n.host.as_str(), n.model.as_str(), n.tag.as_str()),
            ("127.0.0.1:5000", "smollm2", "135m")
        );
        assert_eq!(b.as_deref(), Some("http://127.0.0.1:5000"));
        let (n, b) = parse_name("HTTPS://reg.example/m").unwrap();
        assert_eq!(
            (n.namespace.as_str(), b.as_deref()),
            ("library", Some("https://reg.example"))
        );
        let (n, b) = parse_name("smollm2:135m").unwrap();
        assert_eq!((n.host.as_str(), b), ("registry.ollama.ai", None));
        let (n, _) = parse_name("http://127.0.0.1:5000/m").unwrap();
        assert_eq!(
            (n.host.as_str(), n.namespace.as_str()),
            ("127.0.0.1:5000", "library")
        );
        for bad in [
            "http://",
            "http://m",
            "http://h/",
            "ftp://h/m",
            "http://h/../m",
            "http://h/a/b/c/d",
            "https://h/m@sha256:x",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_checks() {
        let ok = manifest(media::DOCKER_MANIFEST, E, "0");
        check_manifest(ok.as_bytes(), Some(media::DOCKER_MANIFEST), "m").unwrap();
        check_manifest(ok.as_bytes(), None, "m").unwrap();
        let traversal = "sha256:../../../../../../../../../../../../../etc/shadow";
        for (bytes, ct) in [
            (
                manifest(media::DOCKER_MANIFEST, E, "0"),
                Some(media::OCI_MANIFEST),
            ),
            (manifest(media::DOCKER_MANIFEST, traversal, "10"), None),
            (manifest(media::DOCKER_MANIFEST, "", "0"), None),
            (manifest(media::DOCKER_MANIFEST, E, "5"), None),
            (manifest(media::DOCKER_MANIFEST, E, "-1"), None),
            (manifest(media::DOCKER_MANIFEST, E, "1e30"), None),
            (
                manifest(
                    media::DOCKER_MANIFEST,
                    &E.to_uppercase().replace("SHA256", "sha256"),
                    "0",
                ),
                None,
            ),
            (
                manifest("application/vnd.oci.image.index.v1+json", E, "0"),
                None,
            ),
            (
                ok.replace("\"layers\":[]", "\"layers\":[],\"manifests\":[]"),
                None,
            ),
            (
                ok.replace(
                    &format!("\"mediaType\":\"{}\",", media::DOCKER_MANIFEST),
                    "",
                ),
                None,
            ),
            (
                ok.replace("\"size\":0", &format!("\"size\":{}", (1u64 << 40) + 1)),
                None,
            ),
            ("[]".to_string(), None),
        ] {
            assert!(
                check_manifest(bytes.as_bytes(), ct, "m").is_err(),
                "{bytes} {ct:?}"
            );
        }
    }
}
