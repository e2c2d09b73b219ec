//! HubSpot ↔ Zoho CRM sync (DESIGN §3 "CRM sync"): the semantics, as pure functions.
//!
//! - [`fields`]: field mappings and the conversions between each CRM's values and a
//!   canonical form (phones in E.164, dates, numbers, picklist options, domains).
//! - [`merge`]: the field-level merge of a mapped pair against its last synced snapshot.
//! - [`plan`]: the decision for one changed record: create (as an upsert), update either
//!   side, skip (not hot, echo), archive, or fail naming the field.
//! - [`config`]: `[sync]`, with defaults for contacts and companies.
//!
//! - [`jobs`] and [`worker`]: the thin I/O edge. Changes become work items keyed by pair;
//!   the worker reads records in batches, calls [`plan::plan`] and performs the writes in
//!   batches through the CRM clients.
//!
//! Everything but `jobs` and `worker` is free of I/O; [`intake`] reads the CRMs'
//! notifications strictly.

pub mod backfill;
pub mod config;
pub mod digest;
pub mod fields;
pub mod health;
pub mod intake;
pub mod jobs;
pub mod merge;
pub mod metadata;
pub mod plan;
pub mod privacy;
pub mod reconcile;
pub mod worker;

pub use config::{HotCondition, HotCreate, HotRule, ObjectSync, OnDelete, SyncConfig};
pub use fields::{Canonical, FieldMapping, FieldProblem, FieldType, PicklistOption};
pub use merge::{MergePlan, SideValues, Snapshot, merge};
pub use plan::{
    CrmRecord, Decision, FieldIssue, ObjectKind, Plan, Quiet, Situation, System, Write, plan,
};
