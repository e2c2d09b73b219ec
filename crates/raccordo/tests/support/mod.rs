//! Runs the real `raccordo` binary on a loopback port for black-box tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

pub mod crm;
#[cfg(feature = "postgres")]
pub mod pg;

pub const BIN: &str = env!("CARGO_BIN_EXE_raccordo");
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

pub const API_KEY: &str = "test-api-key-0123456789";
pub const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYqr";
pub const HS_SECRET: &str = "hs256-test-secret-0123456789abcdef0123";
pub const READ_TOKEN: &str = "read-token-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

pub struct Server {
    child: Child,
    /// The threads copying stdout/stderr; they end at EOF, after the process exits.
    readers: Vec<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// With `RACCORDO_TEST_LOG_DIR` set (CI sets it), every line a test hub prints is also
/// appended to a file there, so that CI can check the whole run's output for the tests'
/// secrets (`.ci/secrets-in-logs`).
fn log_copy() -> Option<Arc<Mutex<std::fs::File>>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(std::env::var_os("RACCORDO_TEST_LOG_DIR")?);
    std::fs::create_dir_all(&dir).ok()?;
    let name = format!(
        "{}-{}-{}.log",
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
        std::process::id(),
        STARTED.fetch_add(1, Ordering::Relaxed)
    );
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .ok()?;
    Some(Arc::new(Mutex::new(file)))
}

fn drain(
    reader: impl std::io::Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    found: Option<std::sync::mpsc::Sender<SocketAddr>>,
    copy: Option<Arc<Mutex<std::fs::File>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if let Some(file) = &copy {
                use std::io::Write;
                let _ = writeln!(file.lock().unwrap(), "{line}");
            }
            if let (Some(tx), Ok(v)) = (&found, serde_json::from_str::<Value>(&line))
                && v["message"] == "listening"
                && let Some(addr) = v["addr"].as_str().and_then(|a| a.parse().ok())
            {
                let _ = tx.send(addr);
            }
            lines.lock().unwrap().push(line);
        }
    })
}

impl Server {
    /// Starts `raccordo serve` with `args` in `dir` and waits until it is listening.
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        Self::start_on(dir, "127.0.0.1:0", args)
    }

    /// [`Server::start`] on a given address (for tests whose peers must know it first).
    pub fn start_on(dir: &Path, listen: &str, args: &[&str]) -> Server {
        Self::start_with(dir, listen, args, &[])
    }

    /// [`Server::start_on`] with environment variables of its own (tests of one binary run
    /// in one process: a variable set for one test's hubs must not reach another's).
    pub fn start_with(dir: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", listen])
            .args(args)
            .current_dir(dir)
            // `RACCORDO_TEST_RUST_LOG` turns more on when a test needs looking into.
            .env(
                "RUST_LOG",
                std::env::var("RACCORDO_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("RACCORDO_CONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn raccordo");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let copy = log_copy();
        let readers = vec![
            drain(
                child.stdout.take().unwrap(),
                stdout.clone(),
                Some(tx),
                copy.clone(),
            ),
            drain(child.stderr.take().unwrap(), stderr.clone(), None, copy),
        ];
        // A bounded wait for the "listening" log line (it is a start-up failure otherwise).
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "raccordo did not start: {:?} {:?}",
                    stdout.lock().unwrap(),
                    stderr.lock().unwrap()
                );
            }
        };
        Server {
            child,
            readers,
            addr,
            dir: dir.to_path_buf(),
            stdout,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a signal by name (`HUP`, `USR1`, ...) without waiting for anything.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        // The reader threads end at EOF: after this, every line the process printed is in.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        exit
    }

    pub fn database(&self) -> PathBuf {
        self.dir.join("data/raccordo.db")
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The first JSON log line on stdout matching `want` (bounded wait: stdout is read by its
    /// own thread).
    pub fn log_line(&self, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| want(v));
            if let Some(line) = found {
                return line;
            }
            assert!(std::time::Instant::now() < deadline, "no matching log line");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stderr once it contains `needle` (bounded wait: stderr is read by its own thread).
    pub fn stderr_containing(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.stderr_text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "stderr never showed {needle:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The config used by most tests: one source per auth scheme, and admin tokens.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    std::fs::write(
        dir.join("lead.schema.json"),
        r#"{"type":"object","required":["email","at"],"properties":{"email":{"type":"string","format":"email"},"at":{"type":"string","format":"date-time"}}}"#,
    )
    .unwrap();
    let storage = postgres_storage(dir);
    let text = format!(
        r#"
[server]
data_dir = "data"
max_body_bytes = 600000

[storage]
durability = "fsync"{storage}
{extra}

[sources.web]
auth = [
  {{ type = "api_key", keys = ["{API_KEY}"] }},
  {{ type = "standard_webhooks", secrets = ["{WHSEC}"] }},
]

[sources.jwt-hs]
auth = [{{ type = "jwt", secret = "${{TEST_HS_SECRET}}", issuer = ["crm.example"], audience = ["raccordo"], leeway = "5s" }}]

[sources.jwt-rs]
auth = [{{ type = "jwt", public_key_file = "{FIXTURES}/rsa_public.pem" }}]

[sources.jwt-es]
auth = [{{ type = "jwt", jwks_file = "{FIXTURES}/jwks.json" }}]

[sources.leads]
schema = "lead.schema.json"
key_fields = ["/email"]
time_field = "/at"
auth = [{{ type = "api_key", keys = ["leads-api-key-0123456789"] }}]

[sources.off]
enabled = false
auth = [{{ type = "api_key", keys = ["off-api-key-0123456789"] }}]

[[admin.tokens]]
name = "dashboard"
token = "{READ_TOKEN}"
scopes = ["read"]

[[admin.tokens]]
name = "ops"
token = "{ADMIN_TOKEN}"
scopes = ["admin"]

# The emulators and capture servers of the tests listen on loopback over plain http.
[outbound]
allow_internal = ["127.0.0.1"]
allow_http = ["127.0.0.1"]
"#
    );
    let path = dir.join("raccordo.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// With `RACCORDO_TEST_BACKEND=postgres` (a build with the `postgres` feature) the standard
/// test config puts every store on the local PostgreSQL, in a schema of its own per test
/// directory (kept in `pg-schema`, so a restarted hub finds its data); with `cluster` (the
/// `cluster` feature) Redis goes in front, under a key prefix named after that schema, and
/// the log is relayed to a NATS stream of that name. The black-box tests then run against a
/// cluster-mode node.
fn postgres_storage(dir: &Path) -> String {
    let backend = match std::env::var("RACCORDO_TEST_BACKEND").as_deref() {
        Ok("postgres") => "postgres",
        Ok("cluster") => "cluster",
        _ => return String::new(),
    };
    let marker = dir.join("pg-schema");
    let schema = std::fs::read_to_string(&marker).unwrap_or_else(|_| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let name = format!("raccordo_test_{}_{}", now.as_secs(), now.subsec_nanos());
        std::fs::write(&marker, &name).unwrap();
        name
    });
    let url = std::env::var("RACCORDO_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into());
    let redis = if backend == "cluster" {
        let url = std::env::var("RACCORDO_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let nats =
            std::env::var("RACCORDO_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        // RACCORDO_TEST_NODE_WINDOWS=true: each node also keeps windows over the whole log
        // (by default the partitions' windows are the cluster's only ones).
        let node_windows = std::env::var("RACCORDO_TEST_NODE_WINDOWS")
            .map(|on| format!(", node_windows = {on}"))
            .unwrap_or_default();
        format!(
            "\nredis = {{ url = \"{url}\", key_prefix = \"{schema}:\" }}\nstream = {{ url = \"{nats}\", name = \"{}\", subject_prefix = \"{schema}\", max_age = \"1h\"{node_windows} }}",
            schema.to_uppercase()
        )
    } else {
        String::new()
    };
    // On the `durability` line's end: the file's line numbers stay those of the embedded
    // config (tests assert them).
    format!(
        "\nbackend = \"{backend}\"\npostgres = {{ url = \"{url}\", schema = \"{schema}\" }}{redis}"
    )
}

/// Starts a server on the standard test config.
pub fn start_configured(dir: &Path, extra: &str) -> Server {
    let config = write_config(dir, extra);
    // SAFETY: tests set this variable to the same value before spawning children only.
    unsafe { std::env::set_var("TEST_HS_SECRET", HS_SECRET) };
    Server::start(dir, &["--config", config.to_str().unwrap()])
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now_rfc3339(offset_ms: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(offset_ms);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// The Standard Webhooks headers of a delivery `id` of `body` at `ts`, signed with `secret`.
pub fn signed(secret: &str, id: &str, ts: i64, body: &[u8]) -> [(String, String); 3] {
    let secret = raccordo_ingest::auth::WebhookSecret::parse(secret).unwrap();
    [
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.to_string()),
        ("webhook-signature".into(), secret.sign(id, ts, body)),
    ]
}

/// A valid conversion event for customer number `n`.
pub fn event(n: u32) -> Value {
    json!({
        "id_cliente": format!("CLIENTE-TEST-{n:06}"),
        "evento": "acquisto_concluso",
        "timestamp": now_rfc3339(-1000),
        "valore": 49.9,
        "canale": "email",
        "stato": "completato",
        "metadati": {"campagna": "test", "dispositivo": "desktop", "localita": "Roma"}
    })
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An HTTP client whose connections come from `local` (another loopback address: another
/// client, as far as the hub can tell).
pub fn client_from(local: &str, timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .timeout(timeout)
        .build()
        .unwrap()
}

/// Posts conversion event `n` with the test API key; returns the status.
pub async fn send_event(server: &Server, n: u32) -> reqwest::StatusCode {
    send_batch(server, &event(n)).await
}

/// Posts any body to the conversion route with the test API key; returns the status.
pub async fn send_batch(server: &Server, body: &impl serde::Serialize) -> reqwest::StatusCode {
    client()
        .post(server.url("/api/v1/eventi/conversione"))
        .header("x-api-key", API_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// `GET path` with a bearer token, as JSON.
pub async fn get_json(server: &Server, path: &str, token: &str) -> Value {
    client()
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `GET path` until `done` holds for the answer (bounded: a condition with a deadline,
/// not a pause).
pub async fn poll_json(
    server: &Server,
    path: &str,
    token: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    // Generous: on a cluster node a watermark arrives as each partition's owner publishes
    // it, which took 17 s of a former 20 s limit on a loaded CI machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body = get_json(server, path, token).await;
        if done(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never reached the expected state: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET /api/v1/metrics?{query}` until `done` holds for its rows.
pub async fn metrics_until(
    server: &Server,
    query: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let rows = |body: &Value| body["rows"].as_array().cloned().unwrap_or_default();
    let body = poll_json(
        server,
        &format!("/api/v1/metrics?{query}"),
        READ_TOKEN,
        |b| done(&rows(b)),
    )
    .await;
    rows(&body)
}

/// All stored events, through the admin API with cursor paging.
pub async fn all_events(server: &Server) -> Vec<Value> {
    let client = client();
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = server.url("/api/v1/events?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    events
}

/// The value of a Prometheus series (first line that starts with `prefix`).
pub async fn metric(server: &Server, prefix: &str) -> Option<f64> {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A minimal HTTP server on loopback answering every request with `body` (a JWKS for the
/// tests); counts the requests it served.
pub fn serve_json(body: String) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                body.len(),
                body
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (addr, hits)
}

/// A request captured by [`capture_http`].
#[derive(Debug, Clone)]
pub struct Captured {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP receiver that answers the given statuses in turn (then 200) and keeps
/// every request it got.
pub fn capture_http(statuses: Vec<u16>) -> (SocketAddr, Arc<Mutex<Vec<Captured>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            let (head_end, length) = loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break (None, 0),
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                }
                if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    break (Some(end + 4), length);
                }
            };
            let Some(head_end) = head_end else { continue };
            while data.len() < head_end + length {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&data[..head_end]).to_string();
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| {
                    l.split_once(':')
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                })
                .collect();
            log.lock().unwrap().push(Captured {
                headers,
                body: data[head_end..].to_vec(),
            });
            let status = statuses.next().unwrap_or(200);
            let response =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (addr, seen)
}

/// Waits (bounded) until `seen` holds at least `n` requests.
pub async fn wait_for_requests(seen: &Arc<Mutex<Vec<Captured>>>, n: usize) -> Vec<Captured> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} requests arrived",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The interpreter with the official SDKs, or `None` on a laptop without them.
pub fn sdk_python() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("RACCORDO_SDK_PYTHON")
        .map(std::path::PathBuf::from)
        .filter(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "RACCORDO_SDK_PYTHON must point at a Python with the SDKs in CI (.ci/run sets it up)"
        );
        eprintln!(
            "SKIPPED: set RACCORDO_SDK_PYTHON to a Python with sdk-tests/requirements.txt installed; this test runs in CI"
        );
    }
    found
}

/// A real SMTP server (aiosmtpd, with STARTTLS on the fixture certificate) that prints what
/// it receives; stopped when dropped. `None` on a laptop without aiosmtpd (in CI a missing
/// one fails).
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    received: Arc<Mutex<String>>,
}

impl SmtpSink {
    pub async fn start() -> Option<SmtpSink> {
        let python = "/usr/bin/python3";
        let ok = Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "python3-aiosmtpd is required in CI (.ci/run installs it)"
            );
            eprintln!(
                "SKIPPED: aiosmtpd is not installed (apt-get install python3-aiosmtpd); this test runs in CI"
            );
            return None;
        }
        let port = free_port();
        let mut child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args([
                "--tlscert",
                &format!("{FIXTURES}/smtp_cert.pem"),
                "--tlskey",
                &format!("{FIXTURES}/smtp_key.pem"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let received = Arc::new(Mutex::new(String::new()));
        let sink = received.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(SmtpSink {
            child,
            port,
            received,
        })
    }

    /// Everything received so far (headers and bodies).
    pub fn text(&self) -> String {
        self.received.lock().unwrap().clone()
    }

    /// [`SmtpSink::text`] with quoted-printable bodies decoded (soft line breaks joined,
    /// `=XX` escapes turned back into bytes).
    pub fn decoded_text(&self) -> String {
        let raw = self.text().replace("=\n", "");
        let bytes = raw.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'=', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The `[sync.digest]`/`[[alerts.channels]]` e-mail settings for this server.
    pub fn email_settings(&self) -> String {
        format!(
            r#"host = "127.0.0.1", port = {}, tls = "starttls", from = "raccordo <sync@raccordo.test>", to = ["revops@raccordo.test"], ca_file = "{FIXTURES}/smtp_cert.pem""#,
            self.port
        )
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium, or `None` on a laptop without it. In CI (`CI` set) a missing browser fails.
pub fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI (.ci/run installs it)"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium); this test runs in CI"
        );
    }
    found
}

pub fn headless(browser: &str, extra: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
        ])
        .args([
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=5000", "--window-size=1366,900"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap()
}

/// Reads Server-Sent Events until `done(event, data)` holds (bounded by a deadline).
pub async fn sse_until(
    response: &mut reqwest::Response,
    buffer: &mut String,
    done: impl Fn(&str, &Value) -> bool,
) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let event = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("message")
                .to_string();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if let Ok(data) = serde_json::from_str::<Value>(&data)
                && done(&event, &data)
            {
                return (event, data);
            }
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("the stream went quiet")
            .unwrap()
            .unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}
