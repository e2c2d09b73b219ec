//! The conformance suite of the store traits in `raccordo_core`, written against the traits
//! only. Every backend runs all of it, unchanged: a backend's test file implements
//! [`Backend`] (how to open its store, and open it again) and invokes [`conformance!`],
//! which expands to one test per case.
//!
//! Cases cover the contract (what each method promises), concurrency (two workers and one
//! lease, compare-and-swap races, per-key FIFO under parallel consumers) and restarts
//! (everything acknowledged is there after the store is closed and opened again).

use std::any::Any;

use async_trait::async_trait;
use raccordo_core::Stores;

pub mod alerts;
pub mod audit;
pub mod costs;
pub mod erasure;
pub mod fixtures;
pub mod kv;
pub mod log;
pub mod mappings;
pub mod offsets;
pub mod queue;
pub mod ratelimit;
pub mod requests;
pub mod runs;
pub mod secrets;
pub mod stream;
pub mod windows;

/// One place where a backend keeps its data (a file, a database): it can be opened, closed
/// and opened again.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn open(&self) -> Opened;
}

/// An open store set, and whatever keeps it open (a lock, a connection pool).
pub struct Opened {
    pub stores: Stores,
    guard: Box<dyn Any + Send + Sync>,
}

impl Opened {
    pub fn new(stores: Stores, guard: impl Any + Send + Sync) -> Self {
        Self {
            stores,
            guard: Box::new(guard),
        }
    }

    /// Closes the store the way the hub does at shutdown.
    pub async fn close(self) {
        self.stores.log.close().await;
        drop(self.stores);
        drop(self.guard);
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each on a fresh backend made by
/// `$make` (an expression evaluated per test).
#[macro_export]
macro_rules! conformance {
    ($make:expr) => {
        $crate::conformance!(@cases $make;
            queue::per_key_fifo_and_parallel_keys,
            queue::coalescing,
            queue::retries_dead_letters_and_replay,
            queue::permanent_failures_and_retry_after,
            queue::expired_lease_hands_over_after_restart,
            queue::two_workers_never_hold_the_same_item,
            queue::fifo_per_key_under_parallel_consumers,
            queue::typed_jobs,
            queue::depth_and_released_leases,
            kv::put_get_expiry_and_delete,
            kv::compare_and_swap_race_has_one_winner,
            kv::entries_survive_a_restart,
            mappings::link_find_relink_unlink,
            secrets::secrets_are_versioned_and_survive_a_restart,
            secrets::two_workers_one_lease,
            ratelimit::concurrent_takes_never_overdraw,
            ratelimit::buckets_refill_and_say_when,
            runs::runs_steps_and_paging,
            runs::runs_survive_a_restart,
            runs::retention_removes_ended_runs_with_their_steps,
            windows::results_checkpoints_and_scopes,
            offsets::offsets_never_move_back_and_survive_a_restart,
            alerts::history_is_durable_and_newest_first,
            requests::refused_requests_are_durable_filtered_paged_and_purged,
            audit::audit_records_are_durable_newest_first_and_never_overwritten,
            costs::costs_replace_per_day,
            erasure::documents_holding_a_subject_are_found_and_erased,
            log::append_tail_and_query,
            log::dedup_claims_survive_a_restart,
            log::erasure_rewrites_events_in_place_and_frees_their_claims,
        );
    };
    (@cases $make:expr; $($module:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let backend = $make;
                $crate::$module::$case(&backend).await;
            }
        )*
    };
}
