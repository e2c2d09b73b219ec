//! E-mail over SMTP (STARTTLS, implicit TLS, or plain for a trusted relay).

use std::time::Duration;

use async_trait::async_trait;
use lettre::AsyncTransport;
use raccordo_core::Completion;
use serde::{Deserialize, Serialize};

use super::{Channel, Notification};

type Transport = lettre::AsyncSmtpTransport<lettre::Tokio1Executor>;

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server.
    pub host: String,
    /// Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    pub port: Option<u16>,
    /// `starttls` (required upgrade), `tls` (TLS from the first byte) or `none` (a trusted relay only).
    #[serde(default)]
    pub tls: SmtpTls,
    /// SMTP user, if the server wants authentication.
    pub username: Option<String>,
    /// SMTP password (with `username`); use `${ENV}`.
    #[serde(serialize_with = "raccordo_core::redacted_option")]
    pub password: Option<String>,
    /// Sender address, e.g. `raccordo <alerts@example.com>`.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Extra trusted root certificate (PEM), for servers with a private CA.
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: only for a relay on the same host or network you trust.
    None,
}

pub struct EmailChannel {
    transport: Transport,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
}

impl EmailChannel {
    pub fn new(config: &EmailConfig) -> Result<Self, String> {
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        let mailbox = |field: String, address: &str| {
            address
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| format!("`{field}` is not an e-mail address: {e}"))
        };
        let from = mailbox("from".into(), &config.from)?;
        let to = config
            .to
            .iter()
            .enumerate()
            .map(|(i, a)| mailbox(format!("to[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err("`to` needs at least one address".into());
        }
        let mut tls = TlsParameters::builder(config.host.clone());
        if let Some(path) = &config.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            tls = tls.add_root_certificate(
                Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?,
            );
        }
        let tls = tls.build_rustls().map_err(|e| format!("TLS set-up: {e}"))?;
        let (tls, port) = match config.tls {
            SmtpTls::Starttls => (Tls::Required(tls), 587),
            SmtpTls::Tls => (Tls::Wrapper(tls), 465),
            SmtpTls::None => (Tls::None, 25),
        };
        let mut builder = Transport::builder_dangerous(&config.host)
            .port(config.port.unwrap_or(port))
            .tls(tls)
            .timeout(Some(Duration::from_secs(20)));
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            to,
        })
    }
}

#[async_trait]
impl Channel for EmailChannel {
    fn kind(&self) -> &'static str {
        "email"
    }

    async fn send(&self, n: &Notification) -> Completion {
        let body = format!(
            "{}\n\nkind: {}\nsource: {}\nalert: {}\n",
            n.message, n.kind, n.subject, n.id
        );
        self.send_text(&format!("[raccordo] {}: {}", n.kind, n.message), body)
            .await
    }
}

impl EmailChannel {
    /// Sends a plain-text message to the configured recipients (alerts, digests).
    pub async fn send_text(&self, subject: &str, body: String) -> Completion {
        let mut builder = lettre::Message::builder()
            .subject(subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .from(self.from.clone());
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let email = match builder.body(body) {
            Ok(email) => email,
            Err(e) => {
                return Completion::Permanent {
                    error: format!("building the message: {e}"),
                };
            }
        };
        let started = std::time::Instant::now();
        let sent = self.transport.send(email).await;
        raccordo_core::calls::record(
            "notify:email",
            "SMTP send".into(),
            None,
            started.elapsed(),
            sent.as_ref().err().map(|e| {
                if e.is_permanent() {
                    "refused by the SMTP server".to_string()
                } else {
                    "SMTP server unavailable".to_string()
                }
            }),
        );
        match sent {
            Ok(_) => Completion::Done,
            Err(e) if e.is_permanent() => Completion::Permanent {
                error: format!("SMTP: {e}"),
            },
            Err(e) => Completion::Retryable {
                error: format!("SMTP: {e}"),
                retry_after_ms: None,
            },
        }
    }
}
