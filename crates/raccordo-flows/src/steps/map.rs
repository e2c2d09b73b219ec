//! `map`: builds a new object from templates over the run's context (field mapping).

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::{
    BuildContext, BuildError, Step, StepEnv, StepError, StepOutput, eval_field, template_value,
};
use crate::template::TemplateValue;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSettings {
    /// The output's fields: templates, literals, nested tables and arrays.
    fields: Value,
}

pub struct MapStep {
    fields: TemplateValue,
}

impl MapStep {
    pub fn build(s: MapSettings, cx: &BuildContext<'_>) -> Result<Self, BuildError> {
        if !s.fields.is_object() {
            return Err(("fields".into(), "must be a table of fields".into()));
        }
        Ok(Self {
            fields: template_value("fields", &s.fields, &cx.scope(false))?,
        })
    }
}

#[async_trait]
impl Step for MapStep {
    fn kind(&self) -> &'static str {
        "map"
    }
    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError> {
        eval_field("fields", &self.fields, context)
    }
    async fn run(&self, input: &Value, _env: &StepEnv<'_>) -> Result<StepOutput, StepError> {
        Ok(StepOutput::of(input.clone()))
    }
}
