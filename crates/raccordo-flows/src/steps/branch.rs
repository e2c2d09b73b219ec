//! `branch`: jumps to a later step when a condition holds (`then`), else to `else` or on to
//! the next step. Jumps go forward only, so no run can loop.

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{BuildContext, BuildError, Next, Step, StepEnv, StepError, StepOutput};
use crate::template::{Template, condition};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSettings {
    condition: String,
    /// The step to go to when the condition holds.
    then: String,
    /// The step to go to when it does not (default: the next step).
    #[serde(default, rename = "else")]
    otherwise: Option<String>,
}

pub struct BranchStep {
    condition: Template,
    then: usize,
    otherwise: Option<usize>,
}

impl BranchStep {
    pub fn build(s: BranchSettings, cx: &BuildContext<'_>) -> Result<Self, BuildError> {
        Ok(Self {
            condition: condition(&s.condition, &cx.scope(false))
                .map_err(|e| ("condition".into(), e))?,
            then: cx.later_step(&s.then).map_err(|e| ("then".into(), e))?,
            otherwise: s
                .otherwise
                .map(|name| cx.later_step(&name).map_err(|e| ("else".to_string(), e)))
                .transpose()?,
        })
    }
}

#[async_trait]
impl Step for BranchStep {
    fn kind(&self) -> &'static str {
        "branch"
    }
    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError> {
        let holds = self
            .condition
            .truthy(context)
            .map_err(|e| StepError::at("condition", e))?;
        Ok(json!({ "condition": holds }))
    }
    async fn run(&self, input: &Value, _env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        let holds = input["condition"]
            .as_bool()
            .ok_or_else(|| StepError::at("condition", "must be true or false"))?;
        Ok(StepOutput::of(json!({ "condition": holds })))
    }
    fn jumps(&self) -> Vec<usize> {
        std::iter::once(self.then).chain(self.otherwise).collect()
    }
    fn next(&self, output: &Value) -> Next {
        match (output["condition"].as_bool() == Some(true), self.otherwise) {
            (true, _) => Next::Goto(self.then),
            (false, Some(i)) => Next::Goto(i),
            (false, None) => Next::Continue,
        }
    }
}
