//! Where the hub may send requests (`[outbound]`).
//!
//! Every HTTP call the hub makes on its own — alert channels, CRM and OAuth endpoints, AI
//! providers, `http` flow steps, job completion webhooks, JWKS URLs — goes through a client
//! built here. A URL that came from a config file or an API caller must not turn the hub
//! into a way in to the network it runs on (server-side request forgery), so:
//!
//! - **after DNS resolution**, addresses that are loopback, private, link-local (cloud
//!   metadata among them), shared, multicast or otherwise internal are dropped, however
//!   they are written (`::ffff:169.254.169.254`, NAT64, 6to4); a name with no address left
//!   is refused. Only networks or host names listed in `allow_internal` are exempt;
//! - **plain `http`** is refused unless the host is listed in `allow_http`;
//! - **redirects** are checked like the first URL, hop by hop, and at most
//!   [`MAX_REDIRECTS`] are followed; clients for signed deliveries follow none, so a body
//!   and its signature are never re-sent to a host they were not meant for.
//!
//! URLs with an address written in them never reach the resolver, so they are checked by
//! [`OutboundPolicy::check_url`]: at config time for configured URLs (`raccordo check`
//! reports them), and at call time for URLs that arrive at run time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Most redirects followed by a client that follows any.
pub const MAX_REDIRECTS: usize = 5;

/// `[outbound]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Internal targets the hub may call although they are loopback, private or link-local:
    /// networks (`10.0.5.0/24`), addresses (`127.0.0.1`) or host names (`crm.internal`,
    /// trusted whatever they resolve to). Blank entries are skipped. Default: none.
    pub allow_internal: Vec<String>,
    /// Hosts (names or addresses) that may be called over plain `http`; `*` for any.
    /// Default: none, `https` only.
    pub allow_http: Vec<String>,
}

/// Why a call was not made. Never carries the URL itself (a Slack webhook's path is its
/// secret), only the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a URL: {0}")]
    NotUrl(String),
    #[error("only http and https URLs can be called, not `{0}:`")]
    Scheme(String),
    #[error("the URL names no host")]
    NoHost,
    #[error(
        "plain http to {host} is not allowed: use https, or list the host in outbound.allow_http"
    )]
    PlainHttp { host: String },
    #[error("{host} is {kind} ({address}): list it in outbound.allow_internal to call it")]
    Internal {
        host: String,
        address: IpAddr,
        kind: &'static str,
    },
    #[error("{host} is a local name: list it in outbound.allow_internal to call it")]
    LocalName { host: String },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
}

impl Refusal {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NotUrl(_) | Refusal::NoHost => "not-a-url",
            Refusal::Scheme(_) => "scheme",
            Refusal::PlainHttp { .. } => "plain-http",
            Refusal::Internal { .. } | Refusal::LocalName { .. } => "internal-address",
            Refusal::TooManyRedirects => "redirects",
        }
    }
}

/// Whether `ip` is an internal address, and what kind. Pure.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "a cloud metadata address",
        (0, _, _) => "a 'this network' address",
        (127, _, _) => "a loopback address",
        (10, _, _) => "a private address",
        (172, 16..=31, _) => "a private address",
        (192, 168, _) => "a private address",
        (169, 254, _) => "a link-local address",
        (100, 64..=127, _) => "a shared (carrier-grade NAT) address",
        (192, 0, 0) => "an IETF protocol address",
        (198, 18..=19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved or broadcast address",
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    // IPv4 written as IPv6 is judged as the IPv4 address it is.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    // IPv4-compatible (deprecated) `::a.b.c.d`.
    if s[..6] == [0; 6] {
        return v4_kind(embedded(s[6], s[7])).or(Some("an IPv4-compatible address"));
    }
    // NAT64 `64:ff9b::a.b.c.d` reaches the IPv4 address it carries.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_kind(embedded(s[6], s[7]));
    }
    // 6to4 `2002:AABB:CCDD::` routes to IPv4 AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return v4_kind(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        0x64 if s[1] == 0xff9b && s[2] == 1 => "a local-use NAT64 address",
        0x2001 if s[1] == 0 => "a Teredo tunnel address",
        x if x & 0xfe00 == 0xfc00 => "a unique-local (private) address",
        x if x & 0xffc0 == 0xfe80 => "a link-local address",
        x if x & 0xffc0 == 0xfec0 => "a site-local address",
        x if x & 0xff00 == 0xff00 => "a multicast address",
        _ => return None,
    })
}

/// The built policy.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    networks: Vec<IpNet>,
    /// Host names allowed to be internal (lowercase).
    hosts: Vec<String>,
    http_hosts: Vec<String>,
    http_any: bool,
}

/// A shared policy, what client builders take.
pub type Outbound = Arc<OutboundPolicy>;

fn normalise_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

impl OutboundPolicy {
    /// Builds the policy; problems are `(field, message)` with the field's index.
    pub fn from_config(config: &OutboundConfig) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut policy = OutboundPolicy::default();
        for (i, entry) in config.allow_internal.iter().enumerate() {
            let entry = entry.trim();
            // Blank entries are skipped: `["${SANDBOX_HOST:-}"]` allows nothing when unset.
            if entry.is_empty() {
                continue;
            }
            if let Ok(net) = entry.parse::<IpNet>() {
                policy.networks.push(net);
            } else if let Ok(ip) = normalise_host(entry).parse::<IpAddr>() {
                policy.networks.push(IpNet::from(ip));
            } else if is_host_name(entry) {
                policy.hosts.push(normalise_host(entry));
            } else {
                problems.push((
                    format!("allow_internal[{i}]"),
                    "must be a network (`10.0.0.0/8`), an address or a host name".to_string(),
                ));
            }
        }
        for (i, entry) in config.allow_http.iter().enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            } else if entry == "*" {
                policy.http_any = true;
            } else if normalise_host(entry).parse::<IpAddr>().is_ok() || is_host_name(entry) {
                policy.http_hosts.push(normalise_host(entry));
            } else {
                problems.push((
                    format!("allow_http[{i}]"),
                    "must be a host name, an address or `*`".to_string(),
                ));
            }
        }
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }

    /// Anything goes: for the emulators and tests that talk to servers on loopback.
    pub fn allow_all() -> Self {
        OutboundPolicy {
            networks: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            hosts: Vec::new(),
            http_hosts: Vec::new(),
            http_any: true,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = normalise_host(host);
        self.hosts.contains(&host)
    }

    /// Whether `host` may be reached at `address`.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), Refusal> {
        let address = match address {
            IpAddr::V6(v6) => v6.to_canonical(),
            v4 => v4,
        };
        match internal_kind(address) {
            Some(kind)
                if !self.host_allowed(host)
                    && !self.networks.iter().any(|n| n.contains(&address)) =>
            {
                Err(Refusal::Internal {
                    host: normalise_host(host),
                    address,
                    kind,
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether a URL may be called, as far as it shows without resolving its host: the
    /// scheme, plain http, an address written in it, `localhost`.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refusal> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(Refusal::Scheme(scheme.chars().take(16).collect()));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(Refusal::NoHost)?;
        let name = normalise_host(host);
        // Where it goes first (the more telling refusal), then how.
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check_address(&name, IpAddr::V4(v4))?,
            Some(url::Host::Ipv6(v6)) => self.check_address(&name, IpAddr::V6(v6))?,
            _ if (name == "localhost" || name.ends_with(".localhost"))
                && !self.host_allowed(&name)
                && !self
                    .networks
                    .iter()
                    .any(|n| n.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST))) =>
            {
                return Err(Refusal::LocalName { host: name });
            }
            _ => {}
        }
        if scheme == "http" && !self.http_any && !self.http_hosts.contains(&name) {
            return Err(Refusal::PlainHttp { host: name });
        }
        Ok(())
    }

    /// [`check_url`](Self::check_url) on text (a configured URL).
    pub fn check_url_text(&self, url: &str) -> Result<reqwest::Url, Refusal> {
        let parsed = reqwest::Url::parse(url.trim()).map_err(|e| Refusal::NotUrl(e.to_string()))?;
        self.check_url(&parsed)?;
        Ok(parsed)
    }
}

fn is_host_name(text: &str) -> bool {
    let text = text.trim_end_matches('.');
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// What a client does with redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// Follow up to [`MAX_REDIRECTS`], each hop checked like the first URL.
    Follow,
    /// Follow none (signed deliveries: the body and signature go where they were meant to).
    Never,
}

/// Resolves names and keeps only the addresses the policy allows.
struct GuardedResolver {
    policy: Outbound,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check_address(&host, a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refusal.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let refusal = refusal.unwrap_or(Refusal::NoHost);
                metrics::counter!("raccordo_outbound_refused_total", "reason" => refusal.label())
                    .increment(1);
                tracing::warn!(host = %host, error = %refusal, "outbound call refused");
                return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A client builder that enforces `policy` on every connection and redirect; the caller
/// adds its own timeouts.
pub fn client_builder(policy: &Outbound, redirects: Redirects) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder().dns_resolver(Arc::new(GuardedResolver {
        policy: policy.clone(),
    }));
    match redirects {
        Redirects::Never => builder.redirect(reqwest::redirect::Policy::none()),
        Redirects::Follow => {
            let policy = policy.clone();
            builder.redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    return attempt.error(Refusal::TooManyRedirects);
                }
                match policy.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refusal) => {
                        metrics::counter!("raccordo_outbound_refused_total", "reason" => refusal.label())
                            .increment(1);
                        attempt.error(refusal)
                    }
                }
            }))
        }
    }
}

/// Finds the outbound refusal behind a `reqwest` error, if that is why it failed.
pub fn refusal_of(error: &reqwest::Error) -> Option<&Refusal> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> OutboundPolicy {
        OutboundPolicy::from_config(&OutboundConfig::default()).unwrap()
    }

    fn check(policy: &OutboundPolicy, url: &str) -> Result<(), Refusal> {
        policy.check_url_text(url).map(|_| ())
    }

    #[test]
    fn internal_addresses_are_refused_however_they_are_written() {
        let p = strict();
        for url in [
            "https://169.254.169.254/latest/meta-data/",
            "https://[::ffff:169.254.169.254]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:a9fe:a9fe::1]/",
            "https://[::169.254.169.254]/",
            "https://127.0.0.1/",
            "https://127.1/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://[::1]/",
            "https://0.0.0.0/",
            "https://10.1.2.3/",
            "https://172.20.0.1/",
            "https://192.168.1.1/",
            "https://100.64.0.1/",
            "https://[fd00:ec2::254]/",
            "https://[fe80::1]/",
            "https://localhost/",
            "https://api.localhost/",
            "https://LOCALHOST./",
        ] {
            assert!(check(&p, url).is_err(), "{url} must be refused");
        }
        for url in [
            "https://api.hubapi.com/crm/v3/objects/contacts",
            "HTTPS://hooks.slack.com/services/T/B/X",
            "https://93.184.215.14/",
            "https://[2606:4700::1111]/",
        ] {
            assert_eq!(check(&p, url), Ok(()), "{url} must pass");
        }
    }

    #[test]
    fn plain_http_bare_urls_and_other_schemes_are_refused() {
        let p = strict();
        assert!(matches!(
            check(&p, "http://hooks.slack.com/services/T/B/X"),
            Err(Refusal::PlainHttp { .. })
        ));
        assert!(matches!(check(&p, "http://"), Err(Refusal::NotUrl(_))));
        assert!(matches!(
            check(&p, "file:///etc/passwd"),
            Err(Refusal::Scheme(_))
        ));
        assert!(matches!(check(&p, "gopher://x/"), Err(Refusal::Scheme(_))));
        assert!(check(&p, "").is_err());
    }

    #[test]
    fn refusals_never_carry_the_url_path() {
        let p = strict();
        let e = check(&p, "http://hooks.slack.com/services/T000/B000/SECRETPATH").unwrap_err();
        assert!(!e.to_string().contains("SECRETPATH"), "{e}");
    }

    #[test]
    fn allow_lists_open_exactly_what_they_name() {
        let p = OutboundPolicy::from_config(&OutboundConfig {
            allow_internal: vec![
                "10.0.5.0/24".into(),
                "127.0.0.1".into(),
                "crm.internal".into(),
            ],
            allow_http: vec!["crm.internal".into(), "127.0.0.1".into()],
        })
        .unwrap();
        assert_eq!(check(&p, "https://10.0.5.7/"), Ok(()));
        assert!(check(&p, "https://10.0.6.7/").is_err());
        assert_eq!(check(&p, "http://127.0.0.1:8080/x"), Ok(()));
        assert!(
            check(&p, "http://127.0.0.2/").is_err(),
            "not the allowed address"
        );
        assert_eq!(check(&p, "http://crm.internal/x"), Ok(()));
        assert!(
            check(&p, "http://other.internal/x").is_err(),
            "plain http not allowed"
        );
        assert_eq!(
            p.check_address("crm.internal", "10.9.9.9".parse().unwrap()),
            Ok(()),
            "an allowed name may resolve to anything"
        );
        assert!(
            p.check_address("evil.example", "10.9.9.9".parse().unwrap())
                .is_err()
        );
        assert_eq!(
            p.check_address("evil.example", "::ffff:10.0.5.1".parse().unwrap()),
            Ok(()),
            "mapped addresses match the IPv4 networks"
        );
    }

    #[test]
    fn bad_allow_entries_name_their_index() {
        let problems = OutboundPolicy::from_config(&OutboundConfig {
            allow_internal: vec!["10.0.0.0/8".into(), "not a host!".into()],
            allow_http: vec!["http://x".into()],
        })
        .unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["allow_internal[1]", "allow_http[0]"]);
    }

    proptest::proptest! {
        /// Every IPv4 address and its IPv6-mapped form are judged alike.
        #[test]
        fn mapped_addresses_are_judged_as_their_ipv4(raw in proptest::prelude::any::<u32>()) {
            let v4 = Ipv4Addr::from(raw);
            let p = strict();
            proptest::prop_assert_eq!(
                p.check_address("h", IpAddr::V4(v4)).is_ok(),
                p.check_address("h", IpAddr::V6(v4.to_ipv6_mapped())).is_ok()
            );
            proptest::prop_assert_eq!(
                internal_kind(IpAddr::V4(v4)).is_some(),
                internal_kind(IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, (raw >> 16) as u16, raw as u16))).is_some()
            );
        }
    }
}
