//! The step types. A step type is a settings struct (read from the step's config with unknown
//! keys refused) and a [`Step`] impl; [`build`] is the one registry that maps a `type` to it.
//!
//! A step works in two halves, so that a run can be recorded and replayed: [`Step::input`]
//! renders the step's templates over the run's context into a JSON input (recorded, and what
//! a replay may edit), and [`Step::run`] acts on that input alone.

use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::config::StepConfig;
use crate::services::Services;
use crate::template::Scope;

mod ai;
mod branch;
mod crm;
mod filter;
mod http;
mod map;
mod notify;

pub use crate::error::StepError;
pub use http::HttpAuth;

/// Where a run goes after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The step after this one (or the end of the flow).
    Continue,
    /// A later step, by index (a `branch`).
    Goto(usize),
    /// Stop here; the run succeeded (a `filter` that did not pass).
    End,
}

/// What a step produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepOutput {
    pub output: Value,
    pub tokens: Option<u64>,
    pub cost: Option<f64>,
}

impl StepOutput {
    pub fn of(output: Value) -> Self {
        Self {
            output,
            ..Self::default()
        }
    }
}

/// What one attempt may use: the hub's services and who is asking (for idempotency keys
/// and accounting).
pub struct StepEnv<'a> {
    pub services: &'a Services,
    pub flow: &'a str,
    pub run_id: &'a str,
    pub step: &'a str,
}

impl StepEnv<'_> {
    /// The same on every attempt of this step of this run: sent as `Idempotency-Key` so
    /// that a remote that honours it applies a retried call once.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.run_id, self.step)
    }
}

#[async_trait]
pub trait Step: Send + Sync {
    /// The step's type as written in the config.
    fn kind(&self) -> &'static str;

    /// The input, from the run's context (`trigger`, `steps`, `run`).
    fn input(&self, context: &minijinja::Value) -> Result<Value, StepError>;

    /// One attempt on `input`.
    async fn run(&self, input: &Value, env: &StepEnv<'_>) -> Result<StepOutput, StepError>;

    /// Where the run goes after this step produced `output` (read again from the record
    /// when a run resumes, so it is a pure function of the output).
    fn next(&self, _output: &Value) -> Next {
        Next::Continue
    }

    /// The later steps it may jump to (a `branch`'s `then` and `else`), for drawing the flow.
    fn jumps(&self) -> Vec<usize> {
        Vec::new()
    }
}

/// What building a step needs: the names of the flow's steps (a `branch` names later ones)
/// and this step's place among them.
pub struct BuildContext<'a> {
    pub step_names: &'a [String],
    pub index: usize,
    /// Where steps may send requests: configured URLs are checked at build time.
    pub outbound: &'a raccordo_outbound::Outbound,
}

impl BuildContext<'_> {
    pub fn scope(&self, has_input: bool) -> Scope {
        Scope {
            earlier_steps: self.step_names[..self.index].to_vec(),
            has_input,
            has_record: false,
        }
    }

    /// The index of a later step named `name`.
    pub fn later_step(&self, name: &str) -> Result<usize, String> {
        match self.step_names.iter().position(|s| s == name) {
            Some(i) if i > self.index => Ok(i),
            Some(_) => Err(format!(
                "`{name}` does not come after this step (a branch only jumps forward, so that no run can loop)"
            )),
            None => Err(format!("there is no step named `{name}`")),
        }
    }
}

/// A settings error: the field at fault (`""` for the step as a whole) and why.
pub type BuildError = (String, String);

/// The step types, by the name written in `type`.
pub const KINDS: [&str; 8] = [
    "map",
    "filter",
    "branch",
    "ai",
    "crm_update",
    "crm_search",
    "http",
    "notify",
];

/// The registry: a step's config to its implementation.
pub fn build(config: &StepConfig, cx: &BuildContext<'_>) -> Result<Arc<dyn Step>, BuildError> {
    let p = &config.params;
    Ok(match config.kind.as_str() {
        "map" => Arc::new(map::MapStep::build(settings(p)?, cx)?),
        "filter" => Arc::new(filter::FilterStep::build(settings(p)?, cx)?),
        "branch" => Arc::new(branch::BranchStep::build(settings(p)?, cx)?),
        "ai" => Arc::new(ai::AiStep::build(settings(p)?, cx)?),
        "crm_update" => Arc::new(crm::CrmUpdateStep::build(settings(p)?, cx)?),
        "crm_search" => Arc::new(crm::CrmSearchStep::build(settings(p)?, cx)?),
        "http" => Arc::new(http::HttpStep::build(settings(p)?, cx)?),
        "notify" => Arc::new(notify::NotifyStep::build(settings(p)?, cx)?),
        other => {
            return Err((
                "type".into(),
                format!("unknown step type `{other}`; one of {}", KINDS.join(", ")),
            ));
        }
    })
}

/// The type's settings from the step's remaining keys; serde names an unknown or missing
/// key in its message.
fn settings<T: DeserializeOwned>(params: &Map<String, Value>) -> Result<T, BuildError> {
    serde_json::from_value(Value::Object(params.clone())).map_err(|e| {
        let message = e.to_string();
        let field = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field"))
            .unwrap_or_default()
            .to_string();
        (field, message)
    })
}

/// A template setting, parsed, with its field named on failure.
fn template(
    field: &str,
    source: &str,
    scope: &Scope,
) -> Result<crate::template::Template, BuildError> {
    crate::template::Template::parse(source, scope).map_err(|e| (field.to_string(), e))
}

/// A template-valued setting (a body, properties), parsed, with the failing path named.
fn template_value(
    field: &str,
    value: &Value,
    scope: &Scope,
) -> Result<crate::template::TemplateValue, BuildError> {
    crate::template::TemplateValue::parse(value, scope).map_err(|(p, e)| (format!("{field}{p}"), e))
}

/// Renders a template at run time; a failure names the field.
fn render_field(
    field: &str,
    template: &crate::template::Template,
    context: &minijinja::Value,
) -> Result<String, StepError> {
    template
        .render(context)
        .map_err(|e| StepError::at(field, e))
}

fn eval_field(
    field: &str,
    value: &crate::template::TemplateValue,
    context: &minijinja::Value,
) -> Result<Value, StepError> {
    value
        .eval(context)
        .map_err(|(p, e)| StepError::at(format!("{field}{p}"), e))
}

/// The run's context with one more variable (`input` for a prompt, `record` per record).
fn with_var(context: &minijinja::Value, name: &str, value: minijinja::Value) -> minijinja::Value {
    let mut scope: std::collections::BTreeMap<String, minijinja::Value> = context
        .try_iter()
        .map(|keys| {
            keys.filter_map(|k| {
                let key = k.as_str()?.to_string();
                let v = context.get_item(&k).ok()?;
                Some((key, v))
            })
            .collect()
        })
        .unwrap_or_default();
    scope.insert(name.to_string(), value);
    minijinja::Value::from(scope)
}

/// Reads a step's recorded input back; a replay's edited input that lacks a field fails here.
fn read_input<T: DeserializeOwned>(input: &Value) -> Result<T, StepError> {
    serde_json::from_value(input.clone()).map_err(|e| StepError::at("input", e.to_string()))
}
