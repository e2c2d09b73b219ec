//! `raccordo sandbox hubspot|zoho|ai`: one emulator in the foreground.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use raccordo_sandbox::knobs::{Knobs, Outage};
use raccordo_sandbox::{Product, SandboxConfig};

#[derive(Clone, Copy, ValueEnum)]
pub enum Which {
    /// HubSpot CRM v3/v4 (contacts, companies, associations, OAuth, webhooks)
    Hubspot,
    /// Zoho CRM v8 (Contacts, Accounts, OAuth, notifications)
    Zoho,
    /// OpenAI-compatible chat completions
    Ai,
}

#[derive(Args)]
pub struct SandboxArgs {
    /// Which API to emulate
    #[arg(value_enum)]
    pub which: Which,
    /// Port to listen on (default: hubspot 8481, zoho 8482, ai 8483; 0 picks a free one)
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// HubSpot: the private-app token it accepts; AI: the API key (default: generated)
    #[arg(long, env = "RACCORDO_SANDBOX_TOKEN")]
    pub token: Option<String>,
    /// OAuth client id (HubSpot app, Zoho self client)
    #[arg(long)]
    pub client_id: Option<String>,
    /// OAuth client secret; HubSpot also signs webhooks with it (default: generated)
    #[arg(long)]
    pub client_secret: Option<String>,
    /// Zoho: the refresh token its OAuth endpoint accepts (default: generated)
    #[arg(long)]
    pub refresh_token: Option<String>,
    /// Lifetime of OAuth access tokens (default: HubSpot 30m, Zoho 1h)
    #[arg(long, value_parser = humantime::parse_duration)]
    pub token_ttl: Option<Duration>,
    /// HubSpot: calls per 10 s (190); AI: requests per minute (600); Zoho: concurrent calls (20)
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// HubSpot: where to send signed webhooks for contact and company changes
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Seed for the generated Italian companies and contacts
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many companies (accounts) and contacts to generate, e.g. 20,100
    #[arg(long, default_value = "20,100", value_parser = parse_size)]
    pub seed_size: (usize, usize),
    /// Extra latency on every answer, e.g. 150ms
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Share of calls answered with a server error (0..1)
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share of calls answered with the product's 429 (0..1), on top of its real limits
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// An outage: START/DURATION, START as RFC 3339 or `+30s` from now; repeatable
    #[arg(long, value_parser = parse_outage)]
    pub outage: Vec<Outage>,
    /// Keep the records in this JSON file (default: memory only)
    #[arg(long)]
    pub state_file: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or("expected COMPANIES,CONTACTS, e.g. 20,100")?;
    let n = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("{x}: {e}"));
    let (a, b) = (n(a)?, n(b)?);
    if a > 10_000 || b > 100_000 {
        return Err("at most 10000 companies and 100000 contacts".into());
    }
    Ok((a, b))
}

fn parse_outage(s: &str) -> Result<Outage, String> {
    let (start, duration) = s
        .split_once('/')
        .ok_or("expected START/DURATION, e.g. +30s/1m")?;
    let now = raccordo_sandbox::knobs::now_ms();
    let from_ms = match start.strip_prefix('+') {
        Some(offset) => {
            now + humantime::parse_duration(offset)
                .map_err(|e| e.to_string())?
                .as_millis() as i64
        }
        None => {
            let t =
                time::OffsetDateTime::parse(start, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("{start}: {e}"))?;
            (t.unix_timestamp_nanos() / 1_000_000) as i64
        }
    };
    let length = humantime::parse_duration(duration).map_err(|e| e.to_string())?;
    Ok(Outage {
        from_ms,
        to_ms: from_ms + length.as_millis().max(1) as i64,
    })
}

impl SandboxArgs {
    pub fn config(&self) -> SandboxConfig {
        let product = match self.which {
            Which::Hubspot => Product::HubSpot,
            Which::Zoho => Product::Zoho,
            Which::Ai => Product::Ai,
        };
        let port = self.port.unwrap_or(product.default_port());
        let mut config = SandboxConfig::new(product, SocketAddr::new(self.host, port));
        config.token = self.token.clone();
        config.client_id = self.client_id.clone();
        config.client_secret = self.client_secret.clone();
        config.refresh_token = self.refresh_token.clone();
        config.access_token_ttl = self.token_ttl;
        config.rate_limit = self.rate_limit;
        config.webhook_url = self.webhook_url.clone();
        config.seed = self.seed;
        config.seed_size = self.seed_size;
        config.state_file = self.state_file.clone();
        config.knobs = Knobs {
            latency_ms: self.latency.map_or(0, |d| d.as_millis() as u64),
            error_rate: self.error_rate,
            throttle_rate: self.throttle_rate,
            outages: self.outage.clone(),
        };
        config
    }
}

pub async fn run(args: SandboxArgs) -> anyhow::Result<()> {
    let config = args.config();
    config.knobs.validate().map_err(|e| anyhow::anyhow!(e))?;
    let running = raccordo_sandbox::start(config).await?;
    // A closed stdout (a test that read the banner and let go) must not stop the sandbox.
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}\nCtrl-C to stop.", running.banner());
    let _ = out.flush();
    raccordo_server::shutdown_signal().await;
    running.stop().await;
    Ok(())
}
