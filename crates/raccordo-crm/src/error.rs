//! One error type for both CRMs, sorted the way the work queue needs: retry later, or give
//! up and dead-letter with the reason (and the field, when the CRM names one).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmError {
    /// Timeouts, connection errors, 5xx, 429: the same call may work later.
    #[error("{system}: {message}")]
    Retryable {
        system: &'static str,
        status: Option<u16>,
        message: String,
        /// From `Retry-After`, or what the CRM's own rate-limit policy implies.
        retry_after_ms: Option<i64>,
    },
    /// The CRM refused the call as it is (validation, missing or malformed fields, not
    /// found where a record was required): retrying cannot help.
    #[error("{system}: {message}")]
    Permanent {
        system: &'static str,
        status: Option<u16>,
        message: String,
        /// The field the CRM blamed, in its own naming.
        field: Option<String>,
    },
    /// The credentials were refused (or a token refresh was): a person must renew the grant
    /// with `raccordo connect`. Work waits instead of hammering the CRM.
    #[error("{system}: credentials refused: {message}")]
    Unauthorized {
        system: &'static str,
        message: String,
    },
}

impl CrmError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, CrmError::Retryable { .. })
    }

    pub fn retry_after_ms(&self) -> Option<i64> {
        match self {
            CrmError::Retryable { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            CrmError::Permanent { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn transport(system: &'static str, e: &reqwest::Error) -> Self {
        // The cause, not reqwest's own message: that one names the URL, whose query may
        // hold a token.
        let cause = std::error::Error::source(e).map_or_else(String::new, |s| format!(": {s}"));
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "request failed"
        };
        CrmError::Retryable {
            system,
            status: None,
            message: format!("{what}{cause}"),
            retry_after_ms: None,
        }
    }

    pub(crate) fn permanent(system: &'static str, message: impl Into<String>) -> Self {
        CrmError::Permanent {
            system,
            status: None,
            message: message.into(),
            field: None,
        }
    }
}

/// Calls one client call makes at most: a brief hiccup (a 5xx, a dropped connection, a
/// short 429) is retried in place, so one bad call does not send a whole batch back to the
/// queue. Longer waits go back to the queue, which schedules them without holding a worker.
pub(crate) const QUICK_TRIES: u32 = 3;
const QUICK_WAIT_MAX_MS: i64 = 2_000;

/// How long to wait before trying the same call again after failure number `tries`
/// (1-based), or `None` to give the error back.
pub(crate) fn quick_retry_wait(e: &CrmError, tries: u32) -> Option<Duration> {
    let CrmError::Retryable { retry_after_ms, .. } = e else {
        return None;
    };
    if tries >= QUICK_TRIES {
        return None;
    }
    let wait = retry_after_ms.unwrap_or(100 << tries.min(6));
    (wait <= QUICK_WAIT_MAX_MS).then(|| Duration::from_millis(wait.max(0) as u64))
}

/// How one try of a call ended, when it did not succeed: a 401 (with the token it used, so
/// the caller can refresh once), or any other failure.
pub(crate) enum Attempt {
    Unauthorized(String),
    Failed(CrmError),
}

impl From<CrmError> for Attempt {
    fn from(e: CrmError) -> Self {
        Attempt::Failed(e)
    }
}

/// `Retry-After` in seconds (the only form HubSpot and Zoho send), as milliseconds.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<i64> {
    let secs: f64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs).as_millis() as i64)
}

/// Sorts a non-2xx answer. `message` and `field` come from the CRM's body (its own text,
/// which names fields but does not echo record values).
pub(crate) fn from_status(
    system: &'static str,
    status: StatusCode,
    headers: &HeaderMap,
    message: String,
    field: Option<String>,
    policy_wait_ms: Option<i64>,
) -> CrmError {
    let code = status.as_u16();
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() || code == 408 {
        return CrmError::Retryable {
            system,
            status: Some(code),
            message: format!("HTTP {code}: {message}"),
            retry_after_ms: retry_after(headers).or(policy_wait_ms),
        };
    }
    if status == StatusCode::UNAUTHORIZED {
        return CrmError::Unauthorized {
            system,
            message: format!("HTTP {code}: {message}"),
        };
    }
    CrmError::Permanent {
        system,
        status: Some(code),
        message: format!("HTTP {code}: {message}"),
        field,
    }
}

/// The `message` of a JSON error body, or a short note when there is none.
pub(crate) fn body_message(body: &Value) -> String {
    body.get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| "no error message".into())
}
