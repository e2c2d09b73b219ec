//! Reading request bodies under the server's limit, and counting ingest requests in flight.

use axum::body::{Body, Bytes};
use http::{HeaderMap, header};
use raccordo_ingest::IngestError;

/// Counts ingest requests being processed (`raccordo_ingest_in_flight_requests`).
pub struct InFlight;

/// The gauge's handle, looked up once: `gauge!` looks the series up in the recorder's
/// registry at every call, twice per request. The hub installs its recorder before it
/// serves, so the first request already finds it.
static IN_FLIGHT: std::sync::LazyLock<::metrics::Gauge> =
    std::sync::LazyLock::new(|| ::metrics::gauge!("raccordo_ingest_in_flight_requests"));

impl InFlight {
    pub fn enter() -> Self {
        IN_FLIGHT.increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.decrement(1.0);
    }
}

/// Reads the body up to `limit` bytes; a declared or actual larger body is a 413.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::BodyTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util_limited::LengthLimitError>());
        if too_large || e.to_string().contains("length limit") {
            IngestError::BodyTooLarge { limit }
        } else {
            IngestError::InvalidJson {
                detail: "the body could not be read completely".into(),
            }
        }
    })
}

mod http_body_util_limited {
    /// axum wraps http-body-util's error; matching by type keeps us off its private paths.
    pub type LengthLimitError = axum::extract::rejection::LengthLimitError;
}
