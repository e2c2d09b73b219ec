//! The request inspector's store: ingest requests the hub refused, kept (secrets redacted)
//! so that whoever configures a form tool or a CRM webhook can see what was sent and what was
//! answered, and replay it once the source is fixed.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// One refused ingest request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RejectedRequest {
    /// `req_<ULID>`: sorts by arrival.
    pub id: String,
    /// The source it was for, when known (named in the path, or found by its credentials).
    pub source: Option<String>,
    /// The path it was sent to, with secret query values redacted.
    pub target: String,
    pub received_at_ms: i64,
    /// The status answered.
    pub status: u16,
    /// The problem answered (`application/problem+json`), as sent.
    #[schema(value_type = Object)]
    pub problem: serde_json::Value,
    /// Request headers; credentials, signatures and cookies are `[redacted]`.
    pub headers: Vec<(String, String)>,
    /// The body, up to the inspector's limit.
    #[serde(with = "body_text")]
    #[schema(value_type = String)]
    pub body: Vec<u8>,
    /// The body's full size (larger than `body` when it was cut).
    pub body_bytes: u64,
    /// The request passed the source's authentication (refused later: content type, JSON,
    /// schema, mapping): only such requests can be replayed.
    pub authenticated: bool,
    /// Set once an admin replayed it.
    pub replay: Option<ReplayRecord>,
}

/// What a replay answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplayRecord {
    pub at_ms: i64,
    pub status: u16,
    /// The answer: the ingest outcome, or the problem.
    #[schema(value_type = Object)]
    pub answer: serde_json::Value,
}

/// Bodies travel as text (JSON and forms are text); other bytes as lossy UTF-8, since the
/// inspector is for reading.
mod body_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(body))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// Which refused requests to list.
#[derive(Debug, Clone, Default)]
pub struct RejectedFilter {
    pub source: Option<String>,
    pub status: Option<u16>,
    /// Only requests older than this id (the paging cursor: lists go newest first).
    pub before_id: Option<String>,
    pub limit: usize,
}

#[async_trait]
pub trait RejectedRequests: Send + Sync + 'static {
    async fn record_rejected(&self, request: &RejectedRequest) -> Result<(), StoreError>;

    /// Newest first, at most `filter.limit`.
    async fn rejected_requests(
        &self,
        filter: &RejectedFilter,
    ) -> Result<Vec<RejectedRequest>, StoreError>;

    async fn rejected_request(&self, id: &str) -> Result<Option<RejectedRequest>, StoreError>;

    /// Records a replay's answer; `false` when there is no such request.
    async fn record_replay(&self, id: &str, replay: &ReplayRecord) -> Result<bool, StoreError>;

    /// Removes requests received before `before_ms`, and the oldest beyond `keep` (the
    /// retention); returns how many went.
    async fn purge_rejected(&self, before_ms: i64, keep: usize) -> Result<u64, StoreError>;

    /// Requests whose body holds `needle` (a data subject's id), newest first: what an
    /// export shows and an erasure removes.
    async fn rejected_holding(&self, needle: &str) -> Result<Vec<RejectedRequest>, StoreError>;

    /// Removes these requests; how many went.
    async fn delete_rejected(&self, ids: &[String]) -> Result<u64, StoreError>;
}
