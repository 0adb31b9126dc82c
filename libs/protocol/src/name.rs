//! Model names, parsed the way Ollama parses them.
//!
//! `[host[:port]/][namespace/]model[:tag]`, with the defaults of
//! [`Name::DEFAULT_HOST`], [`Name::DEFAULT_NAMESPACE`] and [`Name::DEFAULT_TAG`].
//! Bad names are rejected, never sanitized: a name is later joined into a
//! path under `manifests/`, so every part is checked against a strict
//! character set and `.`/`..` can never be a part.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A fully qualified model name: every part present after defaults.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Name {
    /// Registry host, with an optional `:port` (`registry.ollama.ai`).
    pub host: String,
    /// Namespace (`library`).
    pub namespace: String,
    /// Model (`smollm2`).
    pub model: String,
    /// Tag (`135m`, default `latest`).
    pub tag: String,
}

impl Name {
    /// Ollama's default registry host.
    pub const DEFAULT_HOST: &'static str = "registry.ollama.ai";
    /// Ollama's default namespace.
    pub const DEFAULT_NAMESPACE: &'static str = "library";
    /// Ollama's default tag.
    pub const DEFAULT_TAG: &'static str = "latest";

    /// Parses a name and fills in the defaults (`registry.ollama.ai`,
    /// `library`, `latest`). This is the one place those defaults live.
    pub fn parse(s: &str) -> Result<Name, Error> {
        let bad = |why: &str| Error::BadName {
            name: s.chars().take(400).collect(),
            why: why.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty name"));
        }
        if s.contains("://") {
            return Err(bad("a scheme is not part of a model name"));
        }
        if s.contains('@') {
            return Err(bad(
                "digest references (@sha256:...) are not supported here",
            ));
        }
        // The tag is after the last ':' that follows the last '/'; a ':'
        // before the last '/' belongs to host:port.
        let last_slash = s.rfind('/');
        let (rest, tag) = match s.rfind(':') {
            Some(i) if last_slash.is_none_or(|j| i > j) => (&s[..i], Some(&s[i + 1..])),
            _ => (s, None),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (host, namespace, model) = match parts.as_slice() {
            [m] => (None, None, *m),
            [n, m] => (None, Some(*n), *m),
            [h, n, m] => (Some(*h), Some(*n), *m),
            _ => return Err(bad("too many '/' separated parts")),
        };
        let host = host.unwrap_or(Name::DEFAULT_HOST);
        let namespace = namespace.unwrap_or(Name::DEFAULT_NAMESPACE);
        let tag = tag.unwrap_or(Name::DEFAULT_TAG);
        check_part(host, "host", 350, |c| {
            c.is_ascii_alphanumeric() || "_-.:".contains(c)
        })
        .map_err(|w| bad(&w))?;
        check_part(namespace, "namespace", 80, |c| {
            c.is_ascii_alphanumeric() || "_-".contains(c)
        })
        .map_err(|w| bad(&w))?;
        check_part(model, "model", 80, |c| {
            c.is_ascii_alphanumeric() || "_-.".contains(c)
        })
        .map_err(|w| bad(&w))?;
        check_part(tag, "tag", 80, |c| {
            c.is_ascii_alphanumeric() || "_-.".contains(c)
        })
        .map_err(|w| bad(&w))?;
        Ok(Name {
            host: host.into(),
            namespace: namespace.into(),
            model: model.into(),
            tag: tag.into(),
        })
    }

    /// The manifest's path relative to `manifests/`: `host/namespace/model/tag`.
    pub fn manifest_rel_path(&self) -> std::path::PathBuf {
        [&self.host, &self.namespace, &self.model, &self.tag]
            .iter()
            .collect()
    }

    /// The repository as a registry knows it: `namespace/model`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.namespace, self.model)
    }

    /// The shortest form that parses back to this name, as `ollama list`
    /// shows it: `smollm2:135m`, `user/model:latest`, `host/ns/model:tag`.
    pub fn short(&self) -> String {
        if self.host != Name::DEFAULT_HOST {
            self.to_string()
        } else if self.namespace != Name::DEFAULT_NAMESPACE {
            format!("{}/{}:{}", self.namespace, self.model, self.tag)
        } else {
            format!("{}:{}", self.model, self.tag)
        }
    }

    /// Case-insensitive equality, as Ollama matches names.
    pub fn eq_fold(&self, other: &Name) -> bool {
        self.host.eq_ignore_ascii_case(&other.host)
            && self.namespace.eq_ignore_ascii_case(&other.namespace)
            && self.model.eq_ignore_ascii_case(&other.model)
            && self.tag.eq_ignore_ascii_case(&other.tag)
    }
}

fn check_part(part: &str, what: &str, max: usize, ok: impl Fn(char) -> bool) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("empty {what}"));
    }
    if part.len() > max {
        return Err(format!(
            "{what} is {} characters, at most {max} allowed",
            part.len()
        ));
    }
    let first = part.chars().next().unwrap_or('.');
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(format!(
            "{what} {part:?} must start with a letter, digit or '_'"
        ));
    }
    if let Some(c) = part.chars().find(|&c| !ok(c)) {
        return Err(format!("{what} {part:?} contains {c:?}"));
    }
    Ok(())
}

impl FromStr for Name {
    type Err = Error;
    fn from_str(s: &str) -> Result<Name, Error> {
        Name::parse(s)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}:{}",
            self.host, self.namespace, self.model, self.tag
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(h: &str, ns: &str, m: &str, t: &str) -> Name {
        Name {
            host: h.into(),
            namespace: ns.into(),
            model: m.into(),
            tag: t.into(),
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(
            Name::parse("smollm2").unwrap(),
            n("registry.ollama.ai", "library", "smollm2", "latest")
        );
        assert_eq!(
            Name::parse("smollm2:135m").unwrap(),
            n("registry.ollama.ai", "library", "smollm2", "135m")
        );
        assert_eq!(
            Name::parse("me/m:q4").unwrap(),
            n("registry.ollama.ai", "me", "m", "q4")
        );
        assert_eq!(
            Name::parse("127.0.0.1:5000/library/smollm2:135m").unwrap(),
            n("127.0.0.1:5000", "library", "smollm2", "135m")
        );
        assert_eq!(
            Name::parse("localhost:5000/a/b").unwrap(),
            n("localhost:5000", "a", "b", "latest")
        );
        assert_eq!(
            Name::parse("hf.co/bartowski/SmolLM2-135M-GGUF:Q4_K_M")
                .unwrap()
                .host,
            "hf.co"
        );
    }

    #[test]
    fn short_round_trips() {
        for s in ["smollm2:135m", "me/m:latest", "h:1/n/m:t"] {
            let name = Name::parse(s).unwrap();
            assert_eq!(name.short(), s);
            assert_eq!(Name::parse(&name.short()).unwrap(), name);
            assert_eq!(Name::parse(&name.to_string()).unwrap(), name);
        }
        assert_eq!(
            Name::parse("x").unwrap().manifest_rel_path(),
            std::path::Path::new("registry.ollama.ai/library/x/latest")
        );
    }

    #[test]
    fn rejects_bad_names() {
        let long = "a".repeat(81);
        for bad in [
            "",
            "../x",
            "a/../../b",
            "m:../../t",
            "..",
            ".hidden",
            "a/b/c/d",
            "https://registry.ollama.ai/library/x",
            "a/https://b",
            "m:",
            ":t",
            "a//b",
            "/abs",
            "sp ace",
            "m:t/x",
            "m@sha256:abc",
            "na\u{e9}me",
            &long,
            &format!("m:{long}"),
            &format!("{long}/m"),
            "-m",
            "ns.dot/m",
        ] {
            assert!(
                Name::parse(bad).is_err(),
                "{bad:?} accepted as {:?}",
                Name::parse(bad)
            );
        }
        assert!(Name::parse(&"a".repeat(80)).is_ok());
    }

    #[test]
    fn fold() {
        assert!(Name::parse("SmolLM2:135M")
            .unwrap()
            .eq_fold(&Name::parse("smollm2:135m").unwrap()));
    }
}
