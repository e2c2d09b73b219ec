//! `[crm.hubspot]` and `[crm.zoho]`: where each CRM is and how raccordo signs in.

use serde::{Deserialize, Serialize};

/// `[crm]`: the CRM connections the sync uses.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CrmConfig {
    /// The hub's public base URL, as the CRMs reach it (`https://hub.example.it`): where
    /// Zoho sends notifications (`<public_url>/webhooks/zoho`), and the URL HubSpot signs.
    pub public_url: Option<String>,
    pub hubspot: Option<HubSpotConfig>,
    pub zoho: Option<ZohoConfig>,
}

/// `[crm.hubspot]`. Sign in with a private-app token (`access_token`), or as an OAuth app
/// (`client_id`, `client_secret` and a grant from `raccordo connect hubspot`, or
/// `refresh_token` to start with).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HubSpotConfig {
    /// The API root (default `https://api.hubapi.com`), or a sandbox's URL.
    #[serde(default = "default_hubspot_url")]
    pub base_url: String,
    /// A private-app access token (does not expire).
    #[serde(default, serialize_with = "raccordo_core::redacted_option")]
    pub access_token: Option<String>,
    /// The OAuth app's client id (OAuth apps only).
    pub client_id: Option<String>,
    /// The app's client secret: signs webhooks (v3) and, for OAuth apps, token refreshes.
    #[serde(serialize_with = "raccordo_core::redacted")]
    pub client_secret: String,
    /// A refresh token to store (sealed) when no grant is stored yet.
    #[serde(default, serialize_with = "raccordo_core::redacted_option")]
    pub refresh_token: Option<String>,
    /// Calls per rolling 10 seconds the account allows (default 100: Free/Starter and
    /// public apps; 190 Professional/Enterprise, 250 with the capacity pack).
    #[serde(default = "default_burst")]
    pub burst_per_10s: u32,
    /// Calls per day (private apps only; OAuth apps have no daily cap).
    #[serde(default)]
    pub daily: Option<u32>,
    /// Search calls per second (default 4).
    #[serde(default = "default_search")]
    pub search_per_s: u32,
    /// How long one call may take before it is abandoned and retried (default 30 s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub timeout: std::time::Duration,
    /// Where `raccordo connect hubspot` sends the browser (default
    /// `https://app.hubspot.com/oauth/authorize`).
    #[serde(default = "default_hubspot_authorize")]
    pub authorize_url: String,
    /// Scopes asked by `raccordo connect hubspot` (default: read and write contacts and
    /// companies, and `oauth`).
    #[serde(default = "default_hubspot_scopes")]
    pub scopes: Vec<String>,
}

/// `[crm.zoho]`: an OAuth client (Zoho API console, "server-based" or "self client") and a
/// grant from `raccordo connect zoho`, or `refresh_token` to start with.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ZohoConfig {
    /// The org's API domain (default `https://www.zohoapis.com`; `https://www.zohoapis.eu`
    /// for the EU data centre), or a sandbox's URL.
    #[serde(default = "default_zoho_url")]
    pub base_url: String,
    /// The accounts server's token URL (default `https://accounts.zoho.com/oauth/v2/token`;
    /// `https://accounts.zoho.eu/oauth/v2/token` for the EU).
    #[serde(default = "default_zoho_accounts")]
    pub token_url: String,
    /// The OAuth client's id (`1000.…`).
    pub client_id: String,
    /// The OAuth client's secret.
    #[serde(serialize_with = "raccordo_core::redacted")]
    pub client_secret: String,
    /// A refresh token to store (sealed) when no grant is stored yet.
    #[serde(default, serialize_with = "raccordo_core::redacted_option")]
    pub refresh_token: Option<String>,
    /// The token Zoho echoes in every notification (16 to 50 characters); raccordo sets it
    /// when it registers the notification channel.
    #[serde(serialize_with = "raccordo_core::redacted")]
    pub channel_token: String,
    /// Notification channel id (any number unique in the org; default 1000000001).
    #[serde(default = "default_channel_id")]
    pub channel_id: i64,
    /// API credits per rolling 24 hours of the org's edition (default 50000).
    #[serde(default = "default_credits")]
    pub credits_per_day: u32,
    /// Concurrent calls the edition allows (default 10: Standard; Professional 15,
    /// Enterprise 20).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long one call may take before it is abandoned and retried (default 30 s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub timeout: std::time::Duration,
    /// Where `raccordo connect zoho` sends the browser (default
    /// `https://accounts.zoho.com/oauth/v2/auth`; `.eu`, `.in`, … for other data centres).
    #[serde(default = "default_zoho_authorize")]
    pub authorize_url: String,
    /// Scopes asked by `raccordo connect zoho` (default: CRM modules, field metadata,
    /// notifications and search).
    #[serde(default = "default_zoho_scopes")]
    pub scopes: Vec<String>,
}

fn default_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}
fn default_hubspot_authorize() -> String {
    "https://app.hubspot.com/oauth/authorize".into()
}
pub fn default_hubspot_scopes() -> Vec<String> {
    [
        "crm.objects.contacts.read",
        "crm.objects.contacts.write",
        "crm.objects.companies.read",
        "crm.objects.companies.write",
        "oauth",
    ]
    .map(String::from)
    .to_vec()
}
fn default_zoho_authorize() -> String {
    "https://accounts.zoho.com/oauth/v2/auth".into()
}
pub fn default_zoho_scopes() -> Vec<String> {
    [
        "ZohoCRM.modules.ALL",
        "ZohoCRM.settings.fields.READ",
        "ZohoCRM.notifications.ALL",
        "ZohoSearch.securesearch.READ",
        "ZohoCRM.coql.READ",
    ]
    .map(String::from)
    .to_vec()
}
fn default_hubspot_url() -> String {
    "https://api.hubapi.com".into()
}
fn default_burst() -> u32 {
    100
}
fn default_search() -> u32 {
    4
}
fn default_zoho_url() -> String {
    "https://www.zohoapis.com".into()
}
fn default_zoho_accounts() -> String {
    "https://accounts.zoho.com/oauth/v2/token".into()
}
fn default_channel_id() -> i64 {
    1_000_000_001
}
fn default_credits() -> u32 {
    50_000
}
fn default_concurrency() -> usize {
    10
}

impl CrmConfig {
    /// Problems as (key, message), for `raccordo check`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(h) = &self.hubspot {
            if h.access_token.is_none() && h.client_id.is_none() {
                out.push((
                    "crm.hubspot".into(),
                    "set `access_token` (private app) or `client_id` (OAuth app)".into(),
                ));
            }
            if h.client_secret.trim().is_empty() {
                out.push(("crm.hubspot.client_secret".into(), "cannot be empty".into()));
            }
            if h.timeout.is_zero() {
                out.push((
                    "crm.hubspot.timeout".into(),
                    "must be longer than zero".into(),
                ));
            }
            if h.burst_per_10s == 0 || h.search_per_s == 0 {
                out.push((
                    "crm.hubspot.burst_per_10s".into(),
                    "rate limits must be positive".into(),
                ));
            }
        }
        if let Some(z) = &self.zoho {
            let len = z.channel_token.trim().len();
            if !(16..=50).contains(&len) {
                out.push((
                    "crm.zoho.channel_token".into(),
                    "must be 16 to 50 characters".into(),
                ));
            }
            if z.timeout.is_zero() {
                out.push(("crm.zoho.timeout".into(), "must be longer than zero".into()));
            }
            if z.concurrency == 0 || z.credits_per_day == 0 {
                out.push((
                    "crm.zoho.concurrency".into(),
                    "limits must be positive".into(),
                ));
            }
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            out.push(("crm.public_url".into(), "must be an http(s) URL".into()));
        }
        out
    }
}
