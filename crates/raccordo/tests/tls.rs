//! HTTPS in the real binary, with certificates made in the test: HTTP/1.1 and HTTP/2 over
//! TLS, the redirect listener, a certificate reload without dropping an open connection,
//! and mutual TLS per source (a valid certificate of another source is refused).

mod support;

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::Value;
use support::*;

struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn authority(name: &str) -> Authority {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Authority {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate and its key, both PEM.
struct Leaf {
    cert: String,
    key: String,
}

fn leaf(ca: &Authority, common_name: &str, sans: &[&str], client: bool) -> Leaf {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn write_server_pair(dir: &Path, pair: &Leaf) {
    // Certificate and key in one file, replaced by a rename: the hub never sees half a pair.
    std::fs::write(
        dir.join("server.pem.tmp"),
        format!("{}{}", pair.cert, pair.key),
    )
    .unwrap();
    std::fs::rename(dir.join("server.pem.tmp"), dir.join("server.pem")).unwrap();
}

fn client(root: &Authority, identity: Option<&Leaf>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10));
    if let Some(leaf) = identity {
        builder = builder.identity(
            reqwest::Identity::from_pem(format!("{}{}", leaf.cert, leaf.key).as_bytes()).unwrap(),
        );
    }
    builder.build().unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    server: Server,
    server_ca: Authority,
    partner_a: Authority,
    partner_b: Authority,
    redirect_port: u16,
}

impl Setup {
    fn start() -> Setup {
        Self::start_checking_every("100ms")
    }

    fn start_checking_every(reload_check_every: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = authority("Hub test CA");
        let partner_a = authority("Partner A CA");
        let partner_b = authority("Partner B CA");
        write_server_pair(
            dir.path(),
            &leaf(&server_ca, "hub", &["localhost", "127.0.0.1"], false),
        );
        std::fs::write(dir.path().join("partner-a-ca.pem"), &partner_a.pem).unwrap();
        std::fs::write(dir.path().join("partner-b-ca.pem"), &partner_b.pem).unwrap();
        let redirect_port = free_port();
        let config = format!(
            r#"
[server]
data_dir = "data"

[server.tls]
cert_file = "server.pem"
key_file = "server.pem"
redirect_listen = "127.0.0.1:{redirect_port}"
reload_check_every = "{reload_check_every}"

[sources.web]
auth = [{{ type = "api_key", keys = ["{API_KEY}"] }}]

[sources.partner-a]
auth = [{{ type = "api_key", keys = ["partner-a-key-0123456789"] }}]
client_certificate = {{ ca_file = "partner-a-ca.pem", names = ["hooks.partner-a.example"] }}

[sources.partner-b]
auth = [{{ type = "api_key", keys = ["partner-b-key-0123456789"] }}]
client_certificate = {{ ca_file = "partner-b-ca.pem", names = ["partner-b"] }}

[[admin.tokens]]
name = "dashboard"
token = "{READ_TOKEN}"
scopes = ["read"]

[[admin.tokens]]
name = "ops"
token = "{ADMIN_TOKEN}"
scopes = ["admin"]
"#
        );
        std::fs::write(dir.path().join("raccordo.toml"), config).unwrap();
        let server = Server::start(dir.path(), &["--config", "raccordo.toml"]);
        Setup {
            server,
            server_ca,
            partner_a,
            partner_b,
            redirect_port,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.server.addr.port())
    }
}

async fn post_event(client: &reqwest::Client, url: &str, key: &str, n: u32) -> (u16, Value) {
    let response = client
        .post(url)
        .header("x-api-key", key)
        .json(&event(n))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_http1_and_http2_and_plain_http_only_redirects() {
    let setup = Setup::start();
    let https = client(&setup.server_ca, None);

    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(setup.server_ca.pem.as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();
    let response = h1.get(setup.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);

    // reqwest offers h2 by ALPN; the hub takes it.
    let response = https.get(setup.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let (status, body) =
        post_event(&https, &setup.url("/api/v1/eventi/conversione"), API_KEY, 1).await;
    assert_eq!(status, 202, "{body}");

    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        plain
            .get(format!(
                "http://127.0.0.1:{}/healthz",
                setup.server.addr.port()
            ))
            .send()
            .await
            .is_err(),
        "the TLS port must not answer plain HTTP"
    );

    // The redirect listener answers 308 to the same path over HTTPS, and nothing else.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, path) in [
        ("GET", "/dashboard?x=1"),
        ("POST", "/api/v1/eventi/conversione"),
    ] {
        let response = no_follow
            .request(
                method.parse().unwrap(),
                format!("http://localhost:{}{path}", setup.redirect_port),
            )
            .header("x-api-key", API_KEY)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 308, "{method} {path}");
        assert_eq!(
            response.headers()["location"],
            format!("https://localhost:{}{path}", setup.server.addr.port()).as_str()
        );
    }
    // Nothing was stored through the redirect listener: one event in all.
    let events: Value = https
        .get(setup.url("/api/v1/events?limit=10"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_binds_a_certificate_to_its_source() {
    let setup = Setup::start();
    let a_url = setup.url("/webhooks/in/partner-a");
    let a_key = "partner-a-key-0123456789";
    let partner_a_cert = leaf(
        &setup.partner_a,
        "a-client",
        &["hooks.partner-a.example"],
        true,
    );
    let partner_b_cert = leaf(&setup.partner_b, "partner-b", &[], true);

    // The right certificate (named by its DNS alternative name): accepted.
    let a = client(&setup.server_ca, Some(&partner_a_cert));
    let (status, body) = post_event(&a, &a_url, a_key, 1).await;
    assert_eq!(status, 202, "{body}");

    // No certificate: the handshake allows it (other sources need none), the source does not.
    let none = client(&setup.server_ca, None);
    let (status, body) = post_event(&none, &a_url, a_key, 2).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["type"],
        "urn:raccordo:problem:client-certificate-refused"
    );
    // ...while a source without mutual TLS still takes it.
    let (status, _) = post_event(&none, &setup.url("/api/v1/eventi/conversione"), API_KEY, 3).await;
    assert_eq!(status, 202);

    // A valid certificate of partner B, with partner A's key: refused by A, taken by B.
    let b = client(&setup.server_ca, Some(&partner_b_cert));
    let (status, body) = post_event(&b, &a_url, a_key, 4).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["type"],
        "urn:raccordo:problem:client-certificate-refused"
    );
    let (status, body) = post_event(
        &b,
        &setup.url("/webhooks/in/partner-b"),
        "partner-b-key-0123456789",
        5,
    )
    .await;
    assert_eq!(status, 202, "{body}");

    // Partner A's CA, but a name partner A's source does not list.
    let stranger = leaf(
        &setup.partner_a,
        "intern-laptop",
        &["laptop.partner-a.example"],
        true,
    );
    let (status, body) =
        post_event(&client(&setup.server_ca, Some(&stranger)), &a_url, a_key, 6).await;
    assert_eq!(status, 403, "{body}");

    // A certificate from a CA no source trusts fails the handshake itself.
    let rogue_ca = authority("Rogue CA");
    let rogue = leaf(
        &rogue_ca,
        "hooks.partner-a.example",
        &["hooks.partner-a.example"],
        true,
    );
    assert!(
        client(&setup.server_ca, Some(&rogue))
            .post(&a_url)
            .header("x-api-key", a_key)
            .json(&event(7))
            .send()
            .await
            .is_err(),
        "a certificate no configured CA issued must not complete the handshake"
    );

    // Refusals are counted per source and reason.
    let metrics = none
        .get(setup.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("raccordo_ingest_rejected_total")
                && l.contains("source=\"partner-a\"")
                && l.contains("client-certificate-refused")
        })
        .unwrap_or_else(|| panic!("no refusal counter in {metrics}"));
    assert!(refused.ends_with(" 3"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_certificate_is_served_without_dropping_open_connections() {
    let setup = Setup::start();
    // One connection, kept alive across the reload.
    let kept = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(setup.server_ca.pem.as_bytes()).unwrap()])
        .http1_only()
        .pool_max_idle_per_host(1)
        .tls_info(true)
        .build()
        .unwrap();
    let first = kept.get(setup.url("/healthz")).send().await.unwrap();
    let before = served_certificate(&first);

    // A new certificate from another CA: old clients will not trust it, new ones will.
    let next_ca = authority("Hub test CA, next");
    write_server_pair(
        &setup.server.dir,
        &leaf(&next_ca, "hub-next", &["localhost"], false),
    );
    let fresh = client(&next_ca, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = fresh.get(setup.url("/healthz")).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The kept connection still works, on the certificate it started with.
    let again = kept.get(setup.url("/healthz")).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(served_certificate(&again), before, "the same connection");

    // A broken pair leaves the current certificate in place.
    std::fs::write(setup.server.dir.join("server.pem"), "not a certificate").unwrap();
    let failed = setup.server.log_line(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("TLS certificate not reloaded"))
    });
    assert_eq!(failed["level"], "ERROR");
    let r = client(&next_ca, None)
        .get(setup.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn served_certificate(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("tls info")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_certificate() {
    // Files are checked only hourly here: the signal alone must do it.
    let setup = Setup::start_checking_every("1h");
    let next_ca = authority("Hub test CA, after SIGHUP");
    write_server_pair(
        &setup.server.dir,
        &leaf(&next_ca, "hub-next", &["localhost"], false),
    );
    let fresh = client(&next_ca, None);
    assert!(
        fresh.get(setup.url("/healthz")).send().await.is_err(),
        "not reloaded before the signal"
    );
    setup.server.signal("HUP");
    setup
        .server
        .log_line(|l| l["message"] == "TLS certificate reloaded");
    let r = fresh.get(setup.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The reload is in the audit log, as the hub's own action.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page: Value = fresh
            .get(setup.url("/api/v1/audit"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(record) = page["records"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["action"] == "tls.reload"))
        {
            assert_eq!(record["actor"], "system");
            assert_eq!(record["target"], "SIGHUP");
            assert_eq!(record["detail"]["loaded"], true);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit record: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One JSON-RPC call to the MCP endpoint; the result object (the answer may come as an
/// event stream).
async fn mcp_call(
    client: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    body: Value,
) -> (Option<String>, Value) {
    let mut request = client
        .post(url)
        .bearer_auth(READ_TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = response.text().await.unwrap();
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(&text)
        .to_string();
    (session, serde_json::from_str(&json).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mcp_endpoint_calls_the_hub_over_its_own_tls_listener() {
    let setup = Setup::start();
    let https = client(&setup.server_ca, None);
    let url = setup.url("/mcp");
    let (session, init) = mcp_call(
        &https,
        &url,
        None,
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {},
            "clientInfo": {"name": "tls-test", "version": "1"}}}),
    )
    .await;
    assert_eq!(init["result"]["serverInfo"]["name"], "raccordo", "{init}");
    let session = session.expect("a session id");
    let _ = https
        .post(&url)
        .bearer_auth(READ_TOKEN)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .json(&serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .send()
        .await
        .unwrap();
    // The tool calls the hub's own HTTPS API: it must trust the hub's certificate.
    let (_, called) = mcp_call(
        &https,
        &url,
        Some(&session),
        serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "query_metrics", "arguments": {}}}),
    )
    .await;
    assert_eq!(called["result"]["isError"], false, "{called}");
}
