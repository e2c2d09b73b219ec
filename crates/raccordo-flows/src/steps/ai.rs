//! `ai`: asks the configured model (OpenAI-compatible, or the offline classifier) with a
//! rendered prompt; with a `schema`, the answer is JSON checked against it (one repair, then
//! a failure naming the field).

use async_trait::async_trait;
use raccordo_ai::{AiError, Prompt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    BuildContext, BuildError, Step, StepEnv, StepError, StepOutput, read_input, render_field,
    template,
};
use crate::template::Template;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSettings {
    #[serde(default)]
    system: Option<String>,
    /// The user message; it may use `{{ input }}`.
    prompt: String,
    /// The text under analysis (the offline classifier reads only this), e.g.
    /// `{{ trigger.message }}`.
    #[serde(default)]
    input: Option<String>,
    /// A JSON Schema the answer must meet; without one the answer is text.
    #[serde(default)]
    schema: Option<Value>,
}

pub struct AiStep {
    system: Option<Template>,
    prompt: Template,
    input: Option<Template>,
    schema: Option<Value>,
}

/// What the step sends, as recorded.
#[derive(Serialize, Deserialize)]
struct AiInput {
    #[serde(default)]
    system: Option<String>,
    prompt: String,
    #[serde(default)]
    input: Option<String>,
}

impl AiStep {
    pub fn build(s: AiSettings, cx: &BuildContext<'_>) -> Result<Self, BuildError> {
        if let Some(schema) = &s.schema {
            jsonschema::validator_for(schema).map_err(|e| {
                (
                    "schema".to_string(),
                    format!("not a valid JSON Schema: {e}"),
                )
            })?;
        }
        let has_input = s.input.is_some();
        Ok(Self {
            system: s
                .system
                .as_deref()
                .map(|t| template("system", t, &cx.scope(has_input)))
                .transpose()?,
            prompt: template("prompt", &s.prompt, &cx.scope(has_input))?,
            input: s
                .input
                .as_deref()
                .map(|t| template("input", t, &cx.scope(false)))
                .transpose()?,
            schema: s.schema,
        })
    }
}

#[async_trait]
impl Step for AiStep {
    fn kind(&self) -> &'static str {
        "ai"
    }

    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError> {
        let input = self
            .input
            .as_ref()
            .map(|t| render_field("input", t, context))
            .transpose()?;
        // The prompt sees `input` beside the run's context.
        let scope = match &input {
            Some(text) => super::with_var(context, "input", minijinja::Value::from(text.as_str())),
            None => context.clone(),
        };
        Ok(json!(AiInput {
            system: self
                .system
                .as_ref()
                .map(|t| render_field("system", t, &scope))
                .transpose()?,
            prompt: render_field("prompt", &self.prompt, &scope)?,
            input,
        }))
    }

    async fn run(&self, input: &Value, env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        let input: AiInput = read_input(input)?;
        let Some(client) = &env.services.ai else {
            return Err(StepError::permanent(
                "no AI provider is configured (`[ai]` in the config)",
            ));
        };
        let answer = client
            .complete(&Prompt {
                system: input.system,
                user: input.prompt,
                subject: input.input,
                schema: self.schema.clone(),
                flow: env.flow.to_string(),
            })
            .await
            .map_err(|e| match e {
                AiError::InvalidOutput { pointer, reason } => StepError::Permanent {
                    message: format!("the model's answer does not match the schema: {reason}"),
                    field: Some(if pointer.is_empty() {
                        "/".into()
                    } else {
                        pointer
                    }),
                },
                AiError::Unavailable { retry_after_ms, .. } => StepError::Retryable {
                    message: e.to_string(),
                    retry_after_ms: retry_after_ms.map(|ms| ms as i64),
                },
                AiError::Refused { .. } | AiError::BadSchema(_) => {
                    StepError::permanent(e.to_string())
                }
            })?;
        Ok(StepOutput {
            output: answer.content,
            tokens: Some(answer.prompt_tokens + answer.completion_tokens),
            cost: Some(answer.cost),
        })
    }
}
