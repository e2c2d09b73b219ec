//! The accept loop: what the server allows a connection before a request handler ever sees
//! it. Slow or idle clients cannot hold connections forever, and one address cannot take the
//! whole file-descriptor budget from everybody else.
//!
//! - **Header-read timeout**: a request's headers must arrive within `header_read_timeout`
//!   (HTTP/1), and an idle keep-alive connection waiting for its next request is closed
//!   after the same time: hyper starts the timer as soon as the connection waits for a
//!   request head. HTTP/2 connections are pinged and closed when they stop answering.
//! - **Connection caps**: at most `max_connections` open at once (by default what the
//!   process's file limit leaves after a reserve for the store and outbound calls) and at most
//!   `max_connections_per_address` from one client address (by default a quarter of that). A connection past a cap gets a
//!   `503` problem with `Retry-After` and is closed, so the refusal is clear rather than a
//!   hang, and counted in `raccordo_http_connections_refused_total{reason}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The address of the connection's other end (a client, or a proxy in front of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The certificate chain the client presented in the TLS handshake (end entity first).
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub raccordo_ingest::client_cert::PresentedChain);

/// `[server]` connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection is kept open waiting for the next request.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub header_read_timeout: Duration,
    /// Most connections open at once (0: the process's file limit minus a reserve).
    pub max_connections: usize,
    /// Most connections open at once from one client address (0: a quarter of the global
    /// cap, at least 64).
    pub max_connections_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 0,
            max_connections_per_address: 0,
        }
    }
}

/// File descriptors kept for everything but client connections: the store's files, the
/// segment log, outbound HTTP and SMTP connections.
const FD_RESERVE: usize = 128;

impl ConnectionLimits {
    /// The global cap in effect: the configured one, or the file limit minus the reserve.
    pub fn effective_max(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
        } else {
            1024
        };
        soft.saturating_sub(FD_RESERVE).clamp(16, 1_000_000)
    }

    /// The per-address cap in effect: the configured one, or a quarter of the global cap
    /// (at least 64): one address — a scanner, a runaway client — cannot take more than that
    /// share, while a busy sender or a load generator with hundreds of connections fits.
    pub fn effective_per_address(&self) -> usize {
        if self.max_connections_per_address > 0 {
            return self.max_connections_per_address;
        }
        (self.effective_max() / 4).max(64)
    }
}

/// Open connections, in all and per client address.
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Holds a connection's place until the connection ends.
struct Slot {
    open: Arc<Mutex<Open>>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.address);
            }
        }
        metrics::gauge!("raccordo_http_connections_open").set(open.total as f64);
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    Address,
}

fn admit(
    open: &Arc<Mutex<Open>>,
    address: IpAddr,
    max: usize,
    per_address: usize,
) -> Result<Slot, Refusal> {
    let mut state = open.lock().unwrap_or_else(|p| p.into_inner());
    if state.total >= max {
        return Err(Refusal::Total);
    }
    let mine = state.per_address.entry(address).or_default();
    if *mine >= per_address {
        return Err(Refusal::Address);
    }
    *mine += 1;
    state.total += 1;
    metrics::gauge!("raccordo_http_connections_open").set(state.total as f64);
    Ok(Slot {
        open: open.clone(),
        address,
    })
}

/// Answers a refused connection with a `503` problem and closes it, without reading the
/// request (the client may not have sent it yet; it learns why all the same).
async fn refuse(mut stream: TcpStream, why: Refusal) {
    let (reason, detail) = match why {
        Refusal::Total => (
            "total",
            "the server has as many connections open as it allows",
        ),
        Refusal::Address => (
            "address",
            "this client address has as many connections open as the server allows one address",
        ),
    };
    metrics::counter!("raccordo_http_connections_refused_total", "reason" => reason).increment(1);
    let body = serde_json::json!({
        "type": "urn:raccordo:problem:unavailable",
        "title": "Service unavailable",
        "status": 503,
        "detail": detail,
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The router, with the connection's peer address and certificates attached to each
/// request, for allowlists, mutual TLS and logs.
fn with_peer(
    router: Router,
    peer: PeerAddr,
    certificates: Option<PeerCertificates>,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
        http::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone,
> {
    hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
        router,
        move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(peer);
            if let Some(certificates) = &certificates {
                request.extensions_mut().insert(certificates.clone());
            }
            request
        },
    ))
}

/// The HTTP/2 connection preface: what the protocol sniffing waits for.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits (at most `timeout`) until the first bytes tell HTTP/1 from HTTP/2: a byte that
/// departs from the HTTP/2 preface, or the whole preface. `false`: the client sent nothing
/// telling in time, or closed.
async fn protocol_known(stream: &TcpStream, timeout: Duration) -> bool {
    let wait = async {
        let mut seen = 0;
        let mut buffer = [0u8; 24];
        loop {
            let n = match stream.peek(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if n >= H2_PREFACE.len() || buffer[..n] != H2_PREFACE[..n] {
                return true;
            }
            // A partial preface: `peek` would return the same bytes at once, so wait a
            // little for more instead of spinning.
            if n == seen {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(timeout, wait).await.unwrap_or(false)
}

/// Pending connections the kernel may hold for the accept loop (Linux caps it at
/// `net.core.somaxconn`, 4096 on current kernels).
///
/// Why not the default: `TcpListener::bind` asks for 128. Senders open connections in bursts
/// exactly when the hub is slow — a retrying CRM, or a load generator whose open connections
/// are all waiting — and a SYN that finds the queue full is dropped and sent again only after
/// a second: one request then takes a second for a hiccup of a few milliseconds (open loops
/// at 15 000 requests/s saw maxima of 1.03–1.04 s, one per `TcpExtListenOverflows` counted).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening socket on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it, so a restart finds the port free at once).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `router` on `listener` until `stop` resolves, then stops accepting and waits for
/// open connections to finish their requests (the caller bounds the wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<crate::tls::Tls>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.effective_max();
    let per_address = limits.effective_per_address();
    tracing::info!(
        max_connections = max,
        max_connections_per_address = per_address,
        header_read_timeout_s = limits.header_read_timeout.as_secs_f64(),
        "accepting connections"
    );
    let open = Arc::new(Mutex::new(Open {
        total: 0,
        per_address: HashMap::new(),
    }));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    // Over TLS, ALPN has already named the protocol: no sniffing.
    let http1_only = Arc::new(builder.clone().http1_only());
    let http2_only = Arc::new(builder.clone().http2_only());
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before accept): the
                    // listener stays, and the next accept is tried after a breath.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let slot = match admit(&open, peer.ip(), max, per_address) {
            Ok(slot) => slot,
            Err(why) => {
                tokio::spawn(refuse(stream, why));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let watcher = graceful.watcher();
        let timeout = limits.header_read_timeout;
        let Some(tls) = tls.clone() else {
            let builder = builder.clone();
            tokio::spawn(async move {
                // Until the protocol is known, hyper's own header timer is not running: bound
                // that first wait here.
                if !protocol_known(&stream, timeout).await {
                    metrics::counter!("raccordo_http_connections_timed_out_total").increment(1);
                    drop(slot);
                    return;
                }
                let service = with_peer(router, PeerAddr(peer), None);
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                // Errors here are the client's (a reset, a header timeout): nothing to report.
                let _ = watcher.watch(connection).await;
                drop(slot);
            });
            continue;
        };
        let (http1_only, http2_only) = (http1_only.clone(), http2_only.clone());
        tokio::spawn(async move {
            // The handshake is bounded like a request's headers.
            let stream = match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    metrics::counter!("raccordo_tls_handshakes_failed_total").increment(1);
                    tracing::debug!(error = %e, "TLS handshake failed");
                    drop(slot);
                    return;
                }
                Err(_) => {
                    metrics::counter!("raccordo_http_connections_timed_out_total").increment(1);
                    drop(slot);
                    return;
                }
            };
            let (_, session) = stream.get_ref();
            let certificates = session
                .peer_certificates()
                .filter(|c| !c.is_empty())
                .map(|c| PeerCertificates(c.iter().map(|c| c.clone().into_owned()).collect()));
            let builder = if session.alpn_protocol() == Some(b"h2") {
                http2_only
            } else {
                http1_only
            };
            let service = with_peer(router, PeerAddr(peer), certificates);
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let _ = watcher.watch(connection).await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_all_and_per_address_and_free_on_drop() {
        let open = Arc::new(Mutex::new(Open {
            total: 0,
            per_address: HashMap::new(),
        }));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admit(&open, a, 3, 2).unwrap();
        let _second = admit(&open, a, 3, 2).unwrap();
        assert_eq!(admit(&open, a, 3, 2).err(), Some(Refusal::Address));
        let _third = admit(&open, b, 3, 2).unwrap();
        assert_eq!(admit(&open, b, 3, 2).err(), Some(Refusal::Total));
        drop(first);
        assert!(
            admit(&open, a, 3, 2).is_ok(),
            "a freed place is usable again"
        );
    }

    /// Connections the accept loop has not taken yet wait in the kernel's queue, however
    /// many arrive at once: none is dropped. A dropped SYN is sent again only after a
    /// second, so each connect is given less than that.
    #[tokio::test]
    async fn a_burst_of_connections_waits_for_the_accept_loop() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Well past the 128 that `TcpListener::bind` asks for, well under the file limit.
        const BURST: usize = 400;
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            connecting.spawn(tokio::time::timeout(
                Duration::from_millis(900),
                TcpStream::connect(addr),
            ));
        }
        let mut connected = Vec::new();
        while let Some(attempt) = connecting.join_next().await {
            if let Ok(Ok(stream)) = attempt.unwrap() {
                connected.push(stream);
            }
        }
        assert_eq!(
            connected.len(),
            BURST,
            "every connection of the burst is queued, none waits for a SYN to be resent"
        );
    }

    #[test]
    fn the_default_cap_leaves_a_reserve_under_the_file_limit() {
        let max = ConnectionLimits::default().effective_max();
        assert!(max >= 16);
        let explicit = ConnectionLimits {
            max_connections: 50,
            ..ConnectionLimits::default()
        };
        assert_eq!(explicit.effective_max(), 50);
        assert_eq!(
            explicit.effective_per_address(),
            64,
            "a quarter, at least 64"
        );
        let per = ConnectionLimits {
            max_connections: 4000,
            max_connections_per_address: 0,
            ..ConnectionLimits::default()
        };
        assert_eq!(per.effective_per_address(), 1000);
    }
}
