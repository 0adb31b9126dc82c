//! Content digests: `sha256:` followed by 64 lowercase hex digits, nothing else.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::Error;

/// The hash algorithm of a [`Digest`]. Only sha256 is accepted, as in Ollama.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, 32 bytes.
    Sha256,
}

/// A validated content digest. Every blob path in the store is derived from
/// one of these, never from a raw string, so `../` can never reach a path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algo: Algorithm,
    hex: String,
}

impl Digest {
    /// The digest of a byte slice.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(bytes).into())
    }

    /// Wraps a raw 32-byte sha256 value.
    pub fn from_sha256(raw: [u8; 32]) -> Digest {
        Digest {
            algo: Algorithm::Sha256,
            hex: hex::encode(raw),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }

    /// The 64 lowercase hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `ollama list` shows a model id.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }

    /// The blob's file name in an Ollama store: `sha256-<hex>`.
    pub fn blob_file_name(&self) -> String {
        format!("sha256-{}", self.hex)
    }

    /// Parses a blob file name (`sha256-<hex>`) back into a digest.
    pub fn from_blob_file_name(name: &str) -> Result<Digest, Error> {
        match name.strip_prefix("sha256-") {
            Some(hex) => Digest::from_str(&format!("sha256:{hex}")),
            None => Err(Error::BadDigest(name.to_string())),
        }
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Digest, Error> {
        let bad = || Error::BadDigest(s.chars().take(100).collect());
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        Ok(Digest {
            algo: Algorithm::Sha256,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes everything `r` yields; returns the digest and the byte count.
/// Uses SHA-NI where the CPU has it (sha2 picks at run time).
pub fn sha256_reader<R: Read>(mut r: R) -> io::Result<(Digest, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((Digest::from_sha256(h.finalize().into()), n))
}

/// An incremental sha256, for hashing while bytes stream past.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Hasher {
        Hasher(Sha256::new())
    }
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes)
    }
    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest::from_sha256(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_round_trips() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of_bytes(b""));
        assert_eq!(d.blob_file_name(), EMPTY.replace(':', "-"));
        assert_eq!(Digest::from_blob_file_name(&d.blob_file_name()).unwrap(), d);
        assert_eq!(d.short(), "e3b0c44298fc");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "",
            "sha256:",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:../../../../etc/passwd00000000000000000000000000000000000000000",
            "sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            " sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
        assert!(Digest::from_blob_file_name("sha256-../x").is_err());
    }

    #[test]
    fn reader_counts_bytes() {
        let (d, n) = sha256_reader(&b"hello"[..]).unwrap();
        assert_eq!(n, 5);
        assert_eq!(d, Digest::of_bytes(b"hello"));
        let mut h = Hasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), d);
    }
}
