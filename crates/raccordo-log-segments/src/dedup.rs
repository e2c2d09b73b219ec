//! The in-memory side of dedup: which keys are claimed, by which event, until when.
//!
//! Authoritative for lookups while the process runs. Durable through the claims written in
//! the same frames as their events, and rebuilt at start from the segments' sidecar files
//! (which keep a sealed segment's live claims even after retention removed its events).
//! Every change made while applying a request is recorded in an undo log, so a request or
//! commit that fails leaves the map exactly as the disk is.

use std::collections::{HashMap, VecDeque};

use raccordo_core::{DedupKey, EventId};

#[derive(Debug, Clone, Copy)]
struct Claim {
    event: u128,
    expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub body_hash: DedupKey,
    pub events: Vec<u128>,
    pub expires_at: i64,
}

enum Undo {
    Claim(DedupKey, Option<Claim>),
    Delivery(DedupKey, Option<Delivery>),
}

/// Where to roll back to.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    undo: usize,
    claim_expiries: usize,
    delivery_expiries: usize,
}

#[derive(Default)]
pub struct DedupIndex {
    claims: HashMap<DedupKey, Claim>,
    deliveries: HashMap<DedupKey, Delivery>,
    undo: Vec<Undo>,
    /// Keys in the order they were claimed, with their expiry: with one retention setting
    /// this is expiry order, so purging pops from the front and does bounded work.
    claim_expiries: VecDeque<(i64, DedupKey)>,
    delivery_expiries: VecDeque<(i64, DedupKey)>,
}

impl DedupIndex {
    pub fn len(&self) -> usize {
        self.claims.len() + self.deliveries.len()
    }

    /// The event holding `key`, if the claim is still live at `now_ms`.
    pub fn holder(&self, key: &DedupKey, now_ms: i64) -> Option<EventId> {
        self.claims
            .get(key)
            .filter(|c| c.expires_at > now_ms)
            .map(|c| EventId::from_u128(c.event))
    }

    pub fn claim(&mut self, key: DedupKey, event: u128, expires_at: i64) {
        let previous = self.claims.insert(key, Claim { event, expires_at });
        self.undo.push(Undo::Claim(key, previous));
        self.claim_expiries.push_back((expires_at, key));
    }

    pub fn delivery(&self, key: &DedupKey, now_ms: i64) -> Option<&Delivery> {
        self.deliveries.get(key).filter(|d| d.expires_at > now_ms)
    }

    pub fn record_delivery(&mut self, key: DedupKey, delivery: Delivery) {
        let expires_at = delivery.expires_at;
        let previous = self.deliveries.insert(key, delivery);
        self.undo.push(Undo::Delivery(key, previous));
        self.delivery_expiries.push_back((expires_at, key));
    }

    pub fn mark(&self) -> Mark {
        Mark {
            undo: self.undo.len(),
            claim_expiries: self.claim_expiries.len(),
            delivery_expiries: self.delivery_expiries.len(),
        }
    }

    /// Undoes every change made after `mark`.
    pub fn rollback_to(&mut self, mark: Mark) {
        while self.undo.len() > mark.undo {
            match self.undo.pop() {
                Some(Undo::Claim(key, Some(previous))) => {
                    self.claims.insert(key, previous);
                }
                Some(Undo::Claim(key, None)) => {
                    self.claims.remove(&key);
                }
                Some(Undo::Delivery(key, Some(previous))) => {
                    self.deliveries.insert(key, previous);
                }
                Some(Undo::Delivery(key, None)) => {
                    self.deliveries.remove(&key);
                }
                None => break,
            }
        }
        self.claim_expiries.truncate(mark.claim_expiries);
        self.delivery_expiries.truncate(mark.delivery_expiries);
    }

    /// The changes are durable: forget how to undo them.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    /// Forgets up to `budget` claims that expired at `now_ms` (a key claimed again after
    /// expiry has a newer entry, which stays). Returns how many entries were looked at.
    pub fn purge_expired(&mut self, now_ms: i64, budget: usize) -> usize {
        debug_assert!(self.undo.is_empty(), "purge only between commits");
        let mut looked = 0;
        while looked < budget {
            match self.claim_expiries.front() {
                Some((expires_at, key)) if *expires_at <= now_ms => {
                    let key = *key;
                    self.claim_expiries.pop_front();
                    if self
                        .claims
                        .get(&key)
                        .is_some_and(|c| c.expires_at <= now_ms)
                    {
                        self.claims.remove(&key);
                    }
                    looked += 1;
                }
                _ => break,
            }
        }
        while looked < budget {
            match self.delivery_expiries.front() {
                Some((expires_at, key)) if *expires_at <= now_ms => {
                    let key = *key;
                    self.delivery_expiries.pop_front();
                    if self
                        .deliveries
                        .get(&key)
                        .is_some_and(|d| d.expires_at <= now_ms)
                    {
                        self.deliveries.remove(&key);
                    }
                    looked += 1;
                }
                _ => break,
            }
        }
        looked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_restores_claims_and_expiry_queues() {
        let mut index = DedupIndex::default();
        index.claim(DedupKey([1; 16]), 10, 100);
        index.commit();
        let mark = index.mark();
        index.claim(DedupKey([1; 16]), 11, 200);
        index.claim(DedupKey([2; 16]), 12, 200);
        index.rollback_to(mark);
        assert_eq!(
            index.holder(&DedupKey([1; 16]), 0),
            Some(EventId::from_u128(10))
        );
        assert_eq!(index.holder(&DedupKey([2; 16]), 0), None);
        assert_eq!(index.claim_expiries.len(), 1);
    }

    #[test]
    fn purging_keeps_a_key_claimed_again_and_respects_the_budget() {
        let mut index = DedupIndex::default();
        for n in 0..10u8 {
            index.claim(DedupKey([n; 16]), u128::from(n), 100);
        }
        index.claim(DedupKey([0; 16]), 99, 500);
        index.commit();
        assert_eq!(index.purge_expired(100, 4), 4);
        assert_eq!(index.purge_expired(100, 100), 6);
        assert_eq!(
            index.holder(&DedupKey([0; 16]), 100),
            Some(EventId::from_u128(99)),
            "re-claimed after expiry: stays"
        );
        assert_eq!(index.len(), 1);
    }
}
