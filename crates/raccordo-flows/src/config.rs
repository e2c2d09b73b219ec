//! `[[flows]]`: a flow as written in the config. [`crate::Flows::load`] checks it down to
//! each template and output schema and compiles it.

use std::time::Duration;

use raccordo_core::RetryPolicy;
use raccordo_core::crm::{ObjectKind, System};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One flow: what starts it and the steps it runs, in order.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Letters, digits, `_` and `-`; names the flow in URLs, metrics and runs.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub trigger: TriggerConfig,
    /// A JSON Schema the trigger's input must meet; a run is refused (and nothing starts)
    /// when it does not.
    #[serde(default)]
    pub input_schema: Option<Value>,
    pub steps: Vec<StepConfig>,
}

/// What starts a run. Every flow can also be started by the API (`POST
/// /api/v1/flows/{name}/runs`, `POST /api/v1/jobs`); `api` says that is the only way.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerConfig {
    /// Each event accepted on this `[[sources]]` entry; the trigger input is its payload.
    Webhook {
        source: String,
    },
    /// A cron expression (five fields, or six with seconds), in UTC; the input is `payload`.
    Schedule {
        cron: String,
        #[serde(default)]
        payload: Value,
    },
    /// Each change the sync's intake receives for this CRM and kind of record; the input is
    /// `{ "system", "object", "id" }`.
    CrmChange {
        system: System,
        object: ObjectKind,
    },
    Api,
}

/// One step: its name, its type and the type's own settings (`prompt`, `url`, …), with a
/// retry policy and a timeout every step has.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StepConfig {
    /// Unique in the flow; later steps read this step's output as `steps.<name>`.
    pub name: String,
    /// `map`, `filter`, `branch`, `ai`, `crm_update`, `crm_search`, `http` or `notify`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub retry: RetryConfig,
    /// How long one attempt may take (at most 50 s: a claimed step is leased for 60 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// The type's settings.
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

/// Attempts of a step that fails for a reason that may pass (timeouts, 429, 5xx), with
/// exponential backoff between them.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Wait before the second attempt; it doubles for each next one.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

fn default_attempts() -> u32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_secs(2)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl RetryConfig {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            first_delay_ms: self.backoff.as_millis() as i64,
            factor: 2.0,
            max_delay_ms: self.max_backoff.as_millis() as i64,
            max_attempts: self.attempts.max(1),
            jitter: 0.2,
        }
    }
}

/// The default timeout of one attempt; the AI step gets longer (models are slow).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(50);

/// A mistake in a flow's config: which flow, which step, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub flow: String,
    pub step: Option<String>,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "flow `{}`", self.flow)?;
        if let Some(step) = &self.step {
            write!(f, ", step `{step}`")?;
        }
        if !self.field.is_empty() {
            write!(f, ", `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}
