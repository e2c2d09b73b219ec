//! Validating extractors: handlers receive checked input or the client gets a precise
//! problem, and the handler body never repeats the checks.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::Problem;
use crate::settings::Scope;
use crate::state::AppState;

/// Proof that the caller holds an admin token with the `read` scope (or `admin`).
pub struct Reader;

/// Proof that the caller holds an admin token with the `admin` scope.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Reader {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        admit(parts, state, Scope::Read).map(|_| Reader)
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        admit(parts, state, Scope::Admin).map(|_| Admin)
    }
}

/// An admin-scope caller, by the token's name (for handlers that audit reads themselves).
pub struct AdminNamed(pub String);

impl FromRequestParts<Arc<AppState>> for AdminNamed {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        admit(parts, state, Scope::Admin).map(AdminNamed)
    }
}

/// The admin and read APIs' door: a blocked address is refused, then the API's own rate
/// limits apply, then the token is checked; a failed token counts against the address in
/// the same guard as failed webhook credentials. The token's name, on success.
pub fn admit(parts: &Parts, state: &AppState, scope: Scope) -> Result<String, Problem> {
    let address = client_address(parts, state);
    let now_ms = state.clock.now_ms();
    let guard = state.ingestor.guard();
    if let Some(wait) = guard.blocked_for_ms(address, now_ms) {
        return Err(Problem::from(
            raccordo_ingest::IngestError::AddressBlocked {
                retry_after_ms: wait.max(1),
            },
        ));
    }
    if let Err((limit, wait)) = state.admin_limiter.check(address, 0) {
        metrics::counter!("raccordo_admin_rate_limited_total", "limit" => limit.label())
            .increment(1);
        let mut problem = Problem::new(
            429,
            "rate-limited",
            "Rate limited",
            format!(
                "over the admin API's {} rate limit (`admin.limits`)",
                if limit.label() == "address" {
                    "per-address"
                } else {
                    "overall"
                }
            ),
        );
        problem.retry_after_s = Some((wait.as_millis() as u64).div_ceil(1000).max(1));
        return Err(problem);
    }
    match state.admin.require(&parts.headers, scope) {
        Ok(name) => {
            // An admin-scope request is audited under the token's name once it is answered.
            if scope == Scope::Admin
                && let Some(slot) = parts.extensions.get::<crate::audit::AuditSlot>()
            {
                slot.sign(name);
            }
            Ok(name.to_string())
        }
        Err(problem) => {
            if problem.status == 401 {
                let reason = if problem.type_uri.ends_with("missing-credentials") {
                    "missing-credentials"
                } else {
                    "invalid-credentials"
                };
                guard.failed(address, "admin", reason, now_ms);
            }
            Err(problem)
        }
    }
}

/// The caller's address: the peer's, or the forwarded one behind a trusted proxy.
fn client_address(parts: &Parts, state: &AppState) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<crate::connections::PeerAddr>()
        .map(|peer| {
            raccordo_ingest::network::client_address(
                peer.0.ip(),
                &parts.headers,
                &state.trusted_proxies,
            )
        })
}

/// Who is calling: the client's address (the peer's, or the forwarded one behind a trusted
/// proxy) and the certificate it presented over TLS, if any.
pub struct ClientOf(pub raccordo_ingest::Caller);

impl FromRequestParts<Arc<AppState>> for ClientOf {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let address = client_address(parts, state);
        let certificates = parts
            .extensions
            .get::<crate::connections::PeerCertificates>()
            .map(|c| c.0.clone());
        Ok(ClientOf(raccordo_ingest::Caller {
            address,
            certificates,
        }))
    }
}

/// Query parameters deserialised strictly (unknown ones refused); a bad parameter is a 400
/// problem naming it.
pub struct ValidQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ValidQuery(value)),
            Err(e) => {
                let text = e.body_text();
                let (parameter, detail) = parameter_of(&text);
                Err(Problem::bad_parameter(&parameter, detail))
            }
        }
    }
}

/// The parameter a query-string error is about, and what is wrong with it. serde names an
/// unknown field between backticks ("unknown field `colour`, expected …"); a value that does
/// not parse comes as "Failed to deserialize query string: limit: invalid digit …".
fn parameter_of(text: &str) -> (String, String) {
    let rest = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(text);
    if rest.starts_with("unknown field") {
        let name = rest.split('`').nth(1).unwrap_or("query");
        return (name.to_string(), rest.to_string());
    }
    match rest.split_once(": ") {
        Some((name, detail))
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') =>
        {
            (name.to_string(), detail.to_string())
        }
        _ => ("query".to_string(), rest.to_string()),
    }
}

/// An optional RFC 3339 query parameter, as epoch ms.
pub fn time_param(name: &str, value: Option<&str>) -> Result<Option<i64>, Problem> {
    value
        .map(|v| {
            raccordo_ingest::conversion::parse_time_ms(v)
                .ok_or_else(|| Problem::bad_parameter(name, "must be an RFC 3339 date-time"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::parameter_of;

    #[test]
    fn a_query_error_names_its_parameter() {
        assert_eq!(
            parameter_of(
                "Failed to deserialize query string: limit: invalid digit found in string"
            ),
            ("limit".into(), "invalid digit found in string".into())
        );
        assert_eq!(
            parameter_of(
                "Failed to deserialize query string: unknown field `colour`, expected one of `a`"
            )
            .0,
            "colour"
        );
    }
}
