//! HTTPS in the binary (`[server.tls]`), so the hub can face the internet without a proxy.
//!
//! - **Defaults**: rustls with the `ring` provider, TLS 1.3 and 1.2 only, its forward-secret
//!   AEAD suites only (no CBC, no RSA key exchange), ALPN offering `h2` then `http/1.1`.
//! - **Reload**: the certificate and key files are read again on `SIGHUP` and when their
//!   modification time changes (checked every `reload_check_every`). New handshakes get the
//!   new certificate; open connections keep theirs and are not dropped. A pair that does
//!   not load (a half-written file, a key that does not match) leaves the old one in place
//!   and is logged and counted (`raccordo_tls_reloads_total{outcome="failed"}`).
//! - **Client certificates** (mutual TLS): when any source has `client_certificate`, the
//!   handshake asks for a certificate and accepts one issued by any of those sources' CAs,
//!   or none at all; each source then checks the certificate is good for *it* (see
//!   `raccordo_ingest::client_cert`).
//! - **Redirects**: `redirect_listen` opens a plain-HTTP listener that answers every request
//!   `308` to the same path over HTTPS, and nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate, then any intermediates.
    #[schema(value_type = String)]
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). It may be the certificate
    /// file itself: then a renewal replaces both at once with one rename.
    #[schema(value_type = String)]
    pub key_file: PathBuf,
    /// A plain-HTTP address that only redirects to HTTPS (e.g. `0.0.0.0:80`). Default: none.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub redirect_listen: Option<SocketAddr>,
    /// How often the certificate and key files are checked for change (they are also
    /// read again on `SIGHUP`).
    #[serde(default = "default_reload_check", with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub reload_check_every: Duration,
}

fn default_reload_check() -> Duration {
    Duration::from_secs(10)
}

/// The server certificate in use; swapped whole on reload.
#[derive(Debug)]
struct CurrentCertificate {
    key: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// What the files looked like when last loaded, to tell when they change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    cert: Option<SystemTime>,
    key: Option<SystemTime>,
}

/// The TLS side of the listener: the acceptor and what keeps its certificate fresh.
pub struct Tls {
    config: TlsConfig,
    acceptor: tokio_rustls::TlsAcceptor,
    current: Arc<CurrentCertificate>,
    stamp: std::sync::Mutex<Stamp>,
    /// `SIGHUP`, listened to from load on: a signal sent once the hub says it is listening
    /// reloads rather than ending the process (the default action).
    #[cfg(unix)]
    hangup: std::sync::Mutex<Option<tokio::signal::unix::Signal>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("config", &self.config).finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads the certificate chain and key and checks they belong together.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read {}: {e}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_file.display()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        format!(
            "{} and {} do not make a usable pair: {e}",
            cert_file.display(),
            key_file.display()
        )
    })
}

impl Tls {
    /// Loads the certificate (inside a Tokio runtime: it starts listening for `SIGHUP`);
    /// `client_cas` are the issuers of client certificates that
    /// some source asks for (empty: no certificate is asked for).
    pub fn load(
        config: &TlsConfig,
        client_cas: &[CertificateDer<'static>],
    ) -> Result<Arc<Self>, String> {
        let key = load_certified_key(&config.cert_file, &config.key_file)?;
        let current = Arc::new(CurrentCertificate {
            key: RwLock::new(Arc::new(key)),
        });
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = if client_cas.is_empty() {
            builder.with_no_client_auth()
        } else {
            builder.with_client_cert_verifier(raccordo_ingest::client_cert::build_verifier(
                client_cas, true,
            )?)
        };
        let mut server = builder.with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            stamp: std::sync::Mutex::new(Stamp {
                cert: modified(&config.cert_file),
                key: modified(&config.key_file),
            }),
            config: config.clone(),
            #[cfg(unix)]
            hangup: std::sync::Mutex::new(
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
            ),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            current,
        }))
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Reads the files again and, if they load, serves the new certificate from the next
    /// handshake on. On error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let stamp = Stamp {
            cert: modified(&self.config.cert_file),
            key: modified(&self.config.key_file),
        };
        let outcome = load_certified_key(&self.config.cert_file, &self.config.key_file);
        // Remember what was tried, so a broken file is not retried (and logged) every check.
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        match outcome {
            Ok(key) => {
                *self.current.key.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
                metrics::counter!("raccordo_tls_reloads_total", "outcome" => "loaded").increment(1);
                tracing::info!(cert_file = %self.config.cert_file.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                metrics::counter!("raccordo_tls_reloads_total", "outcome" => "failed").increment(1);
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
                Err(e)
            }
        }
    }

    fn changed(&self) -> bool {
        let now = Stamp {
            cert: modified(&self.config.cert_file),
            key: modified(&self.config.key_file),
        };
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// Reloads on `SIGHUP` and when the files change, until the caller aborts it; each
    /// reload's outcome and trigger (`SIGHUP`, `file change`) go to `reloaded`.
    pub async fn keep_fresh(self: Arc<Self>, reloaded: impl Fn(Result<(), String>, &str)) {
        #[cfg(unix)]
        let mut hangup = self.hangup.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The first look is one period after start: the files were read at load time.
        let period = self
            .config
            .reload_check_every
            .max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<()>();
            tokio::select! {
                _ = signalled => {
                    tracing::info!("SIGHUP: reloading the TLS certificate");
                    reloaded(self.reload(), "SIGHUP");
                }
                _ = tick.tick() => {
                    if self.changed() {
                        reloaded(self.reload(), "file change");
                    }
                }
            }
        }
    }
}

/// Trusts exactly the certificate this server presents at the moment: the hub calling its
/// own API (the MCP endpoint's tools) over its own TLS listener, whatever issued it.
#[derive(Debug)]
struct OwnCertificate {
    current: Arc<CurrentCertificate>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for OwnCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let current = self
            .current
            .key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if current
            .end_entity_cert()
            .is_ok_and(|own| own.as_ref() == end_entity.as_ref())
        {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Tls {
    /// A client configuration for calling this very server: it trusts the certificate the
    /// server presents now (and after a reload, the new one) and nothing else.
    pub fn own_client_config(&self) -> rustls::ClientConfig {
        let verifier = Arc::new(OwnCertificate {
            current: self.current.clone(),
            provider: provider(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

/// The plain-HTTP listener's only answer: `308` to the same host, path and query over HTTPS
/// on `https_port`. A request without a usable `Host` gets `400`.
pub fn redirect_router(https_port: u16) -> axum::Router {
    axum::Router::new().fallback(move |request: axum::extract::Request| async move {
        redirect_location(request.headers(), request.uri(), https_port)
            .and_then(|l| http::HeaderValue::from_str(&l).ok())
            .map(|location| {
                (
                    http::StatusCode::PERMANENT_REDIRECT,
                    [(http::header::LOCATION, location)],
                )
                    .into_response()
            })
            .unwrap_or_else(|| {
                crate::problem::Problem::new(
                    400,
                    "bad-request",
                    "Bad request",
                    "this address only redirects to HTTPS and needs a Host header to do so",
                )
                .into_response()
            })
    })
}

use axum::response::IntoResponse;

/// Where a plain-HTTP request is sent: its host (without the port it came on) with the
/// HTTPS port, and its path and query. Pure.
pub fn redirect_location(
    headers: &http::HeaderMap,
    uri: &http::Uri,
    https_port: u16,
) -> Option<String> {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())?;
    let authority: http::uri::Authority = host.parse().ok()?;
    let name = authority.host();
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("https://{name}{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: &str, path: &str, port: u16) -> Option<String> {
        let mut headers = http::HeaderMap::new();
        if !host.is_empty() {
            headers.insert(http::header::HOST, host.parse().unwrap());
        }
        redirect_location(&headers, &path.parse().unwrap(), port)
    }

    #[test]
    fn redirects_keep_host_path_and_query_and_take_the_https_port() {
        assert_eq!(
            location("hub.example:80", "/webhooks/in/x?a=1", 443).as_deref(),
            Some("https://hub.example/webhooks/in/x?a=1")
        );
        assert_eq!(
            location("hub.example", "/", 8443).as_deref(),
            Some("https://hub.example:8443/")
        );
        assert_eq!(
            location("[::1]:8080", "/healthz", 8443).as_deref(),
            Some("https://[::1]:8443/healthz")
        );
        assert_eq!(location("", "/", 443), None);
        assert_eq!(location("bad host/evil", "/", 443), None);
    }
}
