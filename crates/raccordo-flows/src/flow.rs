//! A flow as it runs: its config checked and compiled (templates parsed, schemas compiled,
//! branch targets resolved), and the set of configured flows.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use raccordo_core::RetryPolicy;
use serde_json::Value;

use crate::config::{ConfigProblem, DEFAULT_TIMEOUT, FlowConfig, MAX_TIMEOUT, TriggerConfig};
use crate::steps::{self, BuildContext, Next, Step};

/// One step, ready to run.
pub struct FlowStep {
    pub name: String,
    pub kind: &'static str,
    pub step: Arc<dyn Step>,
    pub retry: RetryPolicy,
    pub timeout: Duration,
}

pub struct Flow {
    pub name: String,
    pub description: String,
    pub trigger: TriggerConfig,
    pub steps: Vec<FlowStep>,
    input_schema: Option<Arc<jsonschema::Validator>>,
    schedule: Option<croner::Cron>,
}

impl Flow {
    /// Checks a trigger input against the flow's `input_schema`: the first failing field's
    /// JSON pointer and why.
    pub fn check_input(&self, input: &Value) -> Result<(), (String, String)> {
        match &self.input_schema {
            None => Ok(()),
            Some(v) => match v.iter_errors(input).next() {
                None => Ok(()),
                // Masked: the rule that failed, never the value sent.
                Some(e) => Err((e.instance_path().to_string(), e.masked().to_string())),
            },
        }
    }

    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The step after `index` given its output, or `None` when the run ends there.
    pub fn next_after(&self, index: usize, output: &Value) -> Option<usize> {
        let next = match self.steps.get(index)?.step.next(output) {
            Next::Continue => index + 1,
            Next::Goto(i) => i,
            Next::End => return None,
        };
        (next < self.steps.len()).then_some(next)
    }

    /// For a scheduled flow, the first firing strictly after `after_ms`.
    pub fn next_firing_ms(&self, after_ms: i64) -> Option<i64> {
        let cron = self.schedule.as_ref()?;
        let after = chrono::DateTime::from_timestamp_millis(after_ms)?;
        cron.find_next_occurrence(&after, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }
}

/// The configured flows by name.
#[derive(Default, Clone)]
pub struct Flows {
    by_name: BTreeMap<String, Arc<Flow>>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Flows {
    /// Checks and compiles `configs`; every problem is reported, each naming the flow, the
    /// step and the field. `sources` are the configured webhook sources' names.
    /// `outbound` is the policy the URLs of `http` and `notify` steps must pass.
    pub fn load(
        configs: &[FlowConfig],
        sources: &[String],
        outbound: &raccordo_outbound::Outbound,
    ) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut by_name = BTreeMap::new();
        for config in configs {
            match compile(config, sources, outbound) {
                Ok(flow) => {
                    if by_name.insert(flow.name.clone(), Arc::new(flow)).is_some() {
                        problems.push(problem(config, None, "name", "another flow has this name"));
                    }
                }
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() {
            Ok(Self { by_name })
        } else {
            Err(problems)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Flow>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Flow>> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The flows a webhook source starts.
    pub fn for_source<'a>(&'a self, source: &'a str) -> impl Iterator<Item = &'a Arc<Flow>> + 'a {
        self.iter().filter(
            move |f| matches!(&f.trigger, TriggerConfig::Webhook { source: s } if s == source),
        )
    }
}

fn problem(
    config: &FlowConfig,
    step: Option<&str>,
    field: &str,
    message: impl Into<String>,
) -> ConfigProblem {
    ConfigProblem {
        flow: config.name.clone(),
        step: step.map(str::to_string),
        field: field.into(),
        message: message.into(),
    }
}

fn compile(
    config: &FlowConfig,
    sources: &[String],
    outbound: &raccordo_outbound::Outbound,
) -> Result<Flow, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    if !valid_name(&config.name) {
        problems.push(problem(
            config,
            None,
            "name",
            "use 1–64 letters, digits, `_` or `-`",
        ));
    }
    let mut schedule = None;
    match &config.trigger {
        TriggerConfig::Webhook { source } if !sources.contains(source) => problems.push(problem(
            config,
            None,
            "trigger.source",
            format!("no `[[sources]]` entry is named `{source}`"),
        )),
        TriggerConfig::Schedule { cron, .. } => match croner::Cron::from_str(cron) {
            Ok(c) => schedule = Some(c),
            Err(e) => problems.push(problem(
                config,
                None,
                "trigger.cron",
                format!("not a cron expression: {e}"),
            )),
        },
        _ => {}
    }
    let input_schema = match &config.input_schema {
        None => None,
        Some(s) => match jsonschema::validator_for(s) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                problems.push(problem(
                    config,
                    None,
                    "input_schema",
                    format!("not a valid JSON Schema: {e}"),
                ));
                None
            }
        },
    };
    if config.steps.is_empty() {
        problems.push(problem(
            config,
            None,
            "steps",
            "a flow needs at least one step",
        ));
    }
    let names: Vec<String> = config.steps.iter().map(|s| s.name.clone()).collect();
    let mut seen = HashSet::new();
    let mut steps = Vec::new();
    for (index, s) in config.steps.iter().enumerate() {
        let at = Some(s.name.as_str());
        if !valid_name(&s.name) {
            problems.push(problem(
                config,
                at,
                "name",
                "use 1–64 letters, digits, `_` or `-`",
            ));
        }
        if !seen.insert(s.name.as_str()) {
            problems.push(problem(
                config,
                at,
                "name",
                "another step of this flow has this name",
            ));
        }
        let timeout = s.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            problems.push(problem(
                config,
                at,
                "timeout",
                "between 1 ms and 50 s (a claimed step is leased for 60 s)",
            ));
        }
        if !(1..=20).contains(&s.retry.attempts) {
            problems.push(problem(config, at, "retry.attempts", "between 1 and 20"));
        }
        match steps::build(
            s,
            &BuildContext {
                step_names: &names,
                index,
                outbound,
            },
        ) {
            Ok(step) => steps.push(FlowStep {
                name: s.name.clone(),
                kind: step.kind(),
                step,
                retry: s.retry.policy(),
                timeout,
            }),
            Err((field, message)) => problems.push(problem(config, at, &field, message)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Flow {
        name: config.name.clone(),
        description: config.description.clone(),
        trigger: config.trigger.clone(),
        steps,
        input_schema,
        schedule,
    })
}
