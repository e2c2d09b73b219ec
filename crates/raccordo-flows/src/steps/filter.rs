//! `filter`: ends the run (as succeeded) unless a condition holds.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{BuildContext, BuildError, Next, Step, StepEnv, StepError, StepOutput};
use crate::template::{Template, condition};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSettings {
    /// An expression, e.g. `trigger.email is defined and trigger.email != ""`.
    condition: String,
}

pub struct FilterStep {
    condition: Template,
}

impl FilterStep {
    pub fn build(s: FilterSettings, cx: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(Self {
            condition: condition(&s.condition, &cx.scope(false))
                .map_err(|e| ("condition".into(), e))?,
        })
    }
}

#[async_trait]
impl Step for FilterStep {
    fn kind(&self) -> &'static str {
        "filter"
    }
    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError> {
        let passed = self
            .condition
            .truthy(context)
            .map_err(|e| StepError::at("condition", e))?;
        Ok(json!({ "passed": passed }))
    }
    async fn run(&self, input: &Value, _env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        let passed = input["passed"]
            .as_bool()
            .ok_or_else(|| StepError::at("passed", "must be true or false"))?;
        Ok(StepOutput::of(json!({ "passed": passed })))
    }
    fn next(&self, output: &Value) -> Next {
        if output["passed"].as_bool() == Some(true) {
            Next::Continue
        } else {
            Next::End
        }
    }
}
