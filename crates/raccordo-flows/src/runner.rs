//! Runs flows on the durable work queue (DESIGN §3 "Flows"). A run is a row with its trigger
//! input; each step is a queue item keyed by the run, so a run's steps go one at a time, in
//! order, retry on their own policy and survive a restart.
//!
//! A step's outcome is recorded before the run moves on, and a step found recorded as
//! succeeded is never run again: after `kill -9`, a run resumes at the step it was in.
//! (A step cut off mid-call is run again; the `http` step sends an `Idempotency-Key` and the
//! `notify` step a stable delivery id, so that a remote can tell the second call.)

use std::sync::Arc;

use raccordo_core::{
    Clock, Completion, KeyValueStore, NewRun, NewWorkItem, RetryPolicy, Run, RunStatus, RunStore,
    StepRecord, StepStatus, StoreError, WorkItem, WorkQueue,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::flow::{Flow, Flows};
use crate::services::Services;
use crate::steps::{StepEnv, StepError, StepOutput};

/// The work-queue name of flow steps.
pub const QUEUE: &str = "flows";

/// One step of one run, as a queue item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTask {
    pub run: String,
    pub flow: String,
    pub step: usize,
    /// A replay's input for this step, used instead of rendering it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

impl StepTask {
    fn item(&self) -> NewWorkItem {
        NewWorkItem {
            queue: QUEUE.into(),
            group_key: self.run.clone(),
            // Per step, so that enqueuing the same step twice (a crash between enqueuing the
            // next step and completing this one) folds into one item.
            operation: format!("step:{}", self.step),
            payload: serde_json::to_value(self).unwrap_or_default(),
            coalesce: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no flow is named `{0}`")]
    UnknownFlow(String),
    #[error("the input does not match the flow's input schema at `{pointer}`: {message}")]
    InvalidInput { pointer: String, message: String },
    #[error("no run is named `{0}`")]
    UnknownRun(String),
    #[error("flow `{flow}` has no step named `{step}`")]
    UnknownStep { flow: String, step: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new run id: `run_<ULID>`.
pub fn new_run_id() -> String {
    format!("run_{}", ulid::Ulid::new())
}

/// A run id derived from what started it (an event id, a schedule's firing), so that
/// starting the same thing twice finds the run that exists — also after an upgrade, so the
/// hash is a fixed one (SHA-256), not the standard library's.
pub fn derived_run_id(flow: &str, cause: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(flow.as_bytes())
        .chain_update([0])
        .chain_update(cause.as_bytes())
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("run_{hex}")
}

pub struct FlowRunner {
    flows: Flows,
    services: Arc<Services>,
    runs: Arc<dyn RunStore>,
    queue: Arc<dyn WorkQueue>,
    kv: Arc<dyn KeyValueStore>,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
}

impl FlowRunner {
    pub fn new(
        flows: Flows,
        services: Arc<Services>,
        stores: &raccordo_core::Stores,
        clock: Arc<dyn Clock>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            flows,
            services,
            runs: stores.runs.clone(),
            queue: stores.queue.clone(),
            kv: stores.kv.clone(),
            clock,
            wake,
        }
    }

    pub fn kv(&self) -> &Arc<dyn KeyValueStore> {
        &self.kv
    }

    pub fn flows(&self) -> &Flows {
        &self.flows
    }

    pub fn runs(&self) -> &Arc<dyn RunStore> {
        &self.runs
    }

    /// Starts `flow` on `input`; with `run_id`, a run that exists is left as it is (and
    /// `false` returned). Nothing is stored when the input fails the flow's schema.
    pub async fn start(
        &self,
        flow: &str,
        input: Value,
        run_id: Option<String>,
    ) -> Result<(String, bool), StartError> {
        let f = self
            .flows
            .get(flow)
            .ok_or_else(|| StartError::UnknownFlow(flow.to_string()))?;
        f.check_input(&input)
            .map_err(|(pointer, message)| StartError::InvalidInput { pointer, message })?;
        let id = run_id.unwrap_or_else(new_run_id);
        let created = self
            .runs
            .create_run(NewRun {
                id: id.clone(),
                kind: f.name.clone(),
                trigger: input,
                started_at_ms: self.clock.now_ms(),
            })
            .await?;
        // Enqueued even when the run existed: a crash between the two writes left a run
        // with no step to do, and a step already done is skipped when it comes round.
        self.enqueue(StepTask {
            run: id.clone(),
            flow: f.name.clone(),
            step: 0,
            input: None,
        })
        .await?;
        if created {
            metrics::counter!("raccordo_flow_runs_started_total", "flow" => f.name.clone())
                .increment(1);
        }
        Ok((id, created))
    }

    /// Starts the flows whose trigger is a change of this kind of record in `system`, with
    /// `{ "system", "object", "id" }` as input. Changes of one record within the same second
    /// start one run (CRMs send bursts of notifications for one edit); a change of a record
    /// a flow wrote in the last minute starts none (it is that write's echo).
    pub async fn crm_changed(
        &self,
        system: raccordo_core::crm::System,
        object: raccordo_core::crm::ObjectKind,
        id: &str,
        now_ms: i64,
    ) -> Result<usize, StartError> {
        let flows: Vec<String> = self
            .flows
            .iter()
            .filter(|f| {
                matches!(&f.trigger, crate::TriggerConfig::CrmChange { system: s, object: o } if *s == system && *o == object)
            })
            .map(|f| f.name.clone())
            .collect();
        if flows.is_empty() {
            return Ok(0);
        }
        let echo = crate::services::echo_key(system, object, id);
        if self.kv.get(&echo, now_ms).await?.is_some() {
            metrics::counter!("raccordo_flow_echoes_ignored_total").increment(1);
            return Ok(0);
        }
        for flow in &flows {
            let cause = format!(
                "{}:{}:{id}:{}",
                system.as_str(),
                object.as_str(),
                now_ms / 1000
            );
            let input = json!({ "system": system, "object": object, "id": id });
            match self
                .start(flow, input, Some(derived_run_id(flow, &cause)))
                .await
            {
                Ok(_) | Err(StartError::InvalidInput { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(flows.len())
    }

    /// Starts a new run of `run_id`'s flow at step `from`, with the steps before it as they
    /// were recorded and `from`'s recorded input, or `input` when given (an edited input).
    pub async fn replay(
        &self,
        run_id: &str,
        from: &str,
        input: Option<Value>,
    ) -> Result<String, StartError> {
        let run = self
            .runs
            .run(run_id)
            .await?
            .ok_or_else(|| StartError::UnknownRun(run_id.to_string()))?;
        let flow = self
            .flows
            .get(&run.summary.kind)
            .ok_or_else(|| StartError::UnknownFlow(run.summary.kind.clone()))?;
        let index = flow
            .step_index(from)
            .ok_or_else(|| StartError::UnknownStep {
                flow: flow.name.clone(),
                step: from.to_string(),
            })?;
        let input = input.or_else(|| {
            run.steps
                .iter()
                .find(|s| s.index as usize == index && !s.input.is_null())
                .map(|s| s.input.clone())
        });
        let id = new_run_id();
        let now = self.clock.now_ms();
        self.runs
            .create_run(NewRun {
                id: id.clone(),
                kind: flow.name.clone(),
                trigger: run.trigger.clone(),
                started_at_ms: now,
            })
            .await?;
        for step in run.steps.iter().filter(|s| (s.index as usize) < index) {
            self.runs.record_step(&id, step.clone()).await?;
        }
        self.enqueue(StepTask {
            run: id.clone(),
            flow: flow.name.clone(),
            step: index,
            input,
        })
        .await?;
        metrics::counter!("raccordo_flow_replays_total", "flow" => flow.name.clone()).increment(1);
        Ok(id)
    }

    async fn enqueue(&self, task: StepTask) -> Result<(), StoreError> {
        self.queue.enqueue(task.item(), self.clock.now_ms()).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// The retry policy of the step an item is for.
    pub fn retry_policy(&self, item: &WorkItem) -> RetryPolicy {
        serde_json::from_value::<StepTask>(item.payload.clone())
            .ok()
            .and_then(|t| Some(self.flows.get(&t.flow)?.steps.get(t.step)?.retry))
            .unwrap_or_default()
    }

    /// One attempt at one step. A step that fails for good ends its run as failed and
    /// completes its item (the run's record is where the failure is read and replayed).
    pub async fn process(&self, item: &WorkItem) -> Completion {
        match self.attempt(item).await {
            Ok(c) => c,
            // The run's store failed: the item is tried again.
            Err(e) => Completion::Retryable {
                error: format!("run store: {e}"),
                retry_after_ms: e.retry_after_ms().map(|ms| ms as i64),
            },
        }
    }

    async fn attempt(&self, item: &WorkItem) -> Result<Completion, StoreError> {
        let task: StepTask = match serde_json::from_value(item.payload.clone()) {
            Ok(t) => t,
            Err(e) => {
                return Ok(Completion::Permanent {
                    error: format!("not a flow step: {e}"),
                });
            }
        };
        let Some(run) = self.runs.run(&task.run).await? else {
            return Ok(Completion::Permanent {
                error: format!("run `{}` does not exist", task.run),
            });
        };
        if run.summary.status != RunStatus::Running {
            // The run ended before a crash let this item be completed; make sure its job's
            // callback was queued (a repeat has the same `webhook-id`).
            crate::jobs::on_finished(
                self.kv.as_ref(),
                self.queue.as_ref(),
                &run.summary.id,
                self.clock.now_ms(),
            )
            .await?;
            return Ok(Completion::Done);
        }
        let now = self.clock.now_ms();
        let Some(flow) = self.flows.get(&task.flow).cloned() else {
            self.fail(
                &run,
                task.step,
                "?",
                Value::Null,
                item.attempts,
                now,
                "the flow is no longer configured".into(),
            )
            .await?;
            return Ok(Completion::Done);
        };
        let Some(step) = flow.steps.get(task.step) else {
            self.fail(
                &run,
                task.step,
                "?",
                Value::Null,
                item.attempts,
                now,
                "the flow no longer has this step".into(),
            )
            .await?;
            return Ok(Completion::Done);
        };
        if let Some(done) = run
            .steps
            .iter()
            .find(|s| s.index as usize == task.step && s.status == StepStatus::Succeeded)
        {
            // Recorded before a crash: move on without doing it again.
            let output = done.output.clone().unwrap_or_default();
            self.advance(&run, &flow, task.step, &output).await?;
            return Ok(Completion::Done);
        }
        let started_at_ms = run
            .steps
            .iter()
            .find(|s| s.index as usize == task.step)
            .map_or(now, |s| s.started_at_ms);
        let input = match task.input.clone() {
            Some(input) => input,
            None => match step.step.input(&context(&run, &flow)) {
                Ok(input) => input,
                Err(e) => {
                    self.fail(
                        &run,
                        task.step,
                        &step.name,
                        Value::Null,
                        item.attempts,
                        started_at_ms,
                        e.to_string(),
                    )
                    .await?;
                    return Ok(Completion::Done);
                }
            },
        };
        let mut record = StepRecord {
            index: task.step as u32,
            name: step.name.clone(),
            status: StepStatus::Running,
            input: input.clone(),
            output: None,
            error: None,
            attempts: item.attempts,
            started_at_ms,
            finished_at_ms: None,
            tokens: None,
            cost: None,
        };
        self.runs
            .record_step(&run.summary.id, record.clone())
            .await?;

        let env = StepEnv {
            services: &self.services,
            flow: &flow.name,
            run_id: &run.summary.id,
            step: &step.name,
        };
        let attempt_started = std::time::Instant::now();
        let attempt =
            raccordo_core::calls::attempt_scope(item.attempts, step.step.run(&input, &env));
        let result = match tokio::time::timeout(step.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(StepError::retryable(format!(
                "timed out after {} ms",
                step.timeout.as_millis()
            ))),
        };
        let status = match &result {
            Ok(_) => "succeeded",
            Err(StepError::Retryable { .. }) => "retryable",
            Err(StepError::Permanent { .. }) => "failed",
        };
        metrics::histogram!("raccordo_flow_step_seconds", "flow" => flow.name.clone(), "step" => step.name.clone(), "status" => status)
            .record(attempt_started.elapsed().as_secs_f64());
        let finished = self.clock.now_ms();
        match result {
            Ok(StepOutput {
                output,
                tokens,
                cost,
            }) => {
                record.status = StepStatus::Succeeded;
                record.output = Some(output.clone());
                record.tokens = tokens;
                record.cost = cost;
                record.finished_at_ms = Some(finished);
                self.runs.record_step(&run.summary.id, record).await?;
                self.advance(&run, &flow, task.step, &output).await?;
                Ok(Completion::Done)
            }
            Err(StepError::Retryable {
                message,
                retry_after_ms,
            }) if item.attempts < step.retry.max_attempts => {
                record.error = Some(message.clone());
                self.runs.record_step(&run.summary.id, record).await?;
                Ok(Completion::Retryable {
                    error: message,
                    retry_after_ms,
                })
            }
            Err(e) => {
                let message = match &e {
                    StepError::Retryable { message, .. } => {
                        format!("{message} (after {} attempts)", item.attempts)
                    }
                    StepError::Permanent { .. } => e.to_string(),
                };
                record.status = StepStatus::Failed;
                record.error = Some(message);
                record.finished_at_ms = Some(finished);
                self.runs.record_step(&run.summary.id, record).await?;
                self.finish(&run, &flow.name, RunStatus::Failed).await?;
                Ok(Completion::Done)
            }
        }
    }

    /// After step `index` produced `output`: the next step goes on the queue, or the run
    /// ends. Steps jumped over are recorded as skipped.
    async fn advance(
        &self,
        run: &Run,
        flow: &Flow,
        index: usize,
        output: &Value,
    ) -> Result<(), StoreError> {
        let next = flow.next_after(index, output);
        let skipped_until = next.unwrap_or(flow.steps.len());
        let now = self.clock.now_ms();
        for i in index + 1..skipped_until {
            self.runs
                .record_step(
                    &run.summary.id,
                    StepRecord {
                        index: i as u32,
                        name: flow.steps[i].name.clone(),
                        status: StepStatus::Skipped,
                        input: Value::Null,
                        output: None,
                        error: None,
                        attempts: 0,
                        started_at_ms: now,
                        finished_at_ms: Some(now),
                        tokens: None,
                        cost: None,
                    },
                )
                .await?;
        }
        match next {
            Some(step) => {
                self.enqueue(StepTask {
                    run: run.summary.id.clone(),
                    flow: flow.name.clone(),
                    step,
                    input: None,
                })
                .await
            }
            None => self.finish(run, &flow.name, RunStatus::Succeeded).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fail(
        &self,
        run: &Run,
        index: usize,
        name: &str,
        input: Value,
        attempts: u32,
        started_at_ms: i64,
        error: String,
    ) -> Result<(), StoreError> {
        self.runs
            .record_step(
                &run.summary.id,
                StepRecord {
                    index: index as u32,
                    name: name.to_string(),
                    status: StepStatus::Failed,
                    input,
                    output: None,
                    error: Some(error),
                    attempts,
                    started_at_ms,
                    finished_at_ms: Some(self.clock.now_ms()),
                    tokens: None,
                    cost: None,
                },
            )
            .await?;
        self.finish(run, &run.summary.kind, RunStatus::Failed).await
    }

    async fn finish(&self, run: &Run, flow: &str, status: RunStatus) -> Result<(), StoreError> {
        if self
            .runs
            .finish_run(&run.summary.id, status, self.clock.now_ms())
            .await?
        {
            let status = match status {
                RunStatus::Succeeded => "succeeded",
                RunStatus::Failed => "failed",
                RunStatus::Running => "running",
            };
            metrics::counter!("raccordo_flow_runs_total", "flow" => flow.to_string(), "status" => status).increment(1);
        }
        // Also after a crash between ending the run and queuing its callback: the callback
        // item coalesces with one already queued.
        crate::jobs::on_finished(
            self.kv.as_ref(),
            self.queue.as_ref(),
            &run.summary.id,
            self.clock.now_ms(),
        )
        .await
    }
}

/// What a step's templates see: the trigger input, the outputs of the steps that
/// succeeded, and the run.
pub fn context(run: &Run, flow: &Flow) -> minijinja::Value {
    let steps: serde_json::Map<String, Value> = run
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .map(|s| (s.name.clone(), s.output.clone().unwrap_or_default()))
        .collect();
    minijinja::Value::from_serialize(json!({
        "trigger": run.trigger,
        "steps": steps,
        "run": { "id": run.summary.id, "flow": flow.name },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_tell_flows_and_causes_apart() {
        let a = derived_run_id("tickets", "evt_01");
        assert_eq!(a, derived_run_id("tickets", "evt_01"));
        assert_ne!(a, derived_run_id("tickets", "evt_02"));
        assert_ne!(
            a,
            derived_run_id("ticket", "sevt_01"),
            "the separator keeps parts apart"
        );
        // A fixed value: ids stored by an earlier build must be found by this one.
        assert_eq!(a, "run_7879cc474b3508f533a5bad38ee09961");
    }
}
