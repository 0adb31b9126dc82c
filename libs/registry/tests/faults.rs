//! Pulls against a fault-injecting HTTP server on 127.0.0.1: resets,
//! stalls, 5xx, wrong bytes, too many bytes, lying 416, hostile manifests,
//! cross-origin redirects and token realms, kill -9 and concurrent fetchers.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use protocol::{media, Digest, ModelDoc, Name};
use registry::{fetch_blob, resolve_remote, Error, FetchOptions, FetchReport};
use store::Store;

/// A model served from memory: manifest and blobs by digest.
struct Model {
    name: Name,
    manifest: String,
    blobs: HashMap<String, Vec<u8>>,
    big: Digest,
}

fn model(size: usize) -> Model {
    let config = br#"{"model_format":"gguf","model_family":"llama"}"#.to_vec();
    let big = bytes(size, 7);
    let template = b"{{ .Prompt }}".to_vec();
    let manifest = manifest_for(
        &config,
        &[(media::MODEL, &big), (media::TEMPLATE, &template)],
    );
    let mut blobs = HashMap::new();
    let big_d = Digest::of_bytes(&big);
    for b in [config, big, template] {
        blobs.insert(Digest::of_bytes(&b).to_string(), b);
    }
    Model {
        name: Name::parse("127.0.0.1:1/library/m:t").unwrap(),
        manifest,
        blobs,
        big: big_d,
    }
}

enum Route {
    Manifest,
    Blob(String),
    Other,
}

fn route(req: &Req) -> Route {
    let p = req.path.split('?').next().unwrap_or("");
    if p.contains("/manifests/") {
        Route::Manifest
    } else if let Some(i) = p.find("/blobs/") {
        Route::Blob(p[i + 7..].to_string())
    } else {
        Route::Other
    }
}

/// Serves the model; `blob` may take over a blob request (return true when handled).
fn registry_server(
    m: Arc<Model>,
    blob: impl Fn(&Req, &mut Option<Conn>, &str, &[u8]) + Send + Sync + 'static,
) -> FaultServer {
    serve(move |req, c| match route(req) {
        Route::Manifest => {
            let mut c = c;
            c.respond(
                200,
                &[("Content-Type", media::DOCKER_MANIFEST.into())],
                m.manifest.as_bytes(),
            )
        }
        Route::Blob(d) => match m.blobs.get(&d) {
            Some(data) => {
                let mut slot = Some(c);
                blob(req, &mut slot, &d, data);
                if let Some(mut c) = slot {
                    c.blob(req, data);
                }
            }
            None => {
                let mut c = c;
                c.respond(
                    404,
                    &[],
                    br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#,
                )
            }
        },
        Route::Other => {
            let mut c = c;
            c.respond(404, &[], b"")
        }
    })
}

fn opts(store: &Store, base: &str) -> FetchOptions {
    let mut o = FetchOptions {
        parallel: 4,
        part_size: Some(64 << 10),
        retries: 4,
        backoff: Duration::from_millis(5),
        fsync: false,
        ..FetchOptions::default()
    };
    o.remote.base_url = Some(base.to_string());
    o.remote.store = Some(store.clone());
    o.remote.stall_timeout = Duration::from_millis(400);
    o.remote.connect_timeout = Duration::from_secs(2);
    o.remote.docker_config = Some("/nonexistent/config.json".into());
    o
}

fn pull(m: &Model, store: &Store, o: &FetchOptions) -> Result<(ModelDoc, FetchReport), Error> {
    let mut doc = resolve_remote(&m.name, &o.remote)?;
    let r = fetch_blob(&mut doc, store, o)?;
    Ok((doc, r))
}

fn assert_nothing_stored(store: &Store, m: &Model) {
    assert!(
        !store.blob_path(&m.big).exists(),
        "blob stored under its final name"
    );
    assert!(!store.manifest_path(&m.name).exists(), "manifest written");
}

#[test]
fn pulls_and_writes_manifest_last() {
    let m = Arc::new(model(300_000));
    let srv = registry_server(m.clone(), |_, _, _, _| {});
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let o = opts(&store, &srv.url());
    let doc = resolve_remote(&m.name, &o.remote).unwrap();
    assert_eq!(doc.manifest_text.as_deref(), Some(m.manifest.as_str()));
    assert_eq!(doc.extra["registry"]["url"], srv.url());
    assert!(doc.blobs().all(|b| !b.present));
    assert!(
        files_under(dir.path()).is_empty(),
        "resolve_remote wrote something"
    );
    let (doc, report) = pull(&m, &store, &o).unwrap();
    assert!(doc
        .blobs()
        .all(|b| b.present && b.path.as_ref().unwrap().exists()));
    assert_eq!(doc.manifest_text, None);
    assert_eq!(
        doc.layer(media::TEMPLATE).unwrap().text.as_deref(),
        Some("{{ .Prompt }}")
    );
    assert_eq!(
        std::fs::read_to_string(store.manifest_path(&m.name)).unwrap(),
        m.manifest
    );
    assert_eq!(
        std::fs::read(store.blob_path(&m.big)).unwrap(),
        m.blobs[&m.big.to_string()]
    );
    assert_eq!(report.blobs_fetched, 3);
    // 300 000 bytes in 64 KiB parts: ranged requests, no leftovers
    assert!(srv
        .requests()
        .iter()
        .any(|r| r.range() == Some((65536, 131071))));
    for f in files_under(&store.blobs_dir()) {
        assert!(
            Digest::from_blob_file_name(&f.to_string_lossy()).is_ok(),
            "leftover {f:?}"
        );
    }
    // a second pull fetches nothing
    let blob_gets = |srv: &FaultServer| {
        srv.requests()
            .iter()
            .filter(|r| r.path.contains("/blobs/"))
            .count()
    };
    let before = blob_gets(&srv);
    let (_, r2) = pull(&m, &store, &o).unwrap();
    assert_eq!((r2.blobs_fetched, blob_gets(&srv)), (0, before));
}

/// Parts larger than a worker's buffer, not aligned to it, fetched by one
/// to several workers: bytes reach the hasher from buffers (in order) and
/// from the file (ahead of the frontier); any slip is a digest mismatch.
#[test]
fn multi_megabyte_parts_hash_in_order() {
    let m = Arc::new(model(5_500_000));
    let srv = registry_server(m.clone(), |_, _, _, _| {});
    for (parallel, part) in [
        (1, None),
        (1, Some(1_500_001)),
        (3, Some(1_500_001)),
        (8, Some(700_000)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let mut o = opts(&store, &srv.url());
        o.parallel = parallel;
        o.part_size = part;
        let (_, r) = pull(&m, &store, &o).unwrap();
        assert!(
            r.bytes_fetched >= 5_500_000 && r.bytes_fetched < 5_600_000,
            "{r:?}"
        );
        assert_eq!(
            std::fs::read(store.blob_path(&m.big)).unwrap(),
            m.blobs[&m.big.to_string()],
            "parallel {parallel}, part {part:?}"
        );
    }
}

#[test]
fn reset_mid_body_resumes_from_what_was_written() {
    let m = Arc::new(model(400_000));
    let big = m.big.to_string();
    let n = Arc::new(AtomicUsize::new(0));
    let srv = registry_server(m.clone(), move |req, c, d, data| {
        if d == big && n.fetch_add(1, Ordering::SeqCst) == 1 {
            let mut conn = c.take().unwrap();
            let (a, b) = req.range().unwrap();
            let cr = format!("bytes {a}-{b}/{}", data.len());
            conn.head(
                206,
                &[
                    ("Content-Range", cr),
                    ("Content-Length", (b - a + 1).to_string()),
                ],
            );
            conn.body(&data[a as usize..a as usize + 20_000]);
            std::thread::sleep(Duration::from_millis(50));
            conn.reset();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let (_, report) = pull(&m, &store, &opts(&store, &srv.url())).unwrap();
    assert_eq!(
        std::fs::read(store.blob_path(&m.big)).unwrap(),
        m.blobs[&m.big.to_string()]
    );
    // the retry asked only for the rest of the part
    let resumed = srv
        .requests()
        .iter()
        .filter_map(Req::range)
        .any(|(a, _)| a % 65536 == 20_000);
    assert!(
        resumed,
        "no request resumed mid-part: {:?}",
        srv.requests().iter().map(Req::range).collect::<Vec<_>>()
    );
    assert!(
        report.bytes_fetched <= 400_000 + 20_000 + 1000,
        "{report:?}"
    );
}

#[test]
fn stall_is_detected_and_retried() {
    let m = Arc::new(model(200_000));
    let big = m.big.to_string();
    let n = Arc::new(AtomicUsize::new(0));
    let srv = registry_server(m.clone(), move |req, c, d, data| {
        if d == big && n.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut conn = c.take().unwrap();
            let (a, b) = req.range().unwrap();
            conn.head(
                206,
                &[
                    ("Content-Range", format!("bytes {a}-{b}/{}", data.len())),
                    ("Content-Length", (b - a + 1).to_string()),
                ],
            );
            conn.body(&data[a as usize..a as usize + 1000]);
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let t0 = Instant::now();
    pull(&m, &store, &opts(&store, &srv.url())).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "stall not detected: {:?}",
        t0.elapsed()
    );
    assert!(store.blob_path(&m.big).exists());
}

/// A cancel set mid-download (here from the progress callback, as serve
/// sets it when its client goes away) stops the workers between reads: the
/// registry is not read further, the partial file is removed and no
/// manifest is written.
#[test]
fn cancel_stops_the_download_and_leaves_nothing() {
    let m = Arc::new(model(4_000_000));
    let big = m.big.to_string();
    let gone = Arc::new(AtomicUsize::new(0));
    let g = gone.clone();
    // the big blob trickles out, 10 KB every 10 ms, as one whole GET
    let srv = registry_server(m.clone(), move |req, c, d, data| {
        if d == big {
            let mut conn = c.take().unwrap();
            assert_eq!(req.range(), None);
            conn.head(200, &[("Content-Length", data.len().to_string())]);
            for piece in data.chunks(10_000) {
                if !conn.body(piece) {
                    g.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut o = opts(&store, &srv.url());
    o.part_size = None;
    let cancel = registry::Cancel::new();
    let at = Arc::new(Mutex::new(None));
    let (c, want, at2) = (cancel.clone(), m.big.clone(), at.clone());
    o.on_progress = Some(registry::Progress::new(move |d, done, _| {
        if *d == want && done > 0 && !c.is_canceled() {
            *at2.lock().unwrap() = Some(Instant::now());
            c.cancel();
        }
    }));
    o.cancel = Some(cancel);
    let e = pull(&m, &store, &o).unwrap_err();
    let took = at.lock().unwrap().expect("never canceled").elapsed();
    assert!(matches!(e, Error::Canceled { .. }), "{e}");
    assert!(e.to_string().ends_with(": canceled"), "{e}");
    assert!(
        took < Duration::from_millis(500),
        "stopped {took:?} after the cancel"
    );
    assert_nothing_stored(&store, &m);
    let partial: Vec<_> = files_under(&store.blobs_dir())
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(registry::PARTIAL_SUFFIX))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
    // the registry sees the connection closed long before the end of the blob
    let t0 = Instant::now();
    while gone.load(Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(3), "still sending");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(srv.sent() < 3_000_000, "{} bytes sent", srv.sent());
}

#[test]
fn server_errors_are_retried_then_given_up() {
    let m = Arc::new(model(100_000));
    let big = m.big.to_string();
    let n = Arc::new(AtomicUsize::new(0));
    let srv = registry_server(m.clone(), move |_, c, d, _| {
        if d == big && n.fetch_add(1, Ordering::SeqCst) < 3 {
            c.take().unwrap().respond(503, &[], b"busy");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    pull(&m, &store, &opts(&store, &srv.url())).unwrap();
    assert!(store.blob_path(&m.big).exists());

    let m2 = Arc::new(model(100_000));
    let big = m2.big.to_string();
    let srv = registry_server(m2.clone(), move |_, c, d, _| {
        if d == big {
            c.take().unwrap().respond(
                500,
                &[],
                br#"{"errors":[{"code":"UNKNOWN","message":"boom"}]}"#,
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let e = pull(&m2, &store, &opts(&store, &srv.url())).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Status { status: 500, .. }), "{msg}");
    assert!(
        msg.contains(&m2.big.to_string())
            && msg.contains(&srv.url())
            && msg.contains("UNKNOWN boom"),
        "{msg}"
    );
    assert_nothing_stored(&store, &m2);
}

#[test]
fn wrong_bytes_never_get_the_name() {
    let m = Arc::new(model(150_000));
    let big = m.big.to_string();
    let srv = registry_server(m.clone(), move |req, c, d, data| {
        if d == big {
            let mut evil = data.to_vec();
            evil[100_000] ^= 1;
            c.take().unwrap().blob(req, &evil);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let e = pull(&m, &store, &opts(&store, &srv.url())).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&m.big.to_string()), "{e}");
    assert_nothing_stored(&store, &m);
    let left: Vec<_> = files_under(&store.blobs_dir())
        .into_iter()
        .filter(|f| f.to_string_lossy().contains(m.big.hex()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn more_bytes_than_declared_is_an_error() {
    for close_delimited in [false, true] {
        let m = Arc::new(model(50_000));
        let big = m.big.to_string();
        let srv = registry_server(m.clone(), move |_, c, d, data| {
            if d == big {
                let mut conn = c.take().unwrap();
                let mut more = data.to_vec();
                more.extend_from_slice(&[0u8; 10]);
                if close_delimited {
                    conn.head(200, &[]);
                    conn.body(&more);
                } else {
                    conn.respond(200, &[], &more);
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let mut o = opts(&store, &srv.url());
        o.part_size = None; // one whole GET
        let e = pull(&m, &store, &o).unwrap_err();
        assert!(
            e.to_string().contains("more than") || e.to_string().contains("bytes where"),
            "{e}"
        );
        assert_nothing_stored(&store, &m);
    }
}

#[test]
fn lying_416_does_not_hang() {
    let m = Arc::new(model(200_000));
    let big = m.big.to_string();
    let srv = registry_server(m.clone(), move |req, c, d, _| {
        if d == big && req.range().is_some_and(|(a, _)| a > 0) {
            let mut conn = c.take().unwrap();
            conn.head(416, &[("Content-Length", "200000".into())]);
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let t0 = Instant::now();
    let e = pull(&m, &store, &opts(&store, &srv.url())).unwrap_err();
    assert!(e.to_string().contains("416"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_nothing_stored(&store, &m);
}

fn manifest_server(
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    close_delimited: bool,
) -> FaultServer {
    serve(move |_, mut c| {
        if close_delimited {
            c.head(status, &headers);
            c.body(&body);
        } else {
            c.respond(status, &headers, &body);
        }
    })
}

fn resolve_err(srv: &FaultServer, name: &str) -> (Error, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let o = opts(&store, &srv.url());
    let e = resolve_remote(&Name::parse(name).unwrap(), &o.remote).unwrap_err();
    (e, dir)
}

#[test]
fn oversized_and_compressed_manifests_are_refused() {
    let ct = ("Content-Type", media::DOCKER_MANIFEST.to_string());
    let mut huge = b"{\"schemaVersion\":2,\"x\":\"".to_vec();
    huge.resize((4 << 20) + 10, b'a');
    huge.extend_from_slice(b"\"}");
    for close in [false, true] {
        let srv = manifest_server(200, vec![ct.clone()], huge.clone(), close);
        let (e, dir) = resolve_err(&srv, "h/n/m:t");
        assert!(e.to_string().contains("limit"), "{e}");
        assert!(files_under(dir.path()).is_empty());
    }
    // a gzip bomb: 64 MiB of zeros in ~64 KiB, sent whatever Accept-Encoding said
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, &vec![0u8; 64 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    let srv = manifest_server(
        200,
        vec![ct, ("Content-Encoding", "gzip".into())],
        bomb,
        false,
    );
    let (e, _) = resolve_err(&srv, "h/n/m:t");
    assert!(e.to_string().contains("Content-Encoding gzip"), "{e}");
}

/// HOSTILE row 1 (CVE-2024-37032): traversal digests; nothing is requested or written.
#[test]
fn traversal_digests_write_nothing() {
    let evil = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"../../../../../../../../../../../../../etc/shadow","size":10},"layers":[{"mediaType":"application/vnd.ollama.image.license","digest":"../../../../../../../../../../../../../etc/passwd","size":10}]}"#;
    for body in [evil.to_string(), evil.replace("\"../", "\"sha256:../")] {
        let srv = manifest_server(
            200,
            vec![("Content-Type", media::DOCKER_MANIFEST.into())],
            body.into_bytes(),
            false,
        );
        let (e, dir) = resolve_err(&srv, "h/n/m:t");
        assert!(
            matches!(e, Error::BadManifest { .. } | Error::Store(_)),
            "{e}"
        );
        assert!(files_under(dir.path()).is_empty());
        assert_eq!(srv.requests().len(), 1, "only the manifest was requested");
    }
}

/// HOSTILE row 4: config and layer share a digest; the blob answer is 25 bytes for size 5.
#[test]
fn duplicate_digest_is_still_verified() {
    let five = b"hello";
    let d = Digest::of_bytes(five);
    let man = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{d}","size":5}},"layers":[{{"mediaType":"{}","digest":"{d}","size":5}}]}}"#,
        media::DOCKER_MANIFEST,
        media::DOCKER_CONFIG,
        media::MODEL
    );
    let srv = serve(move |req, mut c| match route(req) {
        Route::Manifest => c.respond(
            200,
            &[("Content-Type", media::DOCKER_MANIFEST.into())],
            man.as_bytes(),
        ),
        _ => c.respond(
            200,
            &[("Location", "http://10.0.0.1/internal".into())],
            b"0123456789012345678901234",
        ),
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let o = opts(&store, &srv.url());
    let name = Name::parse("h/n/m:t").unwrap();
    let mut doc = resolve_remote(&name, &o.remote).unwrap();
    let e = fetch_blob(&mut doc, &store, &o).unwrap_err();
    assert!(e.to_string().contains("25 bytes where 5"), "{e}");
    assert!(!store.blob_path(&d).exists());
    let blob_gets = srv
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/"))
        .count();
    assert_eq!(blob_gets, 1, "the shared digest is fetched once");
}

/// A registry that requires `Bearer T` from its own /token, redirecting blobs to `cdn`.
fn token_registry(m: Arc<Model>, cdn: Option<String>, realm: Option<String>) -> FaultServer {
    let me: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let me2 = me.clone();
    let srv = serve(move |req, mut c| {
        let base = me2.lock().unwrap().clone();
        if req.path.starts_with("/token") {
            return c.respond(200, &[], br#"{"token":"T"}"#);
        }
        if req.header("authorization") != Some("Bearer T") {
            let realm = realm.clone().unwrap_or(format!("{base}/token"));
            let ch = format!(
                r#"Bearer realm="{realm}",service="test",scope="repository:library/m:pull""#
            );
            return c.respond(401, &[("WWW-Authenticate", ch)], b"");
        }
        match route(req) {
            Route::Manifest => c.respond(
                200,
                &[("Content-Type", media::DOCKER_MANIFEST.into())],
                m.manifest.as_bytes(),
            ),
            Route::Blob(d) => match &cdn {
                Some(cdn) => c.respond(307, &[("Location", format!("{cdn}/cdn/{d}"))], b""),
                None => c.blob(req, &m.blobs[&d]),
            },
            Route::Other => c.respond(404, &[], b""),
        }
    });
    *me.lock().unwrap() = srv.url();
    srv
}

/// HOSTILE rows 8, 11 (and CVE-2025-51471's redirect half): a 307 to another
/// origin drops Authorization, and it is not restored later in the chain.
#[test]
fn redirect_to_another_origin_drops_authorization() {
    let m = Arc::new(model(100_000));
    let m2 = m.clone();
    let back: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let back2 = back.clone();
    // the "CDN": serves some blobs itself, bounces the config back to the registry's origin
    let cdn = serve(move |req, mut c| {
        let d = req.path.rsplit('/').next().unwrap_or("").to_string();
        if m2.blobs[&d].len() < 1000 && !req.path.contains("bounced") {
            let to = format!("{}/cdn/bounced/{d}", back2.lock().unwrap());
            return c.respond(302, &[("Location", to)], b"");
        }
        c.blob(req, &m2.blobs[&d]);
    });
    let reg = token_registry(m.clone(), Some(cdn.url()), None);
    *back.lock().unwrap() = reg.url();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    // the registry answers /cdn/bounced/* with 401 unless no Authorization… it must see none
    let e = pull(&m, &store, &opts(&store, &reg.url()));
    for r in cdn.requests() {
        assert_eq!(
            r.header("authorization"),
            None,
            "credentials sent to the CDN: {r:?}"
        );
    }
    let bounced: Vec<Req> = reg
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/cdn/bounced/"))
        .collect();
    assert!(!bounced.is_empty());
    for r in &bounced {
        assert_eq!(
            r.header("authorization"),
            None,
            "credentials restored after leaving the origin: {r:?}"
        );
    }
    assert!(reg
        .requests()
        .iter()
        .any(|r| r.path.contains("/blobs/") && r.header("authorization") == Some("Bearer T")));
    // the bounce lands on a 401 without credentials: a clean error naming the blob
    let e = e.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
}

/// CVE-2025-51471 and issue 14: a token realm on another origin is asked
/// anonymously; the credentials never reach it.
#[test]
fn token_realm_on_another_origin_gets_no_credentials() {
    let m = Arc::new(model(1000));
    let evil = serve(|_, mut c| c.respond(200, &[], br#"{"token":"T"}"#));
    // another port on the same host, and another host name for the same address
    for realm in [
        format!("{}/token", evil.url()),
        format!("http://localhost:{}/token", evil.addr.port()),
    ] {
        let reg = token_registry(m.clone(), None, Some(realm));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let mut o = opts(&store, &reg.url());
        o.remote.credentials = Some(registry::Credentials {
            username: "u".into(),
            password: "secret".into(),
        });
        o.remote.trusted_realms = Some(vec![]);
        resolve_remote(&m.name, &o.remote).unwrap();
    }
    let asked = evil.requests();
    assert_eq!(asked.len(), 2);
    for r in asked {
        assert_eq!(r.header("authorization"), None, "credentials sent: {r:?}");
    }
    // the same-origin realm works, with anonymous tokens
    let reg = token_registry(m.clone(), None, None);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    pull(&m, &store, &opts(&store, &reg.url())).unwrap();
    assert!(reg
        .requests()
        .iter()
        .any(|r| r.path.starts_with("/token?") && r.path.contains("scope=repository")));
}

#[test]
fn malformed_challenge_is_a_clean_error() {
    for ch in [
        "Bearer realm=",
        "Bearer realm=\"unterminated",
        "Bearer service=\"x,realm=http://evil/t\"",
    ] {
        let srv = serve(move |_, mut c| c.respond(401, &[("WWW-Authenticate", ch.into())], b""));
        let (e, _) = resolve_err(&srv, "h/n/m:t");
        assert!(matches!(e, Error::Auth(_)), "{ch}: {e}");
        assert_eq!(srv.requests().len(), 1);
    }
}

#[test]
fn status_errors_name_model_and_registry() {
    for (status, word) in [
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not found"),
        (412, "newer client"),
        (418, "418"),
    ] {
        let srv = manifest_server(status, vec![], b"{}".to_vec(), false);
        let (e, _) = resolve_err(&srv, "h/n/m:t");
        let msg = e.to_string();
        assert!(
            msg.contains(word) && msg.contains("n/m:t") && msg.contains(&srv.url()),
            "{status}: {msg}"
        );
        assert!(!msg.contains('\n'));
    }
}

#[test]
fn tls_failure_is_reported_as_tls() {
    let srv = serve(|_, mut c| c.respond(200, &[], b"plain http"));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut o = opts(&store, &srv.url().replace("http://", "https://"));
    o.remote.insecure = false;
    let e = resolve_remote(&Name::parse("h/n/m:t").unwrap(), &o.remote).unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("TLS"), "{e}");
}

/// A self-signed certificate is a TLS error naming model and registry, on
/// one line, and no request reaches the server.
#[test]
fn self_signed_certificate_is_a_tls_error() {
    let tls = self_signed_tls_server();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut o = opts(&store, &tls.url());
    o.remote.insecure = false;
    let e = resolve_remote(&Name::parse("h/n/m:t").unwrap(), &o.remote).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Tls { .. }), "{e:?}");
    assert!(
        msg.contains("TLS") && msg.contains("n/m:t") && msg.contains(&tls.url()),
        "{msg}"
    );
    assert!(
        msg.contains("certificate") || msg.contains("Certificate"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert!(!e.is_retryable());
}

/// A host that cannot resolve (RFC 6761 reserves `.invalid`) is a DNS
/// error naming model and registry, over https (ureq) and http (our client).
#[test]
fn unresolvable_host_is_a_dns_error() {
    for base in [
        "https://nonexistent.invalid",
        "http://nonexistent.invalid:5000",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let o = opts(&store, base);
        let e = resolve_remote(
            &Name::parse("nonexistent.invalid/n/m:t").unwrap(),
            &o.remote,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::Dns { .. }), "{base}: {e:?}");
        assert!(
            msg.contains("cannot resolve")
                && msg.contains("n/m:t")
                && msg.contains(base)
                && !msg.contains('\n'),
            "{msg}"
        );
        assert!(files_under(dir.path()).is_empty());
    }
}

#[test]
fn concurrent_fetchers_download_once() {
    let m = Arc::new(model(1_000_000));
    let big = m.big.to_string();
    let big2 = big.clone();
    let per_digest: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let pd = per_digest.clone();
    let srv = registry_server(m.clone(), move |req, c, d, data| {
        // throttled, so the two fetchers overlap
        let mut conn = c.take().unwrap();
        let (a, b) = req.range().unwrap_or((0, data.len() as u64 - 1));
        let slice = &data[a as usize..=b as usize];
        let cr = format!("bytes {a}-{b}/{}", data.len());
        let status = if req.range().is_some() { 206 } else { 200 };
        conn.head(
            status,
            &[
                ("Content-Range", cr),
                ("Content-Length", slice.len().to_string()),
            ],
        );
        for ch in slice.chunks(16 << 10) {
            if !conn.body(ch) {
                return;
            }
            *pd.lock().unwrap().entry(d.to_string()).or_default() += ch.len() as u64;
            if d == big2 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let o = opts(&store, &srv.url());
    let mut doc = resolve_remote(&m.name, &o.remote).unwrap();
    let mut doc2 = doc.clone();
    std::thread::scope(|s| {
        let a = s.spawn(|| fetch_blob(&mut doc, &store, &o).map(|_| ()));
        let b = s.spawn(|| fetch_blob(&mut doc2, &store, &o).map(|_| ()));
        a.join().unwrap().unwrap();
        b.join().unwrap().unwrap();
    });
    assert_eq!(
        per_digest.lock().unwrap()[&big],
        1_000_000,
        "the big blob was downloaded more than once"
    );
    assert_eq!(
        std::fs::read(store.blob_path(&m.big)).unwrap(),
        m.blobs[&big]
    );
}

// ---- kill -9 ----

/// Not a test on its own: the child process of `kill9_at_random_points_then_resume`.
/// Without LLPIPE_CHILD_PULL it returns at once.
#[test]
fn child_pull_helper() {
    let Ok(spec) = std::env::var("LLPIPE_CHILD_PULL") else {
        return;
    };
    let (url, root, name) = {
        let mut it = spec.split('|');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    let store = Store::open(&root);
    let mut o = opts(&store, &url);
    o.part_size = Some(KILL_PART);
    o.parallel = 3;
    let mut doc = resolve_remote(&Name::parse(&name).unwrap(), &o.remote).unwrap();
    fetch_blob(&mut doc, &store, &o).unwrap();
}

const KILL_SIZE: usize = 32 << 20;
const KILL_PART: u64 = 4 << 20;

#[test]
fn kill9_at_random_points_then_resume() {
    let m = Arc::new(model(KILL_SIZE));
    let big = m.big.to_string();
    let big2 = big.clone();
    let big_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let big_sent2 = big_sent.clone();
    let srv = registry_server(m.clone(), move |req, c, d, data| {
        if d != big2 {
            return;
        }
        // ~16 MB/s per connection in small writes, so the client always keeps up
        let mut conn = c.take().unwrap();
        let (a, b) = req.range().unwrap();
        let cr = format!("bytes {a}-{b}/{}", data.len());
        conn.head(
            206,
            &[
                ("Content-Range", cr),
                ("Content-Length", (b - a + 1).to_string()),
            ],
        );
        for ch in data[a as usize..=b as usize].chunks(32 << 10) {
            if !conn.body(ch) {
                return;
            }
            big_sent2.fetch_add(ch.len() as u64, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let exe = std::env::current_exe().unwrap();
    let spec = format!("{}|{}|{}", srv.url(), dir.path().display(), m.name);
    let mut seed = 0x9e3779b97f4a7c15u64 ^ u64::from(std::process::id());
    let mut kills = 0;
    for _ in 0..3 {
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "child_pull_helper",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("LLPIPE_CHILD_PULL", &spec)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(80 + seed % 120));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let st = child.wait().unwrap();
        if st.code().is_none() {
            kills += 1;
        }
        assert!(
            !store.blob_path(&m.big).exists() || st.code() == Some(0),
            "final name appeared before completion"
        );
    }
    assert!(kills >= 1, "no child was killed mid-pull");
    let (doc, report) = pull(&m, &store, &opts_kill(&store, &srv.url())).unwrap();
    assert!(doc.blobs().all(|b| b.present));
    assert_eq!(
        std::fs::read(store.blob_path(&m.big)).unwrap(),
        m.blobs[&big],
        "blob differs after resume"
    );
    let total = big_sent.load(Ordering::Relaxed);
    let refetched = total.saturating_sub(KILL_SIZE as u64);
    assert!(
        refetched <= kills * KILL_PART,
        "re-fetched {refetched} bytes over {kills} interruptions (part {KILL_PART}); last run {report:?}"
    );
    assert!(report.bytes_resumed > 0, "{report:?}");
}

fn opts_kill(store: &Store, url: &str) -> FetchOptions {
    let mut o = opts(store, url);
    o.part_size = Some(KILL_PART);
    o.parallel = 3;
    o
}

/// HOSTILE row 14: a symlink planted as the partial file or the blob is refused, never written through.
#[test]
fn planted_symlinks_are_refused() {
    let m = Arc::new(model(100_000));
    let srv = registry_server(m.clone(), |_, _, _, _| {});
    for target_is_partial in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("models"));
        std::fs::create_dir_all(store.blobs_dir()).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let planted = if target_is_partial {
            store.blobs_dir().join(format!(
                "{}{}",
                m.big.blob_file_name(),
                registry::PARTIAL_SUFFIX
            ))
        } else {
            store.blob_path(&m.big)
        };
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = pull(&m, &store, &opts(&store, &srv.url())).unwrap_err();
        assert!(matches!(e, Error::Io { .. } | Error::Store(_)), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!store.manifest_path(&m.name).exists());
    }
}

/// A registry that ignores Range (200 with the whole blob): refetched once as a whole.
#[test]
fn registry_without_range_support() {
    let m = Arc::new(model(300_000));
    let big = m.big.to_string();
    let srv = registry_server(m.clone(), move |_, c, d, data| {
        if d == big {
            c.take().unwrap().respond(200, &[], data);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    pull(&m, &store, &opts(&store, &srv.url())).unwrap();
    assert_eq!(
        std::fs::read(store.blob_path(&m.big)).unwrap(),
        m.blobs[&m.big.to_string()]
    );
    let gets: Vec<Option<(u64, u64)>> = srv
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(m.big.hex()))
        .map(Req::range)
        .collect();
    assert!(
        gets.first().is_some_and(Option::is_some) && gets.last() == Some(&None),
        "{gets:?}"
    );
}
