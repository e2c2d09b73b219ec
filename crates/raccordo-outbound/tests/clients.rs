//! The policy on real sockets: names are judged after resolution, and redirects hop by hop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use raccordo_outbound::{OutboundConfig, OutboundPolicy, Redirects, client_builder, refusal_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server on `ip` that answers every request with `answer` and counts connections.
async fn server(ip: &str, answer: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, seen)
}

fn ok() -> String {
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()
}

fn redirect_to(location: &str) -> String {
    format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
}

fn policy(internal: &[&str], http: &[&str]) -> Arc<OutboundPolicy> {
    // reqwest is built without a default TLS provider (the binary installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Arc::new(
        OutboundPolicy::from_config(&OutboundConfig {
            allow_internal: internal.iter().map(|s| s.to_string()).collect(),
            allow_http: http.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_after_resolution() {
    let (addr, seen) = server("127.0.0.1", ok()).await;
    // Plain http to `localhost` is allowed; internal addresses are not.
    let client = client_builder(&policy(&[], &["localhost"]), Redirects::Follow)
        .build()
        .unwrap();
    let error = client
        .get(format!("http://localhost:{}/", addr.port()))
        .send()
        .await
        .unwrap_err();
    let refusal = refusal_of(&error).expect("refused by the policy");
    assert!(refusal.to_string().contains("loopback"), "{refusal}");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "no connection was made");

    // The same name, allowed by name: called.
    let client = client_builder(&policy(&["localhost"], &["localhost"]), Redirects::Follow)
        .build()
        .unwrap();
    let response = client
        .get(format!("http://localhost:{}/", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redirects_are_checked_hop_by_hop() {
    let (target, target_seen) = server("127.0.0.2", ok()).await;
    let (first, _) = server("127.0.0.1", redirect_to(&format!("http://{target}/next"))).await;
    let allowed_first_only = policy(&["127.0.0.1"], &["*"]);
    let client = client_builder(&allowed_first_only, Redirects::Follow)
        .build()
        .unwrap();
    let error = client
        .post(format!("http://{first}/"))
        .body("payload")
        .send()
        .await
        .unwrap_err();
    assert!(
        refusal_of(&error).is_some_and(|r| r.to_string().contains("127.0.0.2")),
        "{error:?}"
    );
    assert_eq!(target_seen.load(Ordering::SeqCst), 0);

    // With both allowed, the redirect is followed.
    let client = client_builder(&policy(&["127.0.0.0/8"], &["*"]), Redirects::Follow)
        .build()
        .unwrap();
    let response = client.get(format!("http://{first}/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(target_seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn signed_deliveries_follow_no_redirect() {
    let (target, target_seen) = server("127.0.0.2", ok()).await;
    let (first, _) = server(
        "127.0.0.1",
        redirect_to(&format!("http://{target}/elsewhere")),
    )
    .await;
    let client = client_builder(&policy(&["127.0.0.0/8"], &["*"]), Redirects::Never)
        .build()
        .unwrap();
    let response = client
        .post(format!("http://{first}/hook"))
        .header("webhook-signature", "v1,abc")
        .body("signed body")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 307, "the redirect is the answer");
    assert_eq!(
        target_seen.load(Ordering::SeqCst),
        0,
        "the body and its signature went nowhere else"
    );
}
