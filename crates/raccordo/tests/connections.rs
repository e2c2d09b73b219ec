//! Connection abuse against the real binary: a normal client stays served while an idle
//! flood and a slowloris run from other addresses; the flood past the per-address cap is
//! refused with a clear `503`, and idle and slow connections are closed by the header-read
//! timeout.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(local: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    socket.connect(server).await.unwrap()
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(String::from_utf8_lossy(&seen).into_owned())
}

/// Starts the hub on `config` (the file's text) at a free loopback port; the server and
/// its port.
fn start_with(dir: &std::path::Path, config: &str) -> (Server, u16) {
    std::fs::write(dir.join("raccordo.toml"), config).unwrap();
    let port = free_port();
    let server = Server::start_on(
        dir,
        &format!("127.0.0.1:{port}"),
        &["--config", "raccordo.toml"],
    );
    (server, port)
}

fn client_from(local: &str) -> reqwest::Client {
    support::client_from(local, Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_stays_served_while_an_idle_flood_and_a_slowloris_run() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start_with(
        dir.path(),
        "[server]\ndata_dir = \"data\"\nheader_read_timeout = \"1s\"\nmax_connections_per_address = 20\n",
    );
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // The idle flood: 60 connections from 127.0.0.3 that never send a byte.
    let mut flood = Vec::new();
    for _ in 0..60 {
        flood.push(connect_from("127.0.0.3", target).await);
    }
    // The slowloris: 10 connections from 127.0.0.4 sending headers a byte every 200 ms.
    let slow: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = connect_from("127.0.0.4", target).await;
                let started = tokio::time::Instant::now();
                let _ = stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
                    .await;
                for _ in 0..100 {
                    if stream.write_all(b"a").await.is_err() {
                        break;
                    }
                    let mut probe = [0u8; 256];
                    // The server's close shows as a read of 0 bytes (or its timeout answer).
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(Duration::from_millis(200), stream.read(&mut probe))
                            .await
                    {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect();

    // Meanwhile a normal client from 127.0.0.2 is served every time.
    let normal = client_from("127.0.0.2");
    for _ in 0..15 {
        let answer = normal
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .expect("the normal client is answered during the flood");
        assert_eq!(answer.status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Past the per-address cap, the flood was refused at once, with a reason.
    let mut refused = 0;
    let mut timed_out = 0;
    for stream in &mut flood {
        match read_until_closed(stream, Duration::from_secs(5)).await {
            Some(text) if text.starts_with("HTTP/1.1 503") => {
                assert!(text.contains("connections open"), "{text}");
                assert!(
                    text.to_ascii_lowercase().contains("retry-after: 1"),
                    "{text}"
                );
                refused += 1;
            }
            // Admitted, then closed by the header-read timeout without an answer.
            Some(_) => timed_out += 1,
            None => panic!("an idle connection was still open after 5 s"),
        }
    }
    assert_eq!((refused, timed_out), (40, 20), "20 admitted per address");

    // Every slow sender was cut off by the header-read timeout (1 s), not left hanging.
    for task in slow {
        let held = task.await.unwrap();
        assert!(
            held < Duration::from_secs(5),
            "a slowloris connection was held {held:?}"
        );
    }
    let refusals = metric(
        &server,
        "raccordo_http_connections_refused_total{reason=\"address\"}",
    )
    .await;
    assert_eq!(refusals, Some(40.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_takes_only_its_allowed_addresses_and_believes_only_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let key = "allowlisted-api-key-0123456789";
    let (server, port) = start_with(
        dir.path(),
        &format!(
            "[server]\ndata_dir = \"data\"\ntrusted_proxies = [\"127.0.0.5\"]\n\n\
             [sources.crm]\nauth = [{{ type = \"api_key\", keys = [\"{key}\"] }}]\n\
             allow_from = [\"127.0.0.2/32\", \"2001:db8::/32\"]\n\n\
             [[admin.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN_TOKEN}\"\nscopes = [\"admin\"]\n"
        ),
    );
    let post = |from: &'static str, forwarded: Option<&'static str>, credentials: &'static str| async move {
        let client = client_from(from);
        let mut request = client
            .post(format!("http://127.0.0.1:{port}/api/v1/eventi/conversione"))
            .header("x-api-key", credentials)
            .header("x-raccordo-source", "crm")
            .json(&event(1));
        if let Some(f) = forwarded {
            request = request.header("x-forwarded-for", f);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        (status, answer.text().await.unwrap())
    };
    // From the allowed address: stored. From another: refused before its key is looked at.
    assert_eq!(post("127.0.0.2", None, key).await.0, 202);
    let (status, body) = post("127.0.0.3", None, key).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("address-not-allowed"), "{body}");
    assert_eq!(
        post("127.0.0.3", None, "a-wrong-key-0123456789").await.0,
        403
    );
    // A trusted proxy forwarding for the allowed address: believed. The same header from
    // anyone else: ignored.
    assert_eq!(post("127.0.0.5", Some("127.0.0.2"), key).await.0, 202);
    assert_eq!(post("127.0.0.3", Some("127.0.0.2"), key).await.0, 403);
    assert_eq!(
        post("127.0.0.5", Some("127.0.0.2, 127.0.0.9"), key).await.0,
        403,
        "the right-most untrusted hop is the client"
    );
    let refused = metric(
        &server,
        "raccordo_ingest_rejected_total{source=\"crm\",reason=\"address-not-allowed\"}",
    )
    .await;
    assert_eq!(refused, Some(4.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_over_its_rate_limit_gets_429_with_retry_after_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let key = "limited-api-key-0123456789";
    let (server, port) = start_with(
        dir.path(),
        &format!(
            "[server]\ndata_dir = \"data\"\n\n\
             [sources.crm]\nauth = [{{ type = \"api_key\", keys = [\"{key}\"] }}]\n\
             limits = {{ per_address_per_second = 1 }}\n"
        ),
    );
    let post = |from: &'static str, n: u32| async move {
        let client = client_from(from);
        client
            .post(format!("http://127.0.0.1:{port}/webhooks/in/crm"))
            .header("x-api-key", key)
            .json(&event(n))
            .send()
            .await
            .unwrap()
    };
    // A burst of two from one address passes; six in a row cannot all pass unless they
    // took four seconds, so one is turned away, with the wait.
    assert_eq!(post("127.0.0.2", 1).await.status(), 202);
    let mut limited = None;
    for n in 2..7 {
        let answer = post("127.0.0.2", n).await;
        if answer.status() == 429 {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status(), 202);
    }
    let limited = limited.expect("one of six quick requests over 1/s is limited");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let problem: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(problem["type"], "urn:raccordo:problem:rate-limited");
    // Another address has its own allowance.
    assert_eq!(post("127.0.0.3", 4).await.status(), 202);
    assert_eq!(
        metric(
            &server,
            "raccordo_ingest_rate_limited_total{source=\"crm\",limit=\"address\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_directory_and_everything_in_it_are_readable_by_the_hub_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    assert_eq!(send_event(&server, 1).await, reqwest::StatusCode::ACCEPTED);
    assert_eq!(all_events(&server).await.len(), 1);
    let data = dir.path().join("data");
    let mut seen = 0;
    let mut pending = vec![data.clone()];
    while let Some(path) = pending.pop() {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} is {:o}: group or others can read it",
            path.display(),
            mode & 0o777
        );
        seen += 1;
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(
        server.database().exists() && seen >= 4,
        "the database and the log's files were checked ({seen} paths)"
    );
}
