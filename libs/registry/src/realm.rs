//! Where credentials and Ollama key signatures may go: the token realm
//! policy (CVE-2025-51471, issue 14). A realm on the registry's origin, an
//! allowlisted pair or a realm the user trusts gets them; any other http(s)
//! realm is asked for an anonymous token only.

use url::Url;

use crate::Error;

fn trunc(s: &str) -> String {
    s.chars().take(200).collect()
}

/// `scheme://host:port` of a URL, with the port made explicit.
pub(crate) fn origin(u: &Url) -> String {
    format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str().unwrap_or(""),
        u.port_or_known_default().unwrap_or(0)
    )
}

/// Token realms known to belong to a registry on another origin.
fn allowed_realm_origins(registry: &Url) -> &'static [&'static str] {
    match registry.host_str().unwrap_or("") {
        "registry.ollama.ai" => &["https://ollama.com:443"],
        "hf.co" => &["https://huggingface.co:443"],
        "registry-1.docker.io" | "docker.io" | "index.docker.io" => &["https://auth.docker.io:443"],
        _ => &[],
    }
}

/// `host[:port]` of a registry base URL, as it appears in model names
/// (the key for credentials, trusted realms and Ollama registries).
pub(crate) fn host_key(base: &Url) -> String {
    match base.port() {
        Some(p) => format!("{}:{p}", base.host_str().unwrap_or("")),
        None => base.host_str().unwrap_or("").to_string(),
    }
}

/// Environment variable naming token realms trusted with credentials.
pub const TRUSTED_REALMS_ENV: &str = "LLPIPE_TRUSTED_REALMS";

/// The realm origins `entries` trust for the registry at `base`. Each entry
/// is `HOST[:PORT]=URL` (separated by spaces, commas or newlines in the
/// environment variable): the registry as in model names, and a URL of its
/// token service (only its origin counts). A malformed entry is an error.
pub(crate) fn trusted_realm_origins(base: &Url, entries: &[String]) -> Result<Vec<String>, Error> {
    let me = host_key(base);
    let mut out = Vec::new();
    for e in entries.iter().flat_map(|e| e.split([' ', ',', '\n', '\t'])) {
        if e.is_empty() {
            continue;
        }
        let bad = |why: &str| {
            Error::Auth(format!(
                "{TRUSTED_REALMS_ENV} entry {:?}: {why} (expected HOST[:PORT]=https://REALM-HOST[:PORT])",
                trunc(e)
            ))
        };
        let (host, realm) = e.split_once('=').ok_or_else(|| bad("no '='"))?;
        if host.is_empty() || host.contains('/') {
            return Err(bad("bad registry host"));
        }
        let u = Url::parse(realm).map_err(|err| bad(&format!("bad URL: {err}")))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err(bad("the realm must be an http or https URL"));
        }
        if host.eq_ignore_ascii_case(&me) {
            out.push(origin(&u));
        }
    }
    Ok(out)
}

/// Reads [`TRUSTED_REALMS_ENV`] (unset is none).
pub(crate) fn trusted_realms_from_env() -> Vec<String> {
    std::env::var(TRUSTED_REALMS_ENV).ok().into_iter().collect()
}

/// Checks a token realm and says whether it may receive credentials and
/// Ollama signatures on behalf of `registry`.
///
/// Any http(s) realm may be asked for an anonymous token (no Authorization
/// header): registries often run their token service on another host or
/// port. Credentials and signatures go only to the registry's own origin
/// (scheme, host and port), an allowlisted pair, or a realm whose origin is
/// in `trusted` (the user's configuration) (CVE-2025-51471). Every realm must
/// be https unless `insecure` (then http is allowed too).
pub(crate) fn check_realm(
    realm: &str,
    registry: &Url,
    insecure: bool,
    trusted: &[String],
) -> Result<(Url, bool), Error> {
    let u = Url::parse(realm)
        .map_err(|e| Error::Auth(format!("token realm {:?} is not a URL: {e}", trunc(realm))))?;
    if u.scheme() != "https" && !(insecure && u.scheme() == "http") {
        return Err(Error::Auth(format!(
            "refusing token realm {u}: not https (use --insecure for a local registry)"
        )));
    }
    if u.host_str().is_none_or(|h| h.is_empty()) {
        return Err(Error::Auth(format!("refusing token realm {u}: no host")));
    }
    let o = origin(&u);
    let may_authenticate = o == origin(registry)
        || allowed_realm_origins(registry).contains(&o.as_str())
        || trusted.contains(&o);
    Ok((u, may_authenticate))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Port of ollama's TestGetAuthorizationTokenRejectsCrossDomain, with
    /// scheme and port differences (HOSTILE row 9): a realm on another
    /// origin is asked anonymously only (issue 14); http needs --insecure.
    #[test]
    fn realm_trust_follows_the_registry_origin() {
        let ck = |realm: &str, reg: &Url, insecure: bool, trusted: &[String]| {
            check_realm(realm, reg, insecure, trusted).map(|(_, t)| t)
        };
        let reg = Url::parse("https://reg.example").unwrap();
        assert!(ck("https://reg.example/token", &reg, false, &[]).unwrap());
        assert!(ck("https://reg.example:443/token", &reg, false, &[]).unwrap());
        for other in [
            "https://attacker.example/token",
            "https://reg.example:8443/token",
            "https://reg.example.attacker.example/token",
        ] {
            assert!(!ck(other, &reg, false, &[]).unwrap(), "{other}");
            assert!(
                !ck(other, &reg, true, &[]).unwrap(),
                "{other} with insecure"
            );
        }
        for bad in [
            "http://reg.example/token",
            "ftp://reg.example/token",
            "not a url",
        ] {
            assert!(ck(bad, &reg, false, &[]).is_err(), "{bad}");
        }
        // http to another origin: anonymous at best, and only when insecure
        assert!(!ck("http://reg.example/token", &reg, true, &[]).unwrap());
        assert!(ck("ftp://reg.example/token", &reg, true, &[]).is_err());
        let local = Url::parse("http://127.0.0.1:5000").unwrap();
        assert!(ck("http://127.0.0.1:5000/token", &local, false, &[]).is_err());
        assert!(ck("http://127.0.0.1:5000/token", &local, true, &[]).unwrap());
        assert!(!ck("http://127.0.0.1:5001/token", &local, true, &[]).unwrap());
        // configured: trusted for that registry only, by origin
        let cfg =
            vec!["127.0.0.1:5000=http://127.0.0.1:5001/auth other:1=https://x.example".to_string()];
        let t = trusted_realm_origins(&local, &cfg).unwrap();
        assert_eq!(t, ["http://127.0.0.1:5001"]);
        assert!(ck("http://127.0.0.1:5001/token", &local, true, &t).unwrap());
        assert!(!ck("http://127.0.0.1:5002/token", &local, true, &t).unwrap());
        assert!(!ck("https://127.0.0.1:5001/token", &local, true, &t).unwrap());
        // a configured http realm is still refused without insecure
        let t = trusted_realm_origins(&reg, &["reg.example=http://auth.example".into()]).unwrap();
        assert!(ck("http://auth.example/t", &reg, false, &t).is_err());
        for bad in [
            "nohost",
            "=https://x",
            "a=",
            "a=ftp://x",
            "a/b=https://x",
            "a=not a url",
        ] {
            let e = trusted_realm_origins(&reg, &[bad.to_string()])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(TRUSTED_REALMS_ENV) && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
        let hub = Url::parse("https://registry-1.docker.io").unwrap();
        assert!(ck("https://auth.docker.io/token", &hub, false, &[]).unwrap());
        let ollama = Url::parse("https://registry.ollama.ai").unwrap();
        assert!(ck("https://ollama.com/token", &ollama, false, &[]).unwrap());
        assert!(ck("http://ollama.com/token", &ollama, false, &[]).is_err());
    }
}
