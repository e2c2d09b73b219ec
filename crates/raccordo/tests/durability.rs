//! Acknowledged data survives `kill -9`; shutdown drains; a saturated writer answers 429.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::*;
use tokio::sync::Notify;

const CONVERSION: &str = "/api/v1/eventi/conversione";

/// What one client request sent and what it was told.
struct Sent {
    customers: Vec<String>,
    payloads: Vec<Value>,
    acked_ids: Option<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_kill_9_exactly_once_and_batches_stay_whole() {
    kill_9_under_load_keeps_acknowledged_events_exactly_once("").await;
}

/// With 4 KiB segments the log rolls over every few requests and seals segments (their
/// sidecars written in the background) all through the run, so the kill lands in or
/// between roll-overs and sidecar writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_kill_9_during_segment_roll_overs() {
    let dir =
        kill_9_under_load_keeps_acknowledged_events_exactly_once("segment_bytes = 4096\n").await;
    let segments = std::fs::read_dir(dir.path().join("data/raccordo.segments"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(
        segments > 20,
        "the log rolled over all through the run: {segments} segments"
    );
}

/// Sends from 16 clients until 3000 events are acknowledged, kills the hub with `kill -9`,
/// restarts it and checks every request: all or nothing stored, acknowledged ones present
/// once under their id. Returns the data directory.
async fn kill_9_under_load_keeps_acknowledged_events_exactly_once(
    storage: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_configured(dir.path(), storage);
    let url = server.url(CONVERSION);
    let acked_events = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    const CLIENTS: usize = 16;
    const KILL_AFTER: usize = 3000;

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        let acked_events = acked_events.clone();
        let enough = enough.clone();
        clients.push(tokio::spawn(async move {
            let http = client();
            let mut sent = Vec::new();
            // Each client keeps sending until the server is gone (bounded by 100k requests).
            for r in 0..100_000usize {
                let size = if r % 3 == 0 { 1 + (r % 17) } else { 1 };
                let payloads: Vec<Value> = (0..size)
                    .map(|i| {
                        let mut e = event(0);
                        e["id_cliente"] = json!(format!(
                            "CLIENTE-CRASH-{:02}{:04}",
                            c,
                            (r * 20 + i) % 10_000
                        ));
                        e["valore"] = json!(((r * 20 + i) % 10_000) as f64 / 100.0);
                        e["metadati"]["campagna"] = json!(format!("c{c}-r{r}-i{i}"));
                        e
                    })
                    .collect();
                let body = if size == 1 {
                    payloads[0].clone()
                } else {
                    Value::Array(payloads.clone())
                };
                let customers = payloads
                    .iter()
                    .map(|p| p["metadati"]["campagna"].as_str().unwrap().to_string())
                    .collect();
                let response = http
                    .post(&url)
                    .header("x-api-key", API_KEY)
                    .json(&body)
                    .send()
                    .await;
                let acked_ids = match response {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => {
                                sent.push(Sent {
                                    customers,
                                    payloads,
                                    acked_ids: None,
                                });
                                break;
                            }
                        };
                        let items = if size == 1 {
                            vec![v]
                        } else {
                            v.as_array().unwrap().clone()
                        };
                        assert!(
                            items.iter().all(|i| i["status"] == "accepted"),
                            "unique events: {items:?}"
                        );
                        Some(
                            items
                                .iter()
                                .map(|i| i["id"].as_str().unwrap().to_string())
                                .collect(),
                        )
                    }
                    Ok(r) => panic!("unexpected status {} before the crash", r.status()),
                    Err(_) => None,
                };
                let done = acked_ids.is_none();
                if let Some(ids) = &acked_ids {
                    let ids: &Vec<String> = ids;
                    if acked_events.fetch_add(ids.len(), Ordering::SeqCst) + ids.len() >= KILL_AFTER
                    {
                        enough.notify_one();
                    }
                }
                sent.push(Sent {
                    customers,
                    payloads,
                    acked_ids,
                });
                if done {
                    break;
                }
            }
            sent
        }));
    }
    enough.notified().await;
    server.kill9();
    let mut sent = Vec::new();
    for c in clients {
        sent.extend(c.await.unwrap());
    }

    let server = Server::start(
        dir.path(),
        &[
            "--config",
            dir.path().join("raccordo.toml").to_str().unwrap(),
        ],
    );
    let stored = all_events(&server).await;

    let mut by_tag: HashMap<String, Vec<&Value>> = HashMap::new();
    for e in &stored {
        by_tag
            .entry(
                e["payload"]["metadati"]["campagna"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default()
            .push(e);
    }
    let ids: HashSet<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), stored.len(), "no event id is stored twice");

    let mut acked = 0;
    let mut unacked_stored = 0;
    for request in &sent {
        let present: Vec<bool> = request
            .customers
            .iter()
            .map(|t| by_tag.contains_key(t))
            .collect();
        // A request is one transaction: all of its events are stored or none.
        assert!(
            present.iter().all(|p| *p) || present.iter().all(|p| !*p),
            "half-written batch {:?}",
            request.customers
        );
        for (i, tag) in request.customers.iter().enumerate() {
            if let Some(copies) = by_tag.get(tag) {
                assert_eq!(copies.len(), 1, "{tag} stored {} times", copies.len());
                assert_eq!(
                    copies[0]["payload"], request.payloads[i],
                    "stored payload differs from the sent one"
                );
            }
        }
        match &request.acked_ids {
            Some(ids) => {
                for (i, tag) in request.customers.iter().enumerate() {
                    let copy = by_tag
                        .get(tag)
                        .unwrap_or_else(|| panic!("acknowledged event {tag} lost"));
                    assert_eq!(
                        copy[0]["id"].as_str().unwrap(),
                        ids[i],
                        "stored under the acknowledged id"
                    );
                    acked += 1;
                }
            }
            None => unacked_stored += present.iter().filter(|p| **p).count(),
        }
    }
    assert!(
        acked >= KILL_AFTER,
        "the crash came after {KILL_AFTER} acknowledged events, saw {acked}"
    );
    assert_eq!(
        stored.len(),
        acked + unacked_stored,
        "everything stored was sent"
    );
    eprintln!(
        "kill -9 after {acked} acknowledged events; {unacked_stored} committed but unacknowledged; {} stored",
        stored.len()
    );
    dir
}

/// Holds the event log's freeze lock (as a backup tool would), so the hub's writer blocks
/// before its next commit; released when the file is dropped.
fn lock_database(server: &Server) -> std::fs::File {
    let lock = std::fs::File::open(
        server
            .database()
            .with_extension("segments")
            .join("freeze.lock"),
    )
    .unwrap();
    lock.lock().unwrap();
    lock
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_configured(dir.path(), "");
    assert_eq!(send_event(&server, 1).await, StatusCode::ACCEPTED);
    let lock = lock_database(&server);
    let url = server.url(CONVERSION);
    let in_flight = tokio::spawn(async move {
        client()
            .post(url)
            .header("x-api-key", API_KEY)
            .json(&event(2))
            .send()
            .await
    });
    // Wait until the server reports the request in progress (it is blocked on the writer).
    loop {
        if metric(&server, "raccordo_ingest_in_flight_requests").await == Some(1.0) {
            break;
        }
        tokio::task::yield_now().await;
    }
    let terminate = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    });
    // Shutdown has begun but cannot finish while the request is in flight; release it.
    drop(lock);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "the in-flight request completed"
    );
    let (status, server) = terminate.await.unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        server
            .stdout
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"stopped\""))
    );
    drop(server);
    let server = Server::start(
        dir.path(),
        &[
            "--config",
            dir.path().join("raccordo.toml").to_str().unwrap(),
        ],
    );
    assert_eq!(all_events(&server).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_writer_answers_429_with_retry_after_and_stores_only_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "queue_capacity = 1");
    // Create the database tables first.
    assert_eq!(send_event(&server, 0).await, StatusCode::ACCEPTED);
    let lock = lock_database(&server);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for n in 1..=6u32 {
        let url = server.url(CONVERSION);
        let tx = tx.clone();
        tokio::spawn(async move {
            let r = client()
                .post(url)
                .header("x-api-key", API_KEY)
                .json(&event(n))
                .send()
                .await
                .unwrap();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            let _ = tx.send((status, retry_after, body));
        });
    }
    // The writer holds at most one group and the queue one request, so at least three of the
    // six must be refused while the lock is held.
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(rx.recv().await.unwrap());
    }
    for (status, retry_after, body) in &answers {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["type"], "urn:raccordo:problem:overloaded");
        assert!(
            retry_after
                .as_deref()
                .is_some_and(|s| s.parse::<u64>().unwrap() >= 1)
        );
    }
    drop(lock);
    for _ in 3..6 {
        answers.push(rx.recv().await.unwrap());
    }
    let accepted = answers
        .iter()
        .filter(|a| a.0 == StatusCode::ACCEPTED)
        .count();
    assert!(
        answers
            .iter()
            .all(|a| a.0 == StatusCode::ACCEPTED || a.0 == StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(all_events(&server).await.len(), 1 + accepted);
    assert!(
        metric(
            &server,
            "raccordo_ingest_rejected_total{source=\"web\",reason=\"overloaded\"}"
        )
        .await
        .unwrap()
            >= 3.0
    );
}
