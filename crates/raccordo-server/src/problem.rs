//! RFC 9457 problem details. Every error the server answers goes through here.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use raccordo_ingest::{FieldError, IngestError};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Every problem type the hub answers with (`urn:raccordo:problem:<slug>`) and what it
/// means; `/openapi.json` lists them, and a debug build refuses to answer with another.
pub const PROBLEM_TYPES: &[(&str, &str)] = &[
    (
        "missing-credentials",
        "The route needs credentials and the request carries none",
    ),
    (
        "invalid-credentials",
        "Credentials were sent and are wrong (key, signature, token)",
    ),
    ("token-expired", "The JWT has expired"),
    (
        "timestamp-outside-tolerance",
        "The signature's timestamp is too far from the hub's clock",
    ),
    (
        "insufficient-scope",
        "The admin token lacks the scope this route needs",
    ),
    ("unknown-source", "No source of that name is configured"),
    (
        "origin-not-allowed",
        "A browser preflight from an origin the source's `cors` does not list",
    ),
    (
        "not-replayable",
        "The refused request cannot be replayed (it failed authentication, its body was cut, or a replay was accepted already)",
    ),
    ("source-disabled", "The source is configured but disabled"),
    (
        "rate-limited",
        "Over one of the source's `limits` (requests, per address, bytes); see `Retry-After`",
    ),
    (
        "address-not-allowed",
        "The client's address is not in the source's `allow_from`",
    ),
    (
        "address-blocked",
        "This client address failed authentication too often and is refused for a while; see `Retry-After`",
    ),
    (
        "client-certificate-refused",
        "The source requires a client certificate (mutual TLS) and none good for it was presented",
    ),
    ("not-found", "No such route or resource"),
    (
        "grant-refused",
        "The CRM refused the authorization code (expired, already used, or for another client)",
    ),
    (
        "not-configured",
        "The route serves a feature that is not configured on this hub",
    ),
    ("method-not-allowed", "The route does not take that method"),
    ("body-too-large", "The body is over the server's limit"),
    ("batch-too-large", "The batch holds more items than allowed"),
    ("empty-batch", "The batch holds no item"),
    ("unsupported-media-type", "The body is not JSON"),
    ("invalid-json", "The body is not valid JSON"),
    (
        "validation-failed",
        "Fields break the schema or the rules; `errors` names each by pointer",
    ),
    (
        "invalid-parameter",
        "A query parameter is wrong; `parameters` names it",
    ),
    ("invalid-request", "The path or the headers are malformed"),
    (
        "delivery-id-conflict",
        "The delivery id was used before with another body",
    ),
    (
        "overloaded",
        "The writer is saturated; retry after `Retry-After`",
    ),
    (
        "unavailable",
        "Not available now (store full or stopped, shutting down, timed out); retry after `Retry-After`",
    ),
    ("internal", "An unexpected failure; see the server log"),
];

/// A located problem with a query parameter (`errors[].parameter`), the query-string
/// counterpart of a body field's JSON pointer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ParameterError {
    pub parameter: String,
    pub detail: String,
}

/// An RFC 9457 problem: every error of every route. `type` is stable
/// (`urn:raccordo:problem:<slug>`); no field ever echoes a value the client sent.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// Stable URI of the problem type: `urn:raccordo:problem:<slug>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Body fields at fault, as JSON pointers (`/3/valore`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParameterError>,
    /// Total failures when more were found than are listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_errors: Option<usize>,
    #[serde(skip)]
    pub retry_after_s: Option<u64>,
    #[serde(skip)]
    pub www_authenticate: Option<&'static str>,
}

impl Problem {
    pub fn new(status: u16, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        debug_assert!(
            PROBLEM_TYPES.iter().any(|(known, _)| *known == slug),
            "problem type `{slug}` is not in PROBLEM_TYPES"
        );
        Self {
            type_uri: format!("urn:raccordo:problem:{slug}"),
            title: title.into(),
            status,
            detail: detail.into(),
            errors: Vec::new(),
            parameters: Vec::new(),
            total_errors: None,
            retry_after_s: None,
            www_authenticate: None,
        }
    }

    pub fn bad_parameter(parameter: &str, detail: impl Into<String>) -> Self {
        let mut p = Self::new(
            400,
            "invalid-parameter",
            "Invalid query parameter",
            format!("query parameter `{parameter}` is invalid"),
        );
        p.parameters.push(ParameterError {
            parameter: parameter.into(),
            detail: detail.into(),
        });
        p
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "not-found", "Not found", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(503, "unavailable", "Service unavailable", detail)
    }
}

impl From<IngestError> for Problem {
    fn from(e: IngestError) -> Self {
        let mut p = Problem::new(e.status(), e.slug(), e.title(), e.to_string());
        match &e {
            IngestError::Validation { errors, total } => {
                p.errors = errors.clone();
                if *total > errors.len() {
                    p.total_errors = Some(*total);
                }
                p.detail = format!(
                    "{total} problem(s) in the body; nothing was stored (first at `{}`)",
                    errors.first().map(|f| f.pointer.as_str()).unwrap_or("")
                );
            }
            IngestError::MissingCredentials { expected } => {
                p.detail = format!("send {expected}");
                p.www_authenticate = Some("Bearer");
            }
            IngestError::InvalidCredentials { .. } | IngestError::TokenExpired => {
                p.www_authenticate = Some("Bearer")
            }
            IngestError::Overloaded { retry_after_ms }
            | IngestError::RateLimited { retry_after_ms, .. }
            | IngestError::AddressBlocked { retry_after_ms }
            | IngestError::Unavailable { retry_after_ms, .. } => {
                p.retry_after_s = Some(retry_after_ms.div_ceil(1000).max(1))
            }
            _ => {}
        }
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after_s;
        let auth = self.www_authenticate;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(seconds) = retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(scheme) = auth {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raccordo_ingest::{FieldError, IngestError};

    #[test]
    fn every_ingest_rejection_has_a_listed_problem_type() {
        let rejections = [
            IngestError::MissingCredentials {
                expected: String::new(),
            },
            IngestError::TokenExpired,
            IngestError::EmptyBatch,
            IngestError::DeliveryConflict,
            IngestError::Validation {
                errors: vec![FieldError::new("/x", "y")],
                total: 1,
            },
            IngestError::Overloaded { retry_after_ms: 1 },
            IngestError::Unavailable {
                reason: String::new(),
                retry_after_ms: 1,
            },
        ];
        for e in rejections {
            let slug = e.slug();
            assert!(
                PROBLEM_TYPES.iter().any(|(known, _)| *known == slug),
                "{slug}"
            );
            let problem = Problem::from(e);
            assert!(problem.type_uri.ends_with(slug));
        }
    }
}
