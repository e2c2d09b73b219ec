//! The audit log: what was done to the hub and by whom (an admin token, by name, or the hub
//! itself), append-only. Records are never changed or removed through this trait; the
//! embedded store also refuses `UPDATE` and `DELETE` on its table.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// One admin action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// `aud_<ULID>`: sorts by time.
    pub id: String,
    pub at_ms: i64,
    /// Who: the admin token's name, `system` for the hub's own actions (a certificate
    /// reload), `cli` for commands run on the machine.
    pub actor: String,
    /// What, e.g. `POST /api/v1/requests/{id}/replay` or `tls.reload`.
    pub action: String,
    /// On what: the request path, or the object's name.
    pub target: String,
    /// The HTTP status answered, or 0 for actions without one.
    pub status: u16,
    /// Anything else worth keeping (never secrets nor personal data); `{}` when nothing.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;

    /// Newest first: at most `limit` records older than `before_id` (all when `None`).
    async fn audit_records(
        &self,
        before_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;
}
