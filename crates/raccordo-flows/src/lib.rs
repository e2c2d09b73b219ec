//! Flows (DESIGN §3 "Flows"): a trigger — a webhook source, a cron schedule, a CRM change or
//! an API call — and a list of steps (`map`, `filter`, `branch`, `ai`, `crm_update`,
//! `crm_search`, `http`, `notify`), run on the durable work queue with a record of every step
//! (input, output, timing, attempts, tokens and cost) from which any run can be replayed.
//!
//! - [`config`]: `[[flows]]` as written; [`Flows::load`] checks it down to each template and
//!   schema, naming the flow, step and field of every problem.
//! - [`template`]: minijinja templates over a run's context, strict about undefined values.
//! - [`steps`]: the step types and their one registry.
//! - [`runner`]: starting, running, resuming and replaying runs on the queue.

pub mod config;
pub mod error;
pub mod flow;
pub mod gateway;
pub mod jobs;
pub mod runner;
pub mod services;
pub mod steps;
pub mod template;

pub use config::{ConfigProblem, FlowConfig, StepConfig, TriggerConfig};
pub use error::StepError;
pub use flow::{Flow, Flows};
pub use gateway::{CrmClients, CrmGateway};
pub use jobs::{Job, JobsConfig};
pub use runner::{FlowRunner, QUEUE, StartError, StepTask, derived_run_id, new_run_id};
pub use services::Services;
