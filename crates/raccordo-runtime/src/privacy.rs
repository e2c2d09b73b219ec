//! The live windows' late table as a holder of personal data. Window results are anonymous
//! counts and stay as they are; the late table keeps, per late event, the customer's
//! distinct-count hash, which an erasure moves to the pseudonym the event log now holds
//! (so a re-aggregation counts the same customers as before, under no name).

use std::sync::Arc;

use async_trait::async_trait;
use raccordo_core::StoreError;
use raccordo_core::privacy::{Erased, PersonalData, Pseudonymiser, Subject};
use raccordo_stream::distinct::hash_of;

use crate::live::LateEventKeeper;

/// The late events of this node's windows, or of every partition's owner in a cluster whose
/// windows are per partition (the change reaches them as a command).
pub struct LateEventsHolder(pub Arc<dyn LateEventKeeper>);

#[async_trait]
impl PersonalData for LateEventsHolder {
    fn name(&self) -> &'static str {
        "late_events"
    }

    async fn export(&self, _: &Subject) -> Result<Option<serde_json::Value>, StoreError> {
        // Late events are stored events: the events' export holds them.
        Ok(None)
    }

    async fn erase(
        &self,
        subject: &Subject,
        pseudonymiser: &Pseudonymiser,
    ) -> Result<Erased, StoreError> {
        let id = subject.id();
        let literal = subject.json_literal();
        // The event log replaces the id's text inside its JSON string by this pseudonym.
        let pseudonym = pseudonymiser.pseudonym(&literal[1..literal.len() - 1]);
        let changed = self
            .0
            .rehash_late_customer(
                &[hash_of(id), hash_of(&id.to_lowercase())],
                hash_of(&pseudonym),
            )
            .await;
        Ok(vec![("late_events", changed)])
    }
}
