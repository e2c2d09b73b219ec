//! Two hub nodes on one PostgreSQL database (`[storage] backend = "postgres"`): the same
//! conversions sent to both are stored once, and a node killed with `kill -9` mid-load loses
//! nothing it acknowledged — the client's retries go to the other node, and nothing is
//! stored twice. Built and run with the `postgres` feature (CI runs
//! `cargo test -p raccordo --features postgres --test cluster`).
#![cfg(feature = "postgres")]

mod support;

use std::collections::HashMap;

use serde_json::Value;
use support::{ADMIN_TOKEN, API_KEY, READ_TOKEN, Server, client, event};

const URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

fn database() -> String {
    std::env::var("RACCORDO_TEST_POSTGRES").unwrap_or_else(|_| URL.into())
}

fn node(schema: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("raccordo.toml"),
        format!(
            r#"
[server]
data_dir = "data"

[storage]
backend = "postgres"

[storage.postgres]
url = "{url}"
schema = "{schema}"

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
"#,
            url = database()
        ),
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--config", "raccordo.toml"]);
    (dir, server)
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

/// Every stored event (duplicates left out, as the query API gives them), by customer.
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
            *by_customer
                .entry(e["payload"]["id_cliente"].as_str().unwrap().to_string())
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
    if std::net::TcpStream::connect("127.0.0.1:5432").is_err()
        && std::env::var_os("RACCORDO_TEST_POSTGRES").is_none()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL cannot be reached at 127.0.0.1:5432"
        );
        eprintln!("SKIPPED: no PostgreSQL on 127.0.0.1:5432; CI runs this");
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let schema = format!("raccordo_test_{}_{}", now.as_secs(), now.subsec_nanos());
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

    // With A gone, B takes the lease over once A's runs out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !leads(&b) {
        assert!(
            std::time::Instant::now() < deadline,
            "B never took the lead over"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A comes back on the same database and serves the same log.
    let (_dir_a2, a2) = node(&schema);
    assert_eq!(stored(&a2).await, on_b);
    let again = post(a2.addr, &bodies[0]).await;
    assert_eq!(again, Some(202), "a resend is answered (as a duplicate)");
    assert_eq!(stored(&b).await.len(), 300);

    drop((a2, b));
    let (client, connection) = tokio_postgres::connect(&database(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}
