//! Ollama's key auth: the ed25519 key pair in `$HOME/.ollama` and token
//! requests signed with it exactly as Ollama signs them (its server/auth.go
//! and auth/auth.go).
//!
//! * Files: `id_ed25519` (OpenSSH private key, unencrypted, mode 0600) and
//!   `id_ed25519.pub` (`ssh-ed25519 AAAA…`), in `$HOME/.ollama` even when
//!   `OLLAMA_MODELS` points elsewhere. Created when missing, announced once
//!   on stderr with Ollama's two lines.
//! * A private key that others may read (mode & 077, owned by us) is
//!   refused as ssh refuses it: an error naming the file, no request sent.
//! * Token URL: the realm's own query plus `service`, one `scope` per
//!   space-separated scope, `ts` (unix seconds) and `nonce` (base64url of
//!   16 random bytes, no padding), encoded like Go's `url.Values.Encode`
//!   (keys sorted, `QueryEscape`).
//! * Signed data: `GET,<token URL>,<base64(hex(sha256("")))>`; header
//!   `Authorization: <public key blob, base64>:<base64(ed25519 signature)>`.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::Signer as _;
use ssh_key::rand_core::{OsRng, RngCore};
use ssh_key::{Algorithm, LineEnding, PrivateKey};
use url::Url;

use crate::{Error, Result};

/// File name of the private key inside the key directory.
pub const KEY_FILE: &str = "id_ed25519";
/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// Registries that are Ollama's own: token requests to them are signed.
pub(crate) const OLLAMA_HOSTS: &[&str] = &["registry.ollama.ai", "ollama.com"];

/// `$HOME/.ollama`, where Ollama keeps its key (independent of `OLLAMA_MODELS`).
pub fn default_key_dir() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".ollama"))
        .ok_or_else(|| Error::Auth("HOME is not set: cannot find the Ollama key".into()))
}

/// An Ollama identity: an ed25519 key read from (or written to) its file.
pub struct OllamaKey {
    key: PrivateKey,
    path: PathBuf,
}

impl std::fmt::Debug for OllamaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OllamaKey {{ path: {:?}, private: <hidden> }}",
            self.path
        )
    }
}

fn key_err(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Key {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

impl OllamaKey {
    /// Reads `dir/id_ed25519`, creating the pair (and `dir`) when the
    /// private key is missing. `Ok((key, true))` when it was just created.
    pub fn load_or_create(dir: &Path) -> Result<(OllamaKey, bool)> {
        let path = dir.join(KEY_FILE);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Ok((OllamaKey::load(&path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_err(&path, e)),
        }
        std::fs::create_dir_all(dir).map_err(|e| key_err(dir, e))?;
        let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .map_err(|e| key_err(&path, format!("cannot generate a key: {e}")))?;
        let pem = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| key_err(&path, e))?;
        // temp file (0600 from the start), then a hard link: a key another
        // process wrote meanwhile is kept, never overwritten
        let tmp = dir.join(format!(
            ".{KEY_FILE}.{}.{}.tmp",
            std::process::id(),
            new_nonce()
        ));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, &path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok((OllamaKey::load(&path)?, false));
            }
            Err(e) => return Err(key_err(&path, e)),
        }
        let key = OllamaKey { key, path };
        key.write_public()?;
        Ok((key, true))
    }

    /// Reads an unencrypted OpenSSH ed25519 private key. Refuses one that
    /// others may read, as ssh does.
    pub fn load(path: &Path) -> Result<OllamaKey> {
        let f = std::fs::File::open(path).map_err(|e| key_err(path, e))?;
        let meta = f.metadata().map_err(|e| key_err(path, e))?;
        if !meta.is_file() {
            return Err(key_err(path, "not a regular file"));
        }
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let mode = meta.permissions().mode() & 0o777;
        if meta.uid() == uid && mode & 0o077 != 0 {
            return Err(key_err(
                path,
                format!(
                    "permissions {mode:04o} are too open, the private key must not be readable by others (chmod 600 {})",
                    path.display()
                ),
            ));
        }
        let mut text = Vec::new();
        f.take(MAX_KEY_FILE + 1)
            .read_to_end(&mut text)
            .map_err(|e| key_err(path, e))?;
        if text.len() as u64 > MAX_KEY_FILE {
            return Err(key_err(path, "larger than any OpenSSH key file"));
        }
        let key = PrivateKey::from_openssh(&text).map_err(|e| {
            key_err(
                path,
                format!("not an OpenSSH private key ({e}); expected ssh-keygen -t ed25519 output"),
            )
        })?;
        if key.is_encrypted() {
            return Err(key_err(
                path,
                "the key is encrypted with a passphrase, which Ollama keys never are (ssh-keygen -p -N '' removes it)",
            ));
        }
        if key.algorithm() != Algorithm::Ed25519 || key.key_data().ed25519().is_none() {
            return Err(key_err(
                path,
                format!("a {} key, not ed25519", key.algorithm()),
            ));
        }
        Ok(OllamaKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// The private key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key file beside it (`id_ed25519.pub`).
    pub fn public_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".pub");
        PathBuf::from(p)
    }

    /// `ssh-ed25519 AAAA…`, the line to add to a registry (no comment).
    pub fn public_line(&self) -> String {
        format!("ssh-ed25519 {}", self.public_blob())
    }

    /// The base64 public key blob, the 2nd field of the authorized_keys line.
    fn public_blob(&self) -> String {
        let blob = self.key.public_key().to_bytes().unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(blob)
    }

    /// Writes `id_ed25519.pub` (temp file + rename).
    fn write_public(&self) -> Result<()> {
        let pub_path = self.public_path();
        let tmp =
            pub_path.with_extension(format!("pub.{}.{}.tmp", std::process::id(), new_nonce()));
        let r = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(format!("{}\n", self.public_line()).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &pub_path)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r.map_err(|e| key_err(&pub_path, e))
    }

    /// `<public key blob>:<base64(signature of data)>`, Ollama's `auth.Sign`.
    pub fn sign(&self, data: &[u8]) -> String {
        // checked at load: the key is ed25519
        let Some(pair) = self.key.key_data().ed25519() else {
            unreachable!("OllamaKey holds an ed25519 key")
        };
        let signing = ed25519_dalek::SigningKey::from_bytes(&pair.private.to_bytes());
        let sig = signing.sign(data);
        format!(
            "{}:{}",
            self.public_blob(),
            base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
        )
    }

    /// The Authorization value for a token request to `url`: Ollama signs
    /// `GET,<url>,<base64(hex(sha256 of the empty body))>`.
    pub fn sign_token_request(&self, url: &Url) -> String {
        self.sign(signed_data(url).as_bytes())
    }
}

/// What Ollama signs for a bodiless GET of `url`.
pub fn signed_data(url: &Url) -> String {
    let empty = protocol::Digest::of_bytes(b"");
    format!(
        "GET,{url},{}",
        base64::engine::general_purpose::STANDARD.encode(empty.hex())
    )
}

/// Go's `url.QueryEscape`: everything but `A-Za-z0-9-_.~` is `%XX`, space is `+`.
fn go_query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The token URL Ollama builds from a challenge (`registryChallenge.URL`):
/// the realm's query plus service, scopes, ts and nonce, keys sorted.
pub fn token_url(realm: &Url, service: &str, scope: &str, ts: u64, nonce: &str) -> Url {
    let mut pairs: Vec<(String, String)> = realm
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.push(("service".into(), service.into()));
    for s in scope.split(' ') {
        pairs.push(("scope".into(), s.into()));
    }
    pairs.push(("ts".into(), ts.to_string()));
    pairs.push(("nonce".into(), nonce.into()));
    // Go sorts by key and keeps the order of values within a key
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let q: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", go_query_escape(k), go_query_escape(v)))
        .collect();
    let mut u = realm.clone();
    u.set_query(Some(&q.join("&")));
    u
}

/// base64url (no padding) of 16 random bytes.
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_loads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let kd = dir.path().join("home/.ollama");
        let (k, created) = OllamaKey::load_or_create(&kd).unwrap();
        assert!(created);
        let meta = std::fs::metadata(kd.join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let pub_text = std::fs::read_to_string(kd.join("id_ed25519.pub")).unwrap();
        assert_eq!(pub_text, format!("{}\n", k.public_line()));
        assert!(pub_text.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"));
        let (k2, created) = OllamaKey::load_or_create(&kd).unwrap();
        assert!(!created);
        assert_eq!(k.public_line(), k2.public_line());
        assert_eq!(k.sign(b"x"), k2.sign(b"x"));
        assert!(!format!("{k:?}").contains("BEGIN"));
    }

    #[test]
    fn bad_key_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(KEY_FILE);
        let write = |text: &[u8], mode: u32| {
            let _ = std::fs::remove_file(&p);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let (good, _) = OllamaKey::load_or_create(&dir.path().join("g")).unwrap();
        let good_text = std::fs::read(good.path()).unwrap();
        let cases: Vec<(Vec<u8>, u32, &str)> = vec![
            (b"garbage".to_vec(), 0o600, "not an OpenSSH private key"),
            (Vec::new(), 0o600, "not an OpenSSH private key"),
            (
                good_text[..good_text.len() / 2].to_vec(),
                0o600,
                "not an OpenSSH private key",
            ),
            (good_text.clone(), 0o644, "too open"),
            (good_text.clone(), 0o640, "too open"),
            (vec![b'A'; (MAX_KEY_FILE + 10) as usize], 0o600, "larger"),
        ];
        for (text, mode, want) in cases {
            write(&text, mode);
            let e = OllamaKey::load(&p).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains(&p.display().to_string()) && !e.contains('\n'),
                "{want}: {e}"
            );
        }
        // a directory in its place
        let _ = std::fs::remove_file(&p);
        std::fs::create_dir(&p).unwrap();
        assert!(OllamaKey::load_or_create(dir.path()).is_err());
    }

    #[test]
    fn token_url_is_built_like_go_url_values() {
        let realm = Url::parse("https://ollama.com/token?z=1&a=b c").unwrap();
        let u = token_url(
            &realm,
            "ollama.com",
            "repository:library/m:pull repository:x/y:push",
            1700000000,
            "n~*",
        );
        assert_eq!(
            u.as_str(),
            "https://ollama.com/token?a=b+c&nonce=n~%2A&scope=repository%3Alibrary%2Fm%3Apull&scope=repository%3Ax%2Fy%3Apush&service=ollama.com&ts=1700000000&z=1"
        );
        assert_eq!(
            signed_data(&u),
            format!(
                "GET,{u},ZTNiMGM0NDI5OGZjMWMxNDlhZmJmNGM4OTk2ZmI5MjQyN2FlNDFlNDY0OWI5MzRjYTQ5NTk5MWI3ODUyYjg1NQ=="
            )
        );
        let n = new_nonce();
        assert_eq!(n.len(), 22);
        assert_ne!(n, new_nonce());
    }

    #[test]
    fn signature_verifies_with_the_public_key() {
        use ed25519_dalek::Verifier as _;
        let dir = tempfile::tempdir().unwrap();
        let (k, _) = OllamaKey::load_or_create(dir.path()).unwrap();
        let auth = k.sign(b"GET,x,y");
        let (pubb, sig) = auth.split_once(':').unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(pubb, k.public_line().split(' ').nth(1).unwrap());
        let blob = b64.decode(pubb).unwrap();
        let vk =
            ed25519_dalek::VerifyingKey::from_bytes(blob[blob.len() - 32..].try_into().unwrap())
                .unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&b64.decode(sig).unwrap()).unwrap();
        vk.verify(b"GET,x,y", &sig).unwrap();
        assert!(vk.verify(b"GET,x,z", &sig).is_err());
    }
}
