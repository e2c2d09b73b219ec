//! How a step fails.

/// Why a step failed, and whether another attempt can help.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    /// Timeouts, connection errors, 429, 5xx: the step is tried again on its retry policy.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after_ms: Option<i64>,
    },
    /// Bad input, a refused request, a model answer that fails its schema: the run fails.
    #[error("{}{message}", field.as_deref().map(|f| format!("`{f}`: ")).unwrap_or_default())]
    Permanent {
        message: String,
        /// The input field (or output pointer) at fault, when one is.
        field: Option<String>,
    },
}

impl StepError {
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError::Permanent {
            message: message.into(),
            field: None,
        }
    }
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        StepError::Permanent {
            message: message.into(),
            field: Some(field.into()),
        }
    }
    pub fn retryable(message: impl Into<String>) -> Self {
        StepError::Retryable {
            message: message.into(),
            retry_after_ms: None,
        }
    }
}
