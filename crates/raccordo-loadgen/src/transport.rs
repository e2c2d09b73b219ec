//! The generator's HTTP/1.1 client: each worker owns one keep-alive connection per target
//! and drives it inside its own task.
//!
//! Why not a pooled client: a pooled client runs every connection as a task of its own and
//! hands each request and each answer across tasks, and so across threads: on a two-core
//! machine that cost the generator 53–67 µs of CPU per single-event request, two thirds of
//! what the hub spent answering it, and 30–36 µs this way (docs/benchmarks.md, "The load
//! generator's own cost"). The generator shares the machine with what it measures, so
//! every microsecond it spends is taken from the hub and shows up as the hub's latency.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// How long one attempt (connect, send, read the whole answer) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// One URL to send to, parsed once.
pub struct Target {
    /// `host:port`, to connect to.
    address: String,
    /// The `Host` header.
    host: HeaderValue,
    /// The request target (path and query).
    path: Uri,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Target {
    /// Parses `url` (`http://` or `https://`); `tls` is the client configuration for
    /// `https://` targets.
    pub fn parse(url: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> anyhow::Result<Target> {
        let uri: Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("not a URL: {url}: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!("{url}: only http:// and https:// URLs can be targets"),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let host_name = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tls = if secure {
            let config = tls.ok_or_else(|| anyhow::anyhow!("{url}: no TLS configuration"))?;
            let name = ServerName::try_from(host_name.to_owned())
                .map_err(|e| anyhow::anyhow!("{url}: not a server name: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(config.clone()), name))
        } else {
            None
        };
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()?;
        Ok(Target {
            address: format!("{}:{port}", authority.host()),
            host: HeaderValue::from_str(authority.as_str())?,
            path,
            tls,
        })
    }

    /// A POST of `body` (JSON) to this target; the caller adds its own headers.
    pub fn post(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        request
    }
}

/// A future that runs a connection until it closes.
type Driver = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// One open HTTP/1.1 connection. Its I/O runs only while a request is being sent on it,
/// in the caller's task: nothing else is spawned.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
}

impl Connection {
    pub async fn open(target: &Target) -> anyhow::Result<Connection> {
        let opening = async {
            let tcp = TcpStream::connect(&target.address).await?;
            tcp.set_nodelay(true)?;
            let (sender, driver): (_, Driver) = match &target.tls {
                None => {
                    let (sender, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                    (sender, Box::pin(connection))
                }
                Some((connector, name)) => {
                    let stream = connector.connect(name.clone(), tcp).await?;
                    let (sender, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                    (sender, Box::pin(connection))
                }
            };
            anyhow::Ok(Connection { sender, driver })
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, opening)
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {} timed out", target.address))?
    }

    /// Sends `request` and reads the whole answer. After an error the connection is not
    /// usable any more: drop it.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let Connection { sender, driver } = self;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let attempt = async {
            tokio::select! {
                biased;
                answer = exchange => answer,
                closed = driver => match closed {
                    Ok(()) => Err(anyhow::anyhow!("the connection closed")),
                    Err(e) => Err(e.into()),
                },
            }
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {ATTEMPT_TIMEOUT:?}"))?
    }
}

/// The TLS client configuration for `https://` targets: trusts `ca_pem` when given, else
/// the system's roots; HTTP/1.1 only.
pub fn tls_config(ca_pem: Option<&[u8]>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem) {
                roots.add(certificate.map_err(|e| anyhow::anyhow!("CA certificate: {e}"))?)?;
            }
            anyhow::ensure!(!roots.is_empty(), "no certificate in the CA file");
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for certificate in found.certs {
                // One unreadable system certificate should not stop the others.
                let _ = roots.add(certificate);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_parsed_once_with_their_host_and_path() {
        let target =
            Target::parse("http://127.0.0.1:8080/api/v1/eventi/conversione", None).unwrap();
        assert_eq!(target.address, "127.0.0.1:8080");
        assert_eq!(target.host, "127.0.0.1:8080");
        assert_eq!(target.path, "/api/v1/eventi/conversione");
        let request = target.post(Bytes::from_static(b"{}"));
        assert_eq!(request.uri(), "/api/v1/eventi/conversione");
        assert_eq!(request.headers()[HOST], "127.0.0.1:8080");

        let plain_default = Target::parse("http://localhost/x", None).unwrap();
        assert_eq!(plain_default.address, "localhost:80");
        assert!(
            Target::parse("https://localhost/x", None).is_err(),
            "https needs a TLS config"
        );
        let tls = tls_config(None).unwrap();
        let secure = Target::parse("https://[::1]/x", Some(&tls)).unwrap();
        assert_eq!(secure.address, "[::1]:443");
        assert!(Target::parse("ftp://host/x", None).is_err());
        assert!(Target::parse("/relative", None).is_err());
    }
}
