//! Two hub nodes on one PostgreSQL database (`[storage] backend = "postgres"`, or `"cluster"`
//! with Redis in front when `RACCORDO_TEST_BACKEND=cluster`): the same
//! conversions sent to both are stored once, and a node killed with `kill -9` mid-load loses
//! nothing it acknowledged — the client's retries go to the other node, and nothing is
//! stored twice. Built and run with the `postgres` feature (CI runs
//! `cargo test -p raccordo --features postgres --test cluster`).
#![cfg(feature = "postgres")]

mod support;

use std::collections::HashMap;

use serde_json::Value;
use support::pg::{database, drop_schema, fresh_schema};
use support::{ADMIN_TOKEN, API_KEY, READ_TOKEN, Server, client, event};

/// `cluster` (Redis in front) when the tests run so, else `postgres` alone.
fn backend() -> &'static str {
    match std::env::var("RACCORDO_TEST_BACKEND").as_deref() {
        Ok("cluster") => "cluster",
        _ => "postgres",
    }
}

/// The storage of a node of the hub whose tables are in `schema`.
fn storage(schema: &str) -> String {
    format!(
        r#"
[storage]
backend = "{backend}"

[storage.postgres]
url = "{url}"
schema = "{schema}"

[storage.redis]
url = "{redis}"
key_prefix = "{schema}:"

[storage.stream]
url = "{nats}"
name = "{stream}"
subject_prefix = "{schema}"
max_age = "1h"
"#,
        nats = nats_url(),
        stream = schema.to_uppercase(),
        backend = backend(),
        url = database(),
        redis = std::env::var("RACCORDO_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    )
}

fn nats_url() -> String {
    std::env::var("RACCORDO_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Every event the stream holds, read from the start (ticks left out); panics on one read
/// twice.
#[cfg(feature = "cluster")]
async fn events_in_stream(stream: &dyn raccordo_core::ConversionStream) -> usize {
    let mut read = raccordo_core::LogPositions::default();
    let mut ids = std::collections::HashSet::new();
    loop {
        let items = stream.read(&read, 1_000, None).await.unwrap();
        if items.is_empty() {
            return ids.len();
        }
        for item in items {
            read.advance(item.position);
            if let Some(e) = item.event {
                assert!(ids.insert(e.id), "{} is in the stream twice", e.id);
            }
        }
    }
}

/// Waits until `stream` holds the `in_log` events of the log, each once.
#[cfg(feature = "cluster")]
async fn stream_holds(stream: &dyn raccordo_core::ConversionStream, in_log: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let held = events_in_stream(stream).await;
        assert!(
            held <= in_log,
            "{held} events in the stream, {in_log} in the log"
        );
        if held == in_log {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{held} of {in_log} events in the stream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// With `cluster` nodes, waits until the conversion stream holds every event of the log
/// (business-key duplicates too: the metrics count them) — each once: the relay moved to
/// another leader when one died, and it skipped what the dead one had published.
async fn stream_holds_the_log(schema: &str) {
    #[cfg(feature = "cluster")]
    if backend() == "cluster" {
        let (client, connection) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let in_log: i64 = client
            .query_one(&format!("SELECT count(*) FROM {schema}.events"), &[])
            .await
            .unwrap()
            .get(0);
        let mut options = raccordo_log_nats::StreamOptions::new(nats_url());
        options.stream = schema.to_uppercase();
        options.subject_prefix = schema.to_string();
        options.max_age = std::time::Duration::from_secs(3600);
        let stream = raccordo_log_nats::NatsStream::open(&options).await.unwrap();
        stream_holds(&stream, in_log as usize).await;
    }
    let _ = schema;
}

/// The final windows of every stream partition (saved by their owners as they fire), merged
/// per window, dimension and value: events, conversions, active customers, value in cents.
#[cfg(feature = "cluster")]
async fn merged_partition_windows(
    schema: &str,
) -> std::collections::BTreeMap<(i64, String, String), (u64, u64, u64, i64)> {
    let (client, connection) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut merged = std::collections::BTreeMap::new();
    for row in client
        .query(
            &format!(
                "SELECT window_start, dimension, value, stats FROM {schema}.window_results
                 WHERE scope LIKE 'live/p%'"
            ),
            &[],
        )
        .await
        .unwrap()
    {
        let stats: Value = serde_json::from_str(row.get::<_, &str>(3)).unwrap();
        let customers = &stats["active_customers"]["Counted"]["count"];
        let entry = merged
            .entry((
                row.get::<_, i64>(0),
                row.get::<_, String>(1),
                row.get::<_, String>(2),
            ))
            .or_insert((0, 0, 0, 0));
        entry.0 += stats["events"].as_u64().unwrap();
        entry.1 += stats["conversions"].as_u64().unwrap();
        entry.2 += customers.as_u64().unwrap_or_else(|| panic!("{stats}"));
        entry.3 += stats["total_value_cents"].as_i64().unwrap();
    }
    merged
}

/// The source and admin tokens every hub of these tests has.
fn sources_and_tokens() -> String {
    format!(
        r#"
[sources.web]
auth = [{{ type = "api_key", keys = ["{API_KEY}"] }}]

[[admin.tokens]]
name = "dashboard"
token = "{READ_TOKEN}"
scopes = ["read"]

[[admin.tokens]]
name = "ops"
token = "{ADMIN_TOKEN}"
scopes = ["admin"]
"#
    )
}

/// The key the nodes of these tests seal CRM tokens with (32 bytes, base64).
const SECRET_KEY: &str = "MTJlOGY2ZjQ0YjE0ZmM2MzAyZDM5NjBiNmY3ZWEyZTI=";

/// A hub on `config`, listening on `listen` (default: any free port), sealing with `key`.
fn start_keyed(config: &str, listen: Option<&str>, key: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("raccordo.toml"), config).unwrap();
    let server = Server::start_with(
        dir.path(),
        listen.unwrap_or("127.0.0.1:0"),
        &["--config", "raccordo.toml"],
        &[("RACCORDO_SECRET_KEY", key)],
    );
    (dir, server)
}

fn start(config: &str, listen: Option<&str>) -> (tempfile::TempDir, Server) {
    start_keyed(config, listen, SECRET_KEY)
}

fn node(schema: &str) -> (tempfile::TempDir, Server) {
    let config = format!(
        "[server]\ndata_dir = \"data\"\n{}{}",
        storage(schema),
        sources_and_tokens()
    );
    start(&config, None)
}

async fn post(addr: std::net::SocketAddr, body: &Value) -> Option<u16> {
    client()
        .post(format!("http://{addr}/api/v1/eventi/conversione"))
        .header("x-api-key", API_KEY)
        .json(body)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Whether the node logged that it leads.
fn leads(node: &Server) -> bool {
    node.stdout.lock().unwrap().iter().any(|line| {
        serde_json::from_str::<Value>(line)
            .is_ok_and(|l| l["message"] == "leadership changed" && l["leading"] == true)
    })
}

/// Every stored event (duplicates left out, as the query API gives them), by business key
/// (customer, event, time).
async fn stored(server: &Server) -> HashMap<String, usize> {
    let mut by_customer = HashMap::new();
    let mut cursor = String::new();
    loop {
        let page: Value = client()
            .get(server.url(&format!("/api/v1/events?limit=1000{cursor}")))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"));
        for e in events {
            let p = &e["payload"];
            *by_customer
                .entry(format!(
                    "{}|{}|{}",
                    p["id_cliente"], p["evento"], p["timestamp"]
                ))
                .or_insert(0) += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return by_customer,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_store_each_conversion_once_and_a_killed_node_loses_nothing_acknowledged() {
    let Some(schema) = fresh_schema() else {
        return;
    };
    let (_dir_a, mut a) = node(&schema);
    // A, first up, takes the leader lease (it runs the singleton tasks: alert rules,
    // schedules, pollers); B joins and does not.
    a.log_line(|l| l["message"] == "leadership changed" && l["leading"] == true);
    let (_dir_b, b) = node(&schema);
    b.log_line(|l| l["message"] == "taking part in the leader election");
    assert!(!leads(&b), "one leader at a time");
    let (addr_a, addr_b) = (a.addr, b.addr);

    // 300 conversions to A; the last 150 of them to B as well, at the same time (a sender
    // retrying on another node): those must be stored once.
    let bodies: Vec<Value> = (0..300).map(event).collect();
    let acked_by_a = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let send = |addr,
                range: std::ops::Range<usize>,
                acked: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>| {
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            for n in range {
                if post(addr, &bodies[n]).await == Some(202) {
                    if let Some(acked) = &acked {
                        acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                } else {
                    unanswered.push(n);
                }
            }
            unanswered
        })
    };
    let to_a = send(addr_a, 0..300, Some(acked_by_a.clone()));
    let to_b = send(addr_b, 150..300, None);
    // Node A dies mid-load, once it has acknowledged 60 conversions.
    while acked_by_a.load(std::sync::atomic::Ordering::SeqCst) < 60 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    a.kill9();
    let lost_on_a = to_a.await.unwrap();
    let lost_on_b = to_b.await.unwrap();
    assert!(
        !lost_on_a.is_empty(),
        "A was killed before the end of its load"
    );
    assert!(lost_on_a.len() < 300, "A acknowledged some before it died");
    assert!(lost_on_b.is_empty(), "B answered everything: {lost_on_b:?}");
    // The sender retries what A never answered on B; what A acknowledged is not resent.
    for n in &lost_on_a {
        assert_eq!(post(addr_b, &bodies[*n]).await, Some(202));
    }

    // Every conversion is stored exactly once, whichever node took it first: what A
    // acknowledged before dying (and nobody resent) is there.
    let on_b = stored(&b).await;
    assert_eq!(on_b.len(), 300, "every conversion is stored");
    assert!(
        on_b.values().all(|n| *n == 1),
        "none twice: {:?}",
        on_b.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );

    // With A gone, B takes the lease over once A's runs out; as the leader, it relays the
    // log to the stream from where A stopped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !leads(&b) {
        assert!(
            std::time::Instant::now() < deadline,
            "B never took the lead over"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    stream_holds_the_log(&schema).await;

    // A comes back on the same database and serves the same log.
    let (_dir_a2, a2) = node(&schema);
    assert_eq!(stored(&a2).await, on_b);
    let again = post(a2.addr, &bodies[0]).await;
    assert_eq!(again, Some(202), "a resend is answered (as a duplicate)");
    assert_eq!(stored(&b).await.len(), 300);

    drop((a2, b));
    drop_schema(&schema).await;
}

/// Waits until some node holds a sync job (a lease on a `sync` work item); how many are held.
async fn eventually_leased(schema: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let leased: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {schema}.work_items
                     WHERE queue = 'sync' AND lease_until > (extract(epoch FROM now()) * 1000)::bigint"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if leased > 0 {
            return leased;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sync job was ever leased"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The conversions the three-node test sends.
const CONVERSIONS: u32 = 600;

/// The rows of `hub`'s closed windows, once they hold `events` events in all, in a fixed
/// order.
async fn closed_windows(hub: &Server, events: u64) -> Vec<Value> {
    closed_windows_of(hub, events, "").await
}

/// [`closed_windows`] of a view of `GET /api/v1/metrics` (`view=partitions`).
async fn closed_windows_of(hub: &Server, events: u64, query: &str) -> Vec<Value> {
    let closed = |rows: &[Value]| -> Vec<Value> {
        // Without `duplicates`: what the dying node stored but never answered was resent and
        // counted a duplicate there; the embedded hub is fed the stored events only.
        let mut closed: Vec<Value> = rows
            .iter()
            .filter(|r| r["status"] == "final")
            .cloned()
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("duplicates");
                r
            })
            .collect();
        closed.sort_by_key(|r| {
            (
                r["window_start_ms"].as_i64(),
                r["dimension"].as_str().map(str::to_owned),
                r["value"].as_str().map(str::to_owned),
            )
        });
        closed
    };
    let rows = support::metrics_until(hub, query, |rows| {
        closed(rows)
            .iter()
            .filter(|r| r["dimension"] == "all")
            .map(|r| r["events"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == events
    })
    .await;
    closed(&rows)
}

/// Three nodes on one cluster take conversions from a load spread over them while contacts
/// made in HubSpot are synced to Zoho by whichever node takes each job; one node is killed
/// with `kill -9` mid-load. Nothing acknowledged is lost, nothing is stored or written to a
/// CRM twice, the three nodes refresh the Zoho grant once between them, and the windows are
/// those an embedded hub computes from the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_lose_nothing_write_each_contact_once_and_refresh_each_grant_once() {
    use support::crm::{credential, hub_config, knobs, sandbox, zoho_contacts, zoho_token};
    let Some(schema) = fresh_schema() else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    // HubSpot's webhooks go to A (in production: to the load balancer in front of the nodes).
    let listen_a = format!("127.0.0.1:{}", support::free_port());
    let public = format!("http://{listen_a}");
    let hs = sandbox(
        raccordo_sandbox::Product::HubSpot,
        Some(format!("{public}/webhooks/hubspot")),
    )
    .await;
    let z = sandbox(raccordo_sandbox::Product::Zoho, None).await;
    // The test's own Zoho token comes first: every later refresh is the nodes'.
    let token = zoho_token(&z).await;
    let config = hub_config(
        &public,
        &hs,
        &z,
        // The leader polls both CRMs every 2 s: what a webhook to a dead node did not bring
        // (HubSpot retries the same URL), the next leader's poller finds.
        &format!(
            "{}{}\n[sync]\npoll_every = \"2s\"\n",
            storage(&schema),
            sources_and_tokens()
        ),
    );
    let (_dir_a, a) = start(&config, Some(&listen_a));
    a.log_line(|l| l["message"] == "leadership changed" && l["leading"] == true);
    let (_dir_b, b) = start(&config, None);
    let (_dir_c, c) = start(&config, None);
    let (hs_url, hs_token) = (hs.base_url.clone(), credential(&hs, "token").to_string());
    let hubspot_contact = move |i: u32| {
        let (url, token) = (hs_url.clone(), hs_token.clone());
        async move {
            let created = client()
                .post(format!("{url}/crm/v3/objects/contacts"))
                .bearer_auth(token)
                .json(&serde_json::json!({"properties": {"email": format!("nodo{i}@example.it"), "lastname": format!("Nodo{i}")}}))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
        }
    };
    let zoho_emails = |want: usize| {
        let (z, token) = (&z, &token);
        async move {
            // Long enough for a work item leased by the killed node to run out (60 s).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            loop {
                let contacts = zoho_contacts(z, token).await;
                if contacts.len() >= want {
                    return contacts
                        .iter()
                        .map(|c| c["Email"].as_str().unwrap().to_string())
                        .collect::<Vec<_>>();
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} of {want} contacts in Zoho",
                    contacts.len()
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };

    // Ten contacts before the load: the first sync jobs refresh the Zoho grant.
    for i in 0..10 {
        hubspot_contact(i).await;
    }
    zoho_emails(10).await;

    // Ten more contacts, each call to Zoho slowed to 2 s, and 600 conversions from
    // `raccordo loadgen` spread over the three nodes (each request to the next node in turn,
    // sent again to the next when a node gives no answer, as a sender behind a load balancer
    // sees it), paced to last ten seconds, with event times half an hour back. A — the
    // leader, where HubSpot's webhooks land and whose workers take the jobs they make — dies
    // once sync jobs are leased, mid-call to Zoho: the jobs it held run again on B or C once
    // their leases run out and must not write a contact twice; B or C takes the lead over.
    knobs(&z, serde_json::json!({"latency_ms": 2_000})).await;
    for i in 10..20 {
        hubspot_contact(i).await;
    }
    let mut loadgen = std::process::Command::new(env!("CARGO_BIN_EXE_raccordo"));
    loadgen.arg("loadgen");
    for node in [&a, &b, &c] {
        loadgen.args(["--url", &format!("http://{}", node.addr)]);
    }
    let loadgen = loadgen
        .args(["--route", "conversion", "--api-key", API_KEY])
        .args(["--rate", "60", "--duration", "2m", "--seed", "15", "--json"])
        .args(["--requests", &CONVERSIONS.to_string()])
        .args(["--event-time-from", &support::now_rfc3339(-30 * 60_000)])
        .args(["--event-time-step", "5ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("raccordo loadgen starts");
    // A tenth of the load in (a second of it), some of it on A.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stored(&b).await.len() < CONVERSIONS as usize / 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let leased = eventually_leased(&schema).await;
    let mut a = a;
    a.kill9();
    eprintln!("A killed with {leased} sync job(s) leased in the cluster");
    let report = tokio::task::spawn_blocking(move || loadgen.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    eprintln!("loadgen: {report}");
    // A took its third of the requests until it died; the rest of its share went on.
    let failed_over = report["failed_over"].as_u64().unwrap();
    assert!(
        failed_over > 0 && failed_over < u64::from(CONVERSIONS) / 3,
        "A was killed mid-load: {report}"
    );
    assert_eq!(
        report["transport_errors"], 0,
        "every request answered: {report}"
    );
    assert_eq!(report["rejected"], serde_json::json!({}), "{report}");
    // A resend of what A stored but never answered is answered as a duplicate.
    assert_eq!(
        report["accepted"].as_u64().unwrap() + report["duplicate"].as_u64().unwrap(),
        u64::from(CONVERSIONS),
        "{report}"
    );

    // Every conversion stored once.
    let on_b = stored(&b).await;
    assert_eq!(
        on_b.len(),
        CONVERSIONS as usize,
        "every conversion is stored"
    );
    assert!(on_b.values().all(|n| *n == 1), "none twice");

    // Every conversion in the stream once, though the leader relaying it died.
    stream_holds_the_log(&schema).await;

    // Every contact in Zoho once: the jobs A held ran again elsewhere, and wrote nothing twice.
    knobs(&z, serde_json::json!({"latency_ms": 0})).await;
    let mut emails = zoho_emails(20).await;
    emails.sort();
    let all = emails.len();
    emails.dedup();
    assert_eq!(
        (all, emails.len()),
        (20, 20),
        "each contact once: {emails:?}"
    );

    // One refresh of the Zoho grant for the three nodes (the other is the test's own).
    let (refreshes, _) = support::crm::zoho_token_requests(&z).await;
    assert_eq!(refreshes, 2, "the test's and one for the cluster");

    // The windows: a current event closes the old ones; B and C agree with an embedded hub
    // fed the same stream, in the log's order.
    assert_eq!(post(b.addr, &event(10_000)).await, Some(202));
    let on_b = closed_windows(&b, CONVERSIONS.into()).await;
    assert_eq!(
        closed_windows(&c, CONVERSIONS.into()).await,
        on_b,
        "C computes what B does"
    );
    let embedded = format!("[server]\ndata_dir = \"data\"\n{}", sources_and_tokens());
    let (_dir_e, e) = start(&embedded, None);
    for stored in support::all_events(&b).await {
        assert_eq!(post(e.addr, &stored["payload"]).await, Some(202));
    }
    assert_eq!(
        closed_windows(&e, CONVERSIONS.into()).await,
        on_b,
        "the cluster's windows are the embedded hub's"
    );
    assert!(on_b.len() >= 4, "windows per channel and overall: {on_b:?}");

    // The windows per stream partition, each partition owned by one node at a time: the
    // killed node's partitions were taken over from their checkpoints, and their final
    // results merged are the same windows again — nothing counted twice or lost.
    #[cfg(feature = "cluster")]
    if backend() == "cluster" {
        // Merged by the API on any node; the killed node's partitions needed their leases
        // to run out first (up to 15 s), so wait for them before the bounded poll.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let counted: u64 = merged_partition_windows(&schema)
                .await
                .iter()
                .filter(|((_, dimension, _), _)| dimension == "all")
                .map(|(_, (events, ..))| events)
                .sum();
            if counted == u64::from(CONVERSIONS) {
                break;
            }
            assert!(
                counted < u64::from(CONVERSIONS) && std::time::Instant::now() < deadline,
                "{counted} of {CONVERSIONS} conversions in the partitions' final windows"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert_eq!(
            closed_windows_of(&c, CONVERSIONS.into(), "view=partitions").await,
            on_b,
            "the partitions' windows, merged, are the embedded hub's"
        );
        // Live from the owners: C's stream of the partitions' windows shows an event sent to
        // B within moments (no checkpoint in between), and their late table is empty.
        let mut stream = client()
            .get(c.url("/api/v1/metrics/stream?view=partitions&dimension=all"))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        assert_eq!(post(b.addr, &event(10_001)).await, Some(202));
        let mut buffer = String::new();
        support::sse_until(&mut stream, &mut buffer, |event, data| {
            let open: u64 = data["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["events"].as_u64().unwrap_or(0))
                .sum();
            event == "provisional" && open == 2
        })
        .await;
        let late = support::poll_json(
            &c,
            "/api/v1/metrics/late?view=partitions",
            READ_TOKEN,
            |b| b["total_events"].is_u64(),
        )
        .await;
        assert_eq!(late["total_events"], 0, "{late}");
        // What the killed node held when it died went to the survivors.
        let partitions = |node: &Server, message: &str| -> Vec<u64> {
            node.stdout
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|l| l["message"] == message)
                .filter_map(|l| l["partition"].as_u64())
                .collect()
        };
        let mut held_by_a = partitions(&a, "partition windows taken");
        for given_up in partitions(&a, "partition windows given up") {
            if let Some(at) = held_by_a.iter().position(|p| *p == given_up) {
                held_by_a.remove(at);
            }
        }
        assert!(
            !held_by_a.is_empty(),
            "A owned partitions when it was killed"
        );
        let taken_over: Vec<u64> = [&b, &c]
            .iter()
            .flat_map(|n| partitions(n, "partition windows taken"))
            .collect();
        for partition in &held_by_a {
            assert!(
                taken_over.contains(partition),
                "A's partition {partition} was taken over: {taken_over:?}"
            );
        }
    }

    // Spend given to B reaches C's cost per acquisition (the nodes reload it every 5 s).
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let put = client()
        .put(b.url("/api/v1/campaigns/test/costs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"days": [{"date": today, "amount": 288.0}]}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let rows = support::metrics_until(&c, "dimension=campagna&value=test", |rows| {
        rows.iter().any(|r| r["spend"].is_number())
    })
    .await;
    assert!(rows.iter().any(|r| r["cpa"].is_number()), "{rows:?}");

    drop((a, b, c, e));
    drop_schema(&schema).await;
}

/// A cluster whose partitions' windows are its only ones (`node_windows = false`): no node
/// counts the whole log, and every view — metric rows, the late table, re-aggregation, the
/// ingest answer's `late`, the ingest health — comes from the partitions' owners, on any
/// node.
#[cfg(feature = "cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_windows_alone_serve_every_view_on_every_node() {
    if backend() != "cluster" {
        return;
    }
    let Some(schema) = fresh_schema() else {
        return;
    };
    let config = format!(
        "[server]\ndata_dir = \"data\"\n{}node_windows = false\n{}",
        storage(&schema),
        sources_and_tokens()
    );
    let (_dir_a, a) = start(&config, None);
    let (_dir_b, b) = start(&config, None);
    // 30 conversions half an hour old, over both nodes, then a current one to close their
    // windows.
    for n in 0..30u32 {
        let mut e = event(n);
        e["timestamp"] = serde_json::json!(support::now_rfc3339(-30 * 60_000 + i64::from(n) * 500));
        e["canale"] = serde_json::json!(["email", "sms", "webform"][n as usize % 3]);
        let node = if n % 2 == 0 { a.addr } else { b.addr };
        assert_eq!(post(node, &e).await, Some(202));
    }
    assert_eq!(post(a.addr, &event(1_000)).await, Some(202));
    let on_a = closed_windows(&a, 30).await;
    assert_eq!(
        closed_windows(&b, 30).await,
        on_a,
        "both nodes serve the same windows"
    );
    assert!(on_a.len() >= 4, "per channel and overall: {on_a:?}");

    // No node keeps windows of its own.
    let live = client()
        .get(b.url("/api/v1/metrics?view=live"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 400);
    assert!(live.text().await.unwrap().contains("node_windows"));

    // An event three hours old is late in every partition: answered so, listed on B,
    // re-aggregated from A by the partitions' owners.
    let mut late = event(2_000);
    late["timestamp"] = serde_json::json!(support::now_rfc3339(-3 * 3_600_000));
    let answer: Value = client()
        .post(a.url("/api/v1/eventi/conversione"))
        .header("x-api-key", API_KEY)
        .json(&late)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["late"], true, "{answer}");
    let table = support::poll_json(&b, "/api/v1/metrics/late", READ_TOKEN, |t| {
        t["total_events"] == 1
    })
    .await;
    assert_eq!(table["events"][0]["id"], answer["id"], "{table}");
    let done: Value = client()
        .post(a.url("/api/v1/metrics/late/reaggregate"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["events"], 1, "{done}");
    support::poll_json(&b, "/api/v1/metrics/late", READ_TOKEN, |t| {
        t["total_events"] == 0
    })
    .await;
    let health = support::poll_json(&a, "/api/v1/ingest/health", READ_TOKEN, |h| {
        h["live"]["watermark_ms"].is_i64()
    })
    .await;
    assert!(health["live"]["lag_ms"].is_i64(), "{health}");

    drop((a, b));
    drop_schema(&schema).await;
}

/// `raccordo keys rotate` on a shared store: with the nodes on the new key and the old one
/// beside it, one run re-seals every secret under the new key; a node left on the old key
/// alone then refuses to start instead of failing job by job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_reseals_a_shared_store_and_a_node_on_the_old_key_refuses_to_start() {
    use support::crm::{hub_config, sandbox};
    const NEW_KEY: &str = "x/3V1c1i6p6/+Mph9M60nyJHcLRrXNCBp4jd7mOsdhA=";
    let Some(schema) = fresh_schema() else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hs = sandbox(raccordo_sandbox::Product::HubSpot, None).await;
    let z = sandbox(raccordo_sandbox::Product::Zoho, None).await;
    let config = hub_config(
        "http://127.0.0.1:9",
        &hs,
        &z,
        &format!("{}{}", storage(&schema), sources_and_tokens()),
    );
    // The first start seals the key check under the old key.
    let (dir, first) = start_keyed(&config, None, SECRET_KEY);
    drop(first);

    let rotate = std::process::Command::new(support::BIN)
        .args(["keys", "rotate", "--config", "raccordo.toml"])
        .current_dir(dir.path())
        .env("RACCORDO_SECRET_KEY", NEW_KEY)
        .env("RACCORDO_SECRET_KEY_PREVIOUS", SECRET_KEY)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&rotate.stdout);
    assert!(rotate.status.success(), "{said} {rotate:?}");
    let resealed: u32 = said
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(resealed >= 1, "{said}");

    // The new key alone opens everything now; the old one alone opens nothing.
    let (_dir_new, on_new_key) = start_keyed(&config, None, NEW_KEY);
    drop(on_new_key);
    let refused = std::process::Command::new(support::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "raccordo.toml",
        ])
        .current_dir(dir.path())
        .env("RACCORDO_SECRET_KEY", SECRET_KEY)
        .env_remove("RACCORDO_SECRET_KEY_PREVIOUS")
        .output()
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "{output}");
    assert!(
        output.contains("does not open the secrets already stored"),
        "{output}"
    );
    drop_schema(&schema).await;
}

/// Two `cluster` nodes whose conversion stream is a Kafka topic (librdkafka's mock cluster,
/// three brokers on loopback sockets of this test process): the leader relays the log, is
/// killed with `kill -9`, the other node takes the relay over — and the topic holds every
/// event of the log exactly once (Kafka has no message-id window: the relay's cursors do it).
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kafka_stream_holds_each_event_once_across_a_leader_killed_mid_relay() {
    use raccordo_core::ConversionStream;
    let Some(schema) = fresh_schema() else {
        return;
    };
    let brokers = raccordo_log_kafka::testing::MockCluster::new(3).unwrap();
    // The mock brokers do not take `CreateTopics`: the topic is made here, as operators who
    // keep topic creation to themselves do.
    brokers.create_topic("raccordo.events", 4, 3).unwrap();
    let config = storage(&schema)
        .replace(
            &format!("backend = \"{}\"", backend()),
            "backend = \"cluster\"",
        )
        .replace(
            &format!("url = \"{}\"", nats_url()),
            &format!("url = \"kafka://{}\"", brokers.bootstrap_servers()),
        )
        .replace(
            &format!("name = \"{}\"", schema.to_uppercase()),
            "name = \"raccordo.events\"",
        )
        .replace(
            "max_age = \"1h\"",
            "max_age = \"1h\"\npartitions = 4\nreplicas = 3",
        );
    assert!(config.contains("kafka://"), "{config}");
    let config = format!(
        "[server]\ndata_dir = \"data\"\n{config}{}",
        sources_and_tokens()
    );
    let (_dir_a, mut a) = start(&config, None);
    a.log_line(|l| l["message"] == "leadership changed" && l["leading"] == true);
    let (_dir_b, b) = start(&config, None);
    b.log_line(|l| l["message"] == "taking part in the leader election");

    let mut options = raccordo_log_kafka::KafkaOptions::new(brokers.bootstrap_servers());
    options.topic = "raccordo.events".into();
    options.partitions = 4;
    options.replicas = 3;
    let topic = raccordo_log_kafka::KafkaStream::open(&options)
        .await
        .unwrap();
    // 400 conversions, half to each node; the leader dies once the topic has some of them
    // (it is relaying), before it has all.
    let bodies: Vec<Value> = (0..400).map(event).collect();
    for n in 0..200 {
        assert_eq!(post(a.addr, &bodies[n]).await, Some(202));
        assert_eq!(post(b.addr, &bodies[200 + n]).await, Some(202));
        if n == 100 {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while topic.describe().await.unwrap().messages == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the leader never relayed"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            a.kill9();
            break;
        }
    }
    for n in 101..200 {
        assert_eq!(post(b.addr, &bodies[n]).await, Some(202));
        assert_eq!(post(b.addr, &bodies[200 + n]).await, Some(202));
    }
    let in_log = stored(&b).await.len();
    assert_eq!(in_log, 400);
    // B takes the lead once A's lease runs out, and relays from where A's stored offset was,
    // skipping what A had published after it.
    stream_holds(&topic, in_log).await;
    assert!(leads(&b), "B relays now");
    drop(b);
    drop_schema(&schema).await;
}
