//! Why a request was rejected. Each variant knows its HTTP status and stable problem type;
//! the server renders it as RFC 9457 `application/problem+json`. Messages never contain
//! credentials or signatures, only where the problem is.

use serde::Serialize;

/// A problem located at one field of the request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// RFC 6901 JSON pointer into the request body, e.g. `/3/valore`.
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// Every way an ingest request can fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("no credentials were presented")]
    MissingCredentials { expected: String },
    #[error("the credentials were not accepted: {reason}")]
    InvalidCredentials { reason: String },
    #[error("the token has expired")]
    TokenExpired,
    #[error("the signature timestamp is outside the allowed tolerance of {tolerance_s} s")]
    TimestampOutsideTolerance { tolerance_s: u64 },
    #[error("source `{0}` is not configured")]
    UnknownSource(String),
    #[error("source `{0}` is disabled")]
    SourceDisabled(String),
    /// The client's address is not in the source's `allow_from`.
    #[error("source `{0}` takes no requests from this address")]
    AddressNotAllowed(String),
    /// The source requires a client certificate (mutual TLS) and the one presented, if
    /// any, is not good for it.
    #[error("source `{source_name}` refused the client certificate: {refusal}")]
    ClientCertificate {
        source_name: String,
        refusal: crate::client_cert::CertRefusal,
    },
    /// The client's address failed authentication too often and is blocked for a while.
    #[error(
        "this address is blocked after repeated authentication failures; retry after {retry_after_ms} ms"
    )]
    AddressBlocked { retry_after_ms: u64 },
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the batch has {count} items; at most {limit} are allowed")]
    BatchTooLarge { count: usize, limit: usize },
    #[error("the batch is empty")]
    EmptyBatch,
    #[error("unsupported content type {found:?}; send application/json")]
    UnsupportedMediaType { found: String },
    #[error("the body is not valid JSON: {detail}")]
    InvalidJson { detail: String },
    #[error("{} item(s) failed validation", .errors.len())]
    Validation {
        errors: Vec<FieldError>,
        total: usize,
    },
    #[error("the delivery id was already used for a different body")]
    DeliveryConflict,
    #[error("the store is saturated")]
    Overloaded { retry_after_ms: u64 },
    /// Over one of the source's `limits` (`limit`: `source`, `address` or `bytes`).
    #[error("over the source's {limit} rate limit; retry after {retry_after_ms} ms")]
    RateLimited {
        limit: &'static str,
        retry_after_ms: u64,
    },
    /// The store cannot take the write now (stopped, unreachable, disk full); nothing was
    /// stored and the client should try again after `retry_after_ms`.
    #[error("{reason}")]
    Unavailable { reason: String, retry_after_ms: u64 },
}

impl IngestError {
    /// HTTP status for this rejection.
    pub fn status(&self) -> u16 {
        use IngestError::*;
        match self {
            MissingCredentials { .. } | InvalidCredentials { .. } | TokenExpired => 401,
            TimestampOutsideTolerance { .. } => 401,
            UnknownSource(_) => 404,
            SourceDisabled(_) | AddressNotAllowed(_) | ClientCertificate { .. } => 403,
            BodyTooLarge { .. } | BatchTooLarge { .. } => 413,
            UnsupportedMediaType { .. } => 415,
            InvalidJson { .. } | EmptyBatch => 400,
            Validation { .. } => 422,
            DeliveryConflict => 409,
            Overloaded { .. } | RateLimited { .. } | AddressBlocked { .. } => 429,
            Unavailable { .. } => 503,
        }
    }

    /// Stable problem type slug; the full type URI is `urn:raccordo:problem:<slug>`.
    pub fn slug(&self) -> &'static str {
        use IngestError::*;
        match self {
            MissingCredentials { .. } => "missing-credentials",
            InvalidCredentials { .. } => "invalid-credentials",
            TokenExpired => "token-expired",
            TimestampOutsideTolerance { .. } => "timestamp-outside-tolerance",
            UnknownSource(_) => "unknown-source",
            SourceDisabled(_) => "source-disabled",
            AddressNotAllowed(_) => "address-not-allowed",
            ClientCertificate { .. } => "client-certificate-refused",
            AddressBlocked { .. } => "address-blocked",
            BodyTooLarge { .. } => "body-too-large",
            BatchTooLarge { .. } => "batch-too-large",
            EmptyBatch => "empty-batch",
            UnsupportedMediaType { .. } => "unsupported-media-type",
            InvalidJson { .. } => "invalid-json",
            Validation { .. } => "validation-failed",
            DeliveryConflict => "delivery-id-conflict",
            Overloaded { .. } => "overloaded",
            RateLimited { .. } => "rate-limited",
            Unavailable { .. } => "unavailable",
        }
    }

    /// The failure reason when the request failed to authenticate (credentials or client
    /// certificate), the kind the auth guard counts; `None` for anything else.
    pub fn auth_failure(&self) -> Option<&'static str> {
        use IngestError::*;
        matches!(
            self,
            MissingCredentials { .. }
                | InvalidCredentials { .. }
                | TokenExpired
                | TimestampOutsideTolerance { .. }
                | ClientCertificate { .. }
        )
        .then(|| self.slug())
    }

    /// Short human title (RFC 9457 `title`), constant per type.
    pub fn title(&self) -> &'static str {
        use IngestError::*;
        match self {
            MissingCredentials { .. } => "Credentials required",
            InvalidCredentials { .. } => "Credentials not accepted",
            TokenExpired => "Token expired",
            TimestampOutsideTolerance { .. } => "Signature timestamp out of tolerance",
            UnknownSource(_) => "Unknown source",
            SourceDisabled(_) => "Source disabled",
            AddressNotAllowed(_) => "Address not allowed",
            ClientCertificate { .. } => "Client certificate refused",
            AddressBlocked { .. } => "Address blocked",
            BodyTooLarge { .. } => "Body too large",
            BatchTooLarge { .. } => "Batch too large",
            EmptyBatch => "Empty batch",
            UnsupportedMediaType { .. } => "Unsupported media type",
            InvalidJson { .. } => "Malformed JSON",
            Validation { .. } => "Validation failed",
            DeliveryConflict => "Delivery id reused with a different body",
            Overloaded { .. } => "Too many requests",
            RateLimited { .. } => "Rate limited",
            Unavailable { .. } => "Service unavailable",
        }
    }

    /// The failing fields, when the problem is in the body.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            IngestError::Validation { errors, .. } => errors,
            _ => &[],
        }
    }

    /// The reason label used on the `raccordo_ingest_rejected_total` metric.
    pub fn metric_reason(&self) -> &'static str {
        self.slug()
    }
}
