//! The e-mail digest of failed sync operations (the seed's requirement): at a fixed
//! interval, every operation that reached the dead-letter queue since the last digest,
//! each with its operation, source and target system, record id and name, the field and
//! the reason, attempts, time, and how to replay it. Nothing is sent when nothing failed.

use std::time::Duration;

use raccordo_core::{DeadLetter, KeyValueStore, StoreError, WorkQueue};
use raccordo_notify::{EmailChannel, EmailConfig};
use serde::{Deserialize, Serialize};

use crate::jobs::{QUEUE, SyncRecord};

/// `[sync.digest]`: where and how often failed operations are reported.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DigestConfig {
    /// How often a digest is sent (when something failed since the last one).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub every: Duration,
    /// The SMTP server and recipients; no digest without it.
    pub email: Option<EmailConfig>,
}

impl Default for DigestConfig {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(3600),
            email: None,
        }
    }
}

/// The digest's subject and body for these dead letters (`None` when there are none).
/// `hub_url` makes each entry's replay link.
pub fn render(letters: &[DeadLetter], hub_url: Option<&str>) -> Option<(String, String)> {
    if letters.is_empty() {
        return None;
    }
    let subject = format!("[raccordo] {} failed sync operation(s)", letters.len());
    let mut body = format!(
        "{} sync operation(s) failed since the last digest. Each is in the dead-letter queue;\n\
         fix the record in the CRM, then replay it.\n",
        letters.len()
    );
    for l in letters {
        let job: Option<SyncRecord> = serde_json::from_value(l.payload.clone()).ok();
        let (source, target, kind, id) = match &job {
            Some(j) => (
                j.origin.as_str(),
                j.origin.other().as_str(),
                j.kind.as_str(),
                j.id.as_str(),
            ),
            None => ("?", "?", "?", l.group_key.as_str()),
        };
        body.push_str(&format!(
            "\n#{id_dl}  {op}: {kind} {id}, {source} -> {target}\n  \
             reason:   {reason}\n  \
             attempts: {attempts}, first queued {first}, failed {failed}\n  \
             replay:   raccordo dlq replay {id_dl}",
            id_dl = l.id,
            op = l.operation,
            reason = l.last_error,
            attempts = l.attempts,
            first = raccordo_core::rfc3339(l.first_enqueued_at_ms),
            failed = raccordo_core::rfc3339(l.failed_at_ms),
        ));
        if let Some(url) = hub_url {
            body.push_str(&format!(
                "  (or POST {}/api/v1/dlq/{}/replay)",
                url.trim_end_matches('/'),
                l.id
            ));
        }
        body.push('\n');
    }
    Some((subject, body))
}

const CURSOR: &str = "sync:digest:last_dead_letter";

/// Sends one digest of the sync dead letters added since the last one; how many it listed.
/// The cursor moves only after the mail server took the message, so a failed send is
/// retried with the same letters next time.
pub async fn send_once(
    queue: &dyn WorkQueue,
    kv: &dyn KeyValueStore,
    email: &EmailChannel,
    hub_url: Option<&str>,
    now_ms: i64,
) -> Result<usize, String> {
    let store = |e: StoreError| format!("state store: {e}");
    let after = kv
        .get(CURSOR, now_ms)
        .await
        .map_err(store)?
        .and_then(|v| String::from_utf8_lossy(&v.value).parse::<i64>().ok());
    let mut letters = Vec::new();
    let mut cursor = after;
    loop {
        let page = queue
            .dead_letters(Some(QUEUE), cursor, 1000)
            .await
            .map_err(store)?;
        let full = page.len() == 1000;
        cursor = page.last().map(|l| l.id).or(cursor);
        letters.extend(page);
        if !full {
            break;
        }
    }
    let Some((subject, body)) = render(&letters, hub_url) else {
        return Ok(0);
    };
    match email.send_text(&subject, body).await {
        raccordo_core::Completion::Done => {}
        raccordo_core::Completion::Retryable { error, .. }
        | raccordo_core::Completion::Permanent { error } => return Err(error),
    }
    if let Some(last) = cursor {
        kv.put(CURSOR, last.to_string().into_bytes(), None, now_ms)
            .await
            .map_err(store)?;
    }
    Ok(letters.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raccordo_core::crm::{ObjectKind, System};

    #[test]
    fn each_failure_is_listed_with_its_reason_and_replay() {
        let job = SyncRecord {
            kind: ObjectKind::Contact,
            origin: System::HubSpot,
            id: "101".into(),
            group: "contact:hubspot:101".into(),
        };
        let letter = DeadLetter {
            id: 7,
            queue: QUEUE.into(),
            group_key: job.group.clone(),
            operation: "sync_record".into(),
            payload: serde_json::to_value(&job).unwrap(),
            attempts: 1,
            last_error: "field `email` (hubspot): missing (record: Anna Rossi)".into(),
            first_enqueued_at_ms: 1_767_225_600_000,
            failed_at_ms: 1_767_225_660_000,
        };
        let (subject, body) = render(&[letter], Some("https://hub.example.it/")).unwrap();
        assert_eq!(subject, "[raccordo] 1 failed sync operation(s)");
        for part in [
            "#7  sync_record: contact 101, hubspot -> zoho",
            "field `email` (hubspot): missing (record: Anna Rossi)",
            "attempts: 1, first queued 2026-01-01T00:00:00Z, failed 2026-01-01T00:01:00Z",
            "raccordo dlq replay 7",
            "POST https://hub.example.it/api/v1/dlq/7/replay",
        ] {
            assert!(body.contains(part), "{part} not in:\n{body}");
        }
        assert_eq!(render(&[], None), None);
    }
}
