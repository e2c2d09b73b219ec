//! Faults found when the hub was tried under faults, each on the real binary: two processes
//! on one data directory, damaged bytes in the log, a full event log, oversized and
//! malformed requests on admin routes.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn a_second_hub_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_configured(dir.path(), "");
    let config = dir.path().join("raccordo.toml");
    let second = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run a second raccordo");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second process must exit");
    assert!(
        stderr.contains("another raccordo process") && stderr.contains("raccordo.db"),
        "a clear message naming the database: {stderr}"
    );
    // The first one is untouched and still takes events.
    assert_eq!(send_event(&first, 1).await, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_damaged_log_page_backs_off_and_shows_in_readiness_and_health() {
    let dir = tempfile::tempdir().unwrap();
    // No dedup claims (so only events fill the file) and no live checkpoint (so the
    // windows must replay the whole log at start).
    let extra = "[ingest.dedup]\ndelivery_id = false\nbusiness_key = false\n[metrics]\ncheckpoint_every = \"1h\"\n";
    let mut server = start_configured(dir.path(), extra);
    for round in 0..3u32 {
        let batch: Vec<Value> = (0..1000)
            .map(|n| {
                let mut e = event(round * 1000 + n);
                // One event in the middle of the log is findable in the file.
                let place = if round == 1 && n == 500 {
                    "MIDDLE-OF-THE-LOG".to_string()
                } else {
                    "x".repeat(120)
                };
                e["metadati"]["localita"] = json!(place);
                e
            })
            .collect();
        assert_eq!(send_batch(&server, &batch).await, StatusCode::ACCEPTED);
    }
    assert!(server.terminate().success());
    // Damage 4 KiB of the segment file around the marked event (its frame and neighbours).
    let segments = server.database().with_extension("segments");
    let (path, mut bytes, at) = std::fs::read_dir(&segments)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .find_map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            let at = bytes.windows(17).position(|w| w == b"MIDDLE-OF-THE-LOG")?;
            Some((p, bytes, at))
        })
        .expect("the marked event is in a segment file");
    let page = at / 4096 * 4096;
    bytes[page..page + 4096].fill(0xA5);
    std::fs::write(&path, &bytes).unwrap();

    let server = start_configured(dir.path(), extra);
    let ready = loop_until(|| async {
        let r = client().get(server.url("/readyz")).send().await.unwrap();
        (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    assert!(ready.headers().contains_key("retry-after"));
    let problem: Value = ready.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("live-tailer"),
        "{problem}"
    );
    // The log is read by its own thread: wait (bounded) for the three failures that made
    // the hub unready to be read, then check that there are not many more.
    let failures = || {
        server
            .stdout
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("background task failed"))
            .count()
    };
    let seen = loop_until(|| async { (failures() >= 3).then(failures) }).await;
    assert!(
        seen <= 6,
        "backs off instead of retrying at once: {seen} failures logged"
    );
    let health = get_json(&server, "/api/v1/ingest/health", READ_TOKEN).await;
    let tailer = health["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "live-tailer")
        .cloned()
        .unwrap();
    assert_eq!(tailer["state"], "backing_off", "{health}");
    assert!(
        tailer["last_error"]
            .as_str()
            .unwrap()
            .contains("unreadable"),
        "{tailer}"
    );
    // Ingestion itself still works: the damage is in old pages.
    assert_eq!(send_event(&server, 5).await, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_full_database_answers_503_with_retry_after_and_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "max_database_bytes = 400000\n");
    let batch: Vec<Value> = (0..500).map(event).collect();
    let mut last = None;
    for round in 0..200u32 {
        let batch: Vec<Value> = batch
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut e = e.clone();
                e["id_cliente"] = json!(format!("CLIENTE-FULL-{:06}", round * 500 + i as u32));
                e
            })
            .collect();
        let r = client()
            .post(server.url("/api/v1/eventi/conversione"))
            .header("x-api-key", API_KEY)
            .json(&batch)
            .send()
            .await
            .unwrap();
        if r.status() != StatusCode::ACCEPTED {
            last = Some(r);
            break;
        }
    }
    let full = last.expect("the database filled up");
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.headers()["content-type"], "application/problem+json");
    assert!(full.headers().contains_key("retry-after"));
    let problem: Value = full.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("full"),
        "{problem}"
    );
    let ready = client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.headers().contains_key("retry-after"));
    let health = get_json(&server, "/api/v1/ingest/health", READ_TOKEN).await;
    assert_eq!(health["ready"], false);
}

#[tokio::test]
async fn every_error_is_a_problem_and_bad_parameters_name_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    // The test config's body limit is 600 000 bytes. A body declared larger is refused
    // before it is read; the request goes out as bare headers on a raw socket, because a
    // client still writing 700 kB when the server answers and closes can see a broken pipe
    // instead of the answer (a race of the test, not of the server).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "PUT /api/v1/campaigns/black-friday/costs HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 700000\r\nconnection: close\r\n\r\n",
            server.addr
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(answer.starts_with("http/1.1 413"), "{answer}");
        assert!(
            answer.contains("content-type: application/problem+json"),
            "{answer}"
        );
    }

    let r = client()
        .get(server.url("/api/v1/events?limit=abc"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["parameters"][0]["parameter"], "limit", "{problem}");

    // Errors axum produces on its own: a path that does not parse, a wrong method.
    for (method, path) in [
        (reqwest::Method::POST, "/api/v1/dlq/not-a-number/replay"),
        (reqwest::Method::DELETE, "/api/v1/events"),
    ] {
        let r = client()
            .request(method.clone(), server.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_client_error(),
            "{method} {path}: {}",
            r.status()
        );
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("not-a-number"),
            "no echo of the input: {body}"
        );
    }
}

/// Polls `check` until it yields a value (bounded: 30 s).
async fn loop_until<T, F, Fut>(check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
