//! A small HTTP/1.1 client for bodiless `GET` and `HEAD` over plain http
//! (local registries such as `127.0.0.1:5000`).
//!
//! Why not ureq here: ureq 2 reads every body through an 8 KiB buffer, one
//! `recvfrom` per 8 KiB (131 072 syscalls and a copy per GiB). This client
//! reads the body straight from the socket into the caller's buffer, so a
//! 1 MiB read is one syscall and one copy. https still goes through ureq.
//!
//! One request per connection (`Connection: close`). Everything the server
//! sends is hostile: the head is capped ([`MAX_HEAD`] bytes, [`MAX_HEADERS`]
//! lines), framing follows RFC 9112 §6 (chunked wins over Content-Length,
//! which is then dropped from the headers so callers treat the body as
//! undeclared; differing Content-Lengths and unknown transfer codings are
//! errors), and a body shorter than its Content-Length is an error, never a
//! silent truncation.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use url::Url;

/// Largest response head read.
pub(crate) const MAX_HEAD: usize = 64 << 10;
/// Most header lines accepted.
pub(crate) const MAX_HEADERS: usize = 128;
const MAX_CHUNK_LINE: usize = 4 << 10;
const MAX_INTERIM: usize = 8;

/// Why a request failed before a response head arrived.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The host name did not resolve.
    Dns(String),
    /// Connect, send or receive failed (retryable).
    Net(String),
    /// The server broke HTTP/1.1.
    Protocol(String),
}

/// Timeouts and the User-Agent of a client.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub connect_timeout: Duration,
    /// No byte for this long while reading or writing: the request stalls.
    pub io_timeout: Duration,
    pub user_agent: String,
}

/// A response head and its body reader.
pub(crate) struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: BodyReader,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.status
    }
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }
    /// Every header of that name, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn into_reader(self) -> BodyReader {
        self.body
    }
}

/// Sends `method` (GET or HEAD, no body) to `url` and reads the response head.
pub(crate) fn request(
    method: &str,
    url: &Url,
    headers: &[(&str, String)],
    cfg: &Config,
) -> Result<Response, Failure> {
    if url.scheme() != "http" || !matches!(method, "GET" | "HEAD") {
        return Err(Failure::Protocol(format!(
            "internal: http1 cannot {method} {url}"
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| Failure::Protocol(format!("no host in {url}")))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let mut req = format!("{method} {}", url.path());
    if let Some(q) = url.query() {
        req.push('?');
        req.push_str(q);
    }
    req.push_str(" HTTP/1.1\r\nHost: ");
    req.push_str(host);
    if let Some(p) = url.port() {
        req.push_str(&format!(":{p}"));
    }
    req.push_str(&format!(
        "\r\nUser-Agent: {}\r\nConnection: close\r\n",
        cfg.user_agent
    ));
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
    {
        req.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        if k.is_empty() || !k.bytes().all(is_token) || v.bytes().any(|c| c == b'\r' || c == b'\n') {
            return Err(Failure::Protocol(format!("invalid request header {k:?}")));
        }
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");

    let stream = connect(host, port, cfg)?;
    let net = |what: &str, e: io::Error| Failure::Net(format!("{what}: {}", describe(&e)));
    (&stream)
        .write_all(req.as_bytes())
        .map_err(|e| net("sending the request", e))?;
    let mut buf = Vec::with_capacity(8 << 10);
    for _ in 0..MAX_INTERIM {
        let head_end = read_head(&stream, &mut buf)?;
        let (status, headers) = parse_head(&buf[..head_end])?;
        buf.drain(..head_end);
        // Interim answers (100 Continue, 103 Early Hints) precede the real one.
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        return framed(method, status, headers, stream, buf);
    }
    Err(Failure::Protocol(format!(
        "more than {MAX_INTERIM} interim (1xx) responses"
    )))
}

fn connect(host: &str, port: u16, cfg: &Config) -> Result<TcpStream, Failure> {
    let addrs: Vec<_> = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| Failure::Dns(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Dns(format!("no addresses for {host}")));
    }
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, cfg.connect_timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.set_read_timeout(Some(cfg.io_timeout))
                    .and_then(|()| s.set_write_timeout(Some(cfg.io_timeout)))
                    .map_err(|e| Failure::Net(e.to_string()))?;
                return Ok(s);
            }
            Err(e) => last = Some(format!("connecting to {a}: {}", describe(&e))),
        }
    }
    Err(Failure::Net(last.unwrap_or_default()))
}

/// Reads until `\r\n\r\n`; returns the head's length (the rest of `buf` is body).
fn read_head(mut s: &TcpStream, buf: &mut Vec<u8>) -> Result<usize, Failure> {
    let mut scanned = 0usize;
    loop {
        if let Some(i) = find(&buf[scanned.saturating_sub(3)..], b"\r\n\r\n") {
            return Ok(scanned.saturating_sub(3) + i + 4);
        }
        scanned = buf.len();
        if buf.len() >= MAX_HEAD {
            return Err(Failure::Protocol(format!(
                "response head larger than {MAX_HEAD} bytes"
            )));
        }
        let old = buf.len();
        buf.resize(MAX_HEAD.min(old + (16 << 10)), 0);
        match s.read(&mut buf[old..]) {
            Ok(0) => {
                buf.truncate(old);
                return Err(Failure::Net(if old == 0 {
                    "connection closed before any response".into()
                } else {
                    "connection closed inside the response head".into()
                }));
            }
            Ok(n) => buf.truncate(old + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(old),
            Err(e) => {
                return Err(Failure::Net(format!(
                    "reading the response head: {}",
                    describe(&e)
                )))
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Status line and header lines of a head ending in `\r\n\r\n`.
fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), Failure> {
    let bad = |why: String| Failure::Protocol(why);
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(bad(format!(
            "bad status line {:?}",
            status_line.chars().take(80).collect::<String>()
        )));
    }
    let status: u16 = code.parse().unwrap_or(0);
    if status < 100 {
        return Err(bad(format!("bad status {status}")));
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if headers.len() >= MAX_HEADERS {
            return Err(bad(format!("more than {MAX_HEADERS} header lines")));
        }
        let (k, v) = line
            .split_once(':')
            .filter(|(k, _)| !k.is_empty() && k.bytes().all(is_token))
            .ok_or_else(|| {
                bad(format!(
                    "bad header line {:?}",
                    line.chars().take(80).collect::<String>()
                ))
            })?;
        let v = v.trim_matches(|c| c == ' ' || c == '\t');
        if v.bytes().any(|c| (c < 0x20 && c != b'\t') || c == 0x7f) {
            return Err(bad(format!("control character in header {k}")));
        }
        headers.push((k.to_string(), v.to_string()));
    }
    Ok((status, headers))
}

/// Decides how the body is delimited (RFC 9112 §6.3).
fn framed(
    method: &str,
    status: u16,
    mut headers: Vec<(String, String)>,
    stream: TcpStream,
    rest: Vec<u8>,
) -> Result<Response, Failure> {
    let bad = |why: String| Failure::Protocol(why);
    let get = |h: &[(String, String)], n: &str| -> Vec<String> {
        h.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let te = get(&headers, "transfer-encoding");
    let kind = if method == "HEAD" || status == 204 || status == 304 {
        Kind::Length(0)
    } else if !te.is_empty() {
        let codings: Vec<String> = te
            .iter()
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        if codings != ["chunked"] {
            return Err(bad(format!("unsupported Transfer-Encoding {te:?}")));
        }
        // A Content-Length beside chunked is meaningless: drop it so nobody trusts it.
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
        Kind::Chunked {
            left: 0,
            state: Chunk::Size,
        }
    } else {
        let cl = get(&headers, "content-length");
        let mut len = None;
        for v in cl.iter().flat_map(|v| v.split(',')) {
            let v = v.trim();
            if v.is_empty() || v.len() > 19 || !v.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad(format!("bad Content-Length {v:?}")));
            }
            let n: u64 = v
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {v:?}")))?;
            if len.is_some_and(|l| l != n) {
                return Err(bad(format!("differing Content-Lengths {cl:?}")));
            }
            len = Some(n);
        }
        match len {
            Some(n) => Kind::Length(n),
            None => Kind::UntilClose,
        }
    };
    Ok(Response {
        status,
        headers,
        body: BodyReader {
            stream,
            buf: rest,
            pos: 0,
            kind,
            done: false,
        },
    })
}

#[derive(Debug)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data (`left` bytes to go).
    Data,
    /// Expecting the CRLF after chunk data.
    DataEnd,
}

#[derive(Debug)]
enum Kind {
    /// This many bytes still to come.
    Length(u64),
    Chunked {
        left: u64,
        state: Chunk,
    },
    UntilClose,
}

/// The body: bytes already buffered with the head first, then reads straight
/// from the socket into the caller's buffer.
pub(crate) struct BodyReader {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    kind: Kind,
    done: bool,
}

impl BodyReader {
    /// Reads raw bytes: buffered ones first, then one `recv` into `out`.
    fn raw(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.buf.len() {
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        loop {
            match (&self.stream).read(out) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "stalled: no data within the stall timeout",
                    ))
                }
                r => return r,
            }
        }
    }

    /// One line of a chunked body, without its CRLF.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            if self.pos < self.buf.len() {
                let rest = &self.buf[self.pos..];
                if let Some(i) = rest.iter().position(|&c| c == b'\n') {
                    line.extend_from_slice(&rest[..i]);
                    self.pos += i + 1;
                    break;
                }
                line.extend_from_slice(rest);
                self.pos = self.buf.len();
            } else {
                self.buf.clear();
                self.pos = 0;
                self.buf.resize(8 << 10, 0);
                let n = match (&self.stream).read(&mut self.buf) {
                    Ok(n) => n,
                    Err(e) => {
                        self.buf.clear();
                        return Err(e);
                    }
                };
                self.buf.truncate(n);
                if n == 0 {
                    return Err(eof("connection closed inside a chunked body"));
                }
            }
            if line.len() > MAX_CHUNK_LINE {
                return Err(invalid("chunk line too long"));
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > MAX_CHUNK_LINE {
            return Err(invalid("chunk line too long"));
        }
        Ok(line)
    }

    fn read_chunked(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let Kind::Chunked { left, state } = &mut self.kind else {
                unreachable!("read_chunked on a non-chunked body")
            };
            match state {
                Chunk::Data if *left > 0 => {
                    let want = out.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = self.raw(&mut out[..want])?;
                    if n == 0 {
                        return Err(eof("connection closed inside a chunk"));
                    }
                    if let Kind::Chunked { left, state } = &mut self.kind {
                        *left -= n as u64;
                        if *left == 0 {
                            *state = Chunk::DataEnd;
                        }
                    }
                    return Ok(n);
                }
                Chunk::Data | Chunk::DataEnd => {
                    if !self.line()?.is_empty() {
                        return Err(invalid("missing CRLF after chunk data"));
                    }
                    if let Kind::Chunked { state, .. } = &mut self.kind {
                        *state = Chunk::Size;
                    }
                }
                Chunk::Size => {
                    let line = self.line()?;
                    let hex = line.split(|&c| c == b';').next().unwrap_or(&[]);
                    let hex = std::str::from_utf8(hex)
                        .map_err(|_| invalid("bad chunk size"))?
                        .trim();
                    if hex.is_empty() || hex.len() > 15 {
                        return Err(invalid("bad chunk size"));
                    }
                    let size =
                        u64::from_str_radix(hex, 16).map_err(|_| invalid("bad chunk size"))?;
                    if size == 0 {
                        // trailer fields, then the empty line
                        for _ in 0..=MAX_HEADERS {
                            if self.line()?.is_empty() {
                                self.done = true;
                                return Ok(0);
                            }
                        }
                        return Err(invalid("too many trailer lines"));
                    }
                    if let Kind::Chunked { left, state } = &mut self.kind {
                        *left = size;
                        *state = Chunk::Data;
                    }
                }
            }
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        match self.kind {
            Kind::Length(0) => {
                self.done = true;
                Ok(0)
            }
            Kind::Length(left) => {
                let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.raw(&mut out[..want])?;
                if n == 0 {
                    return Err(eof(&format!(
                        "connection closed with {left} bytes of the declared Content-Length to go"
                    )));
                }
                self.kind = Kind::Length(left - n as u64);
                Ok(n)
            }
            Kind::UntilClose => {
                let n = self.raw(out)?;
                if n == 0 {
                    self.done = true;
                }
                Ok(n)
            }
            Kind::Chunked { .. } => self.read_chunked(out),
        }
    }
}

fn eof(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg.to_string())
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            "timed out (stalled: no data within the stall timeout)".into()
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection with `raw` bytes (after reading the request head), then closes.
    fn one_shot(raw: Vec<u8>) -> (Url, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/v2/x?a=1", l.local_addr().unwrap())).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            // dribble the answer out in small pieces to exercise partial reads
            for piece in raw.chunks(7) {
                if s.write_all(piece).is_err() {
                    break;
                }
            }
            req
        });
        (url, h)
    }

    fn cfg() -> Config {
        Config {
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(2),
            user_agent: "t".into(),
        }
    }

    fn get(raw: &[u8]) -> (Result<(u16, Vec<u8>), String>, String) {
        let (url, h) = one_shot(raw.to_vec());
        let r = request("GET", &url, &[("Range", "bytes=0-9".into())], &cfg());
        let out = match r {
            Err(f) => Err(format!("{f:?}")),
            Ok(resp) => {
                let status = resp.status();
                let mut body = Vec::new();
                match resp.into_reader().read_to_end(&mut body) {
                    Ok(_) => Ok((status, body)),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        let req = String::from_utf8(h.join().unwrap()).unwrap();
        (out, req)
    }

    #[test]
    fn content_length_body_and_request_line() {
        let (r, req) = get(b"HTTP/1.1 206 Partial\r\nContent-Length: 5\r\nX: y\r\n\r\nhelloEXTRA");
        assert_eq!(r.unwrap(), (206, b"hello".to_vec()));
        assert!(
            req.starts_with("GET /v2/x?a=1 HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{req}"
        );
        assert!(
            req.contains("\r\nRange: bytes=0-9\r\n") && req.ends_with("\r\n\r\n"),
            "{req}"
        );
    }

    #[test]
    fn chunked_body_drops_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
        let (url, h) = one_shot(raw.to_vec());
        let resp = request("GET", &url, &[], &cfg()).unwrap();
        assert_eq!(resp.header("content-length"), None);
        let mut body = String::new();
        resp.into_reader().read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello world");
        h.join().unwrap();
    }

    #[test]
    fn close_delimited_and_interim_answers() {
        let (r, _) = get(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nall of it");
        assert_eq!(r.unwrap(), (200, b"all of it".to_vec()));
    }

    #[test]
    fn short_body_is_an_error_not_a_truncation() {
        let (r, _) = get(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nonly this");
        assert!(r.unwrap_err().contains("Content-Length"));
        let (r, _) = get(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort");
        assert!(r.unwrap_err().contains("closed"));
    }

    #[test]
    fn hostile_heads_are_errors() {
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        for raw in [
            "HTTP/2 200 OK\r\n\r\n".to_string(),
            "HTTP/1.1 20 OK\r\n\r\n".into(),
            "HTTP/1.1 abc OK\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\n folded\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".into(),
            "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".into(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".into(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY".into(),
            long,
            many,
            "garbage".into(),
            "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1),
        ] {
            let (r, _) = get(raw.as_bytes());
            assert!(r.is_err(), "accepted {:?}", &raw[..raw.len().min(60)]);
        }
    }

    #[test]
    fn head_has_no_body_and_dns_failure_is_dns() {
        let (url, h) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec());
        let resp = request("HEAD", &url, &[], &cfg()).unwrap();
        assert_eq!(resp.header("Content-Length"), Some("1000"));
        let mut body = Vec::new();
        resp.into_reader().read_to_end(&mut body).unwrap();
        assert!(body.is_empty());
        h.join().unwrap();
        let u = Url::parse("http://nonexistent.invalid/v2/").unwrap();
        assert!(matches!(
            request("GET", &u, &[], &cfg()),
            Err(Failure::Dns(_))
        ));
        let bad = [("X", "a\r\nInjected: 1".to_string())];
        assert!(matches!(
            request("GET", &url, &bad, &cfg()),
            Err(Failure::Protocol(_))
        ));
    }
}
