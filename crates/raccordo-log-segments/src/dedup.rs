//! The in-memory side of dedup: which keys are claimed, by which event, until when.
//!
//! Authoritative for lookups while the process runs. Durable through the claims written in
//! the same frames as their events, and rebuilt at start from the segments' sidecar files
//! (which keep a sealed segment's live claims even after retention removed its events).
//! Every change made while applying a request is recorded in an undo log, so a request or
//! commit that fails leaves the map exactly as the disk is.
//!
//! Expired claims are forgotten segment by segment: once every claim of a sealed segment
//! has expired, the maintenance thread hands its keys to the writer, which drops the ones
//! not claimed again since ([`DedupIndex::forget_expired`]). Nothing per claim is kept for
//! that beyond the map entry itself (40 bytes). The claims read back at start are not put in
//! the map but kept in one sorted array ([`SortedClaims`]), with no empty buckets. A
//! delivery id keeps the ids it was answered with as runs of consecutive ids
//! ([`EventRuns`]): a few bytes for a batch, not 16 per event.

use raccordo_core::{DedupKey, EventId};

use crate::key_map::KeyMap;
use crate::sorted_claims::{ClaimLoader, SortedClaims, Tombstone};

/// The event id as bytes (not `u128`, whose 16-byte alignment would pad every entry).
#[derive(Debug, Clone, Copy)]
struct Claim {
    event: [u8; 16],
    expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub body_hash: DedupKey,
    pub events: Vec<u128>,
    pub expires_at: i64,
}

/// A delivery as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredDelivery {
    body_hash: DedupKey,
    events: EventRuns,
    expires_at: i64,
}

impl StoredDelivery {
    fn new(delivery: &Delivery) -> Self {
        Self {
            body_hash: delivery.body_hash,
            events: EventRuns::from_ids(&delivery.events),
            expires_at: delivery.expires_at,
        }
    }

    fn expand(&self) -> Delivery {
        Delivery {
            body_hash: self.body_hash,
            events: self.events.iter().collect(),
            expires_at: self.expires_at,
        }
    }
}

/// The event ids a delivery was answered with, as runs of consecutive ids. The ids of one
/// request are made together by a monotonic generator (ULIDs of one millisecond, each the
/// previous plus one), so a batch of 1000 is one run of 20 bytes instead of 16 KB; an item
/// answered as a duplicate of an earlier event breaks the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRuns(Box<[Run]>);

/// `len` ids from `first` (bytes, not `u128`, whose 16-byte alignment would pad the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: [u8; 16],
    len: u32,
}

impl Run {
    /// The id that would extend the run (none past the largest id).
    fn next(&self) -> Option<u128> {
        u128::from_le_bytes(self.first).checked_add(u128::from(self.len))
    }
}

impl EventRuns {
    pub fn from_ids(ids: &[u128]) -> Self {
        let mut runs: Vec<Run> = Vec::new();
        for &id in ids {
            match runs.last_mut() {
                Some(run) if run.next() == Some(id) && run.len < u32::MAX => run.len += 1,
                _ => runs.push(Run {
                    first: id.to_le_bytes(),
                    len: 1,
                }),
            }
        }
        Self(runs.into_boxed_slice())
    }

    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        self.0.iter().flat_map(|run| {
            let first = u128::from_le_bytes(run.first);
            (0..run.len).map(move |i| first + u128::from(i))
        })
    }
}

enum Undo {
    Claim(DedupKey, Option<Claim>),
    Loaded(Tombstone),
    Delivery(DedupKey, Option<StoredDelivery>),
}

/// Where to roll back to.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    undo: usize,
}

/// Builds the index from the claims and deliveries read back at start (no undo entries:
/// nothing to roll back), in segment order: a later delivery of a key overrides an earlier
/// one, and of a key's claims the one that expires last is kept (the later one, see
/// [`ClaimLoader::finish`]).
pub struct IndexLoader {
    claims: ClaimLoader,
    deliveries: KeyMap<StoredDelivery>,
}

impl IndexLoader {
    /// Room for this many claims and deliveries without growing (a map that doubles while
    /// it is loaded holds both copies at the peak).
    pub fn with_capacity(claims: usize, deliveries: usize) -> Self {
        Self {
            claims: ClaimLoader::with_capacity(claims),
            deliveries: KeyMap::with_capacity(deliveries),
        }
    }

    pub fn load_claim(&mut self, key: DedupKey, event: u128, expires_at: i64) {
        self.claims.push(key, event, expires_at);
    }

    pub fn load_delivery(&mut self, key: DedupKey, delivery: &Delivery) {
        self.deliveries.insert(key, StoredDelivery::new(delivery));
    }

    pub fn finish(self) -> DedupIndex {
        DedupIndex {
            loaded: self.claims.finish(),
            claims: KeyMap::default(),
            deliveries: self.deliveries,
            undo: Vec::new(),
        }
    }
}

/// The live claims and deliveries. A key's claim is in `claims` (made since start) or in
/// `loaded` (read back at start), never live in both: claiming a loaded key again marks the
/// loaded claim dead.
#[derive(Default)]
pub struct DedupIndex {
    loaded: SortedClaims,
    claims: KeyMap<Claim>,
    deliveries: KeyMap<StoredDelivery>,
    undo: Vec<Undo>,
}

impl DedupIndex {
    pub fn len(&self) -> usize {
        self.loaded.live() + self.claims.len() + self.deliveries.len()
    }

    /// The event holding `key`, if the claim is still live at `now_ms`.
    pub fn holder(&self, key: &DedupKey, now_ms: i64) -> Option<EventId> {
        let (event, expires_at) = match self.claims.get(key) {
            Some(c) => (u128::from_le_bytes(c.event), c.expires_at),
            None => self.loaded.get(key)?,
        };
        (expires_at > now_ms).then(|| EventId::from_u128(event))
    }

    pub fn claim(&mut self, key: DedupKey, event: u128, expires_at: i64) {
        if self.loaded.live() > 0
            && let Some(tombstone) = self.loaded.kill_if(&key, |_, _| true)
        {
            self.undo.push(Undo::Loaded(tombstone));
        }
        let claim = Claim {
            event: event.to_le_bytes(),
            expires_at,
        };
        let previous = self.claims.insert(key, claim);
        self.undo.push(Undo::Claim(key, previous));
    }

    /// Drops `key`'s claim if `event` still holds it (an erased event's claim); whether it did.
    pub fn drop_claim(&mut self, key: &DedupKey, event: u128) -> bool {
        debug_assert!(self.undo.is_empty(), "erase only between commits");
        let held = self
            .claims
            .get(key)
            .is_some_and(|c| u128::from_le_bytes(c.event) == event);
        if held {
            self.claims.remove(key);
            return true;
        }
        let dropped = self.loaded.kill_if(key, |holder, _| holder == event);
        self.loaded.release_if_dead();
        dropped.is_some()
    }

    /// Every claim and delivery still live at `now_ms`.
    pub fn export(&self, now_ms: i64) -> crate::ExportedClaims {
        use raccordo_core::migrate::{ClaimRecord, DeliveryClaimRecord};
        let made = self
            .claims
            .iter()
            .map(|(key, c)| (*key, u128::from_le_bytes(c.event), c.expires_at));
        crate::ExportedClaims {
            claims: made
                .chain(self.loaded.iter())
                .filter(|(_, _, expires_at)| *expires_at > now_ms)
                .map(|(key, event, expires_at)| ClaimRecord {
                    key,
                    event: EventId::from_u128(event),
                    expires_at_ms: expires_at,
                })
                .collect(),
            deliveries: self
                .deliveries
                .iter()
                .filter(|(_, d)| d.expires_at > now_ms)
                .map(|(key, d)| DeliveryClaimRecord {
                    key: *key,
                    body_hash: d.body_hash,
                    events: d.events.iter().map(EventId::from_u128).collect(),
                    expires_at_ms: d.expires_at,
                })
                .collect(),
        }
    }

    /// The delivery recorded under `key`, if still live at `now_ms` (expanded: a replay is
    /// rare, the memory saved is not).
    pub fn delivery(&self, key: &DedupKey, now_ms: i64) -> Option<Delivery> {
        self.deliveries
            .get(key)
            .filter(|d| d.expires_at > now_ms)
            .map(StoredDelivery::expand)
    }

    pub fn record_delivery(&mut self, key: DedupKey, delivery: &Delivery) {
        let previous = self.deliveries.insert(key, StoredDelivery::new(delivery));
        self.undo.push(Undo::Delivery(key, previous));
    }

    pub fn mark(&self) -> Mark {
        Mark {
            undo: self.undo.len(),
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
                Some(Undo::Loaded(tombstone)) => self.loaded.restore(tombstone),
                Some(Undo::Delivery(key, Some(previous))) => {
                    self.deliveries.insert(key, previous);
                }
                Some(Undo::Delivery(key, None)) => {
                    self.deliveries.remove(&key);
                }
                None => break,
            }
        }
    }

    /// The changes are durable: forget how to undo them.
    pub fn commit(&mut self) {
        self.undo.clear();
        self.loaded.release_if_dead();
    }

    /// Forgets the given keys where their entry has expired at `now_ms` (a key claimed
    /// again since has a newer entry, which stays). Returns how many were forgotten.
    pub fn forget_expired(&mut self, expired: &ExpiredKeys, now_ms: i64) -> usize {
        debug_assert!(self.undo.is_empty(), "purge only between commits");
        let before = self.len();
        for key in &expired.claims {
            if self.claims.get(key).is_some_and(|c| c.expires_at <= now_ms) {
                self.claims.remove(key);
            } else {
                self.loaded
                    .kill_if(key, |_, expires_at| expires_at <= now_ms);
            }
        }
        for key in &expired.deliveries {
            if self
                .deliveries
                .get(key)
                .is_some_and(|d| d.expires_at <= now_ms)
            {
                self.deliveries.remove(key);
            }
        }
        self.loaded.release_if_dead();
        before - self.len()
    }
}

/// Keys of a sealed segment whose claims have all expired, for the writer to forget.
#[derive(Debug, Default)]
pub struct ExpiredKeys {
    pub claims: Vec<DedupKey>,
    pub deliveries: Vec<DedupKey>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn event_runs_give_back_the_ids_in_order() {
        let cases: [&[u128]; 6] = [
            &[],
            &[7],
            &[10, 11, 12, 13],
            &[10, 11, 5, 12, 13, 13, 40],
            &[u128::MAX - 1, u128::MAX, 0, 1],
            &[3, 2, 1],
        ];
        for ids in cases {
            let runs = EventRuns::from_ids(ids);
            assert_eq!(runs.iter().collect::<Vec<_>>(), ids);
        }
        assert_eq!(
            EventRuns::from_ids(&(1000..2000).collect::<Vec<_>>())
                .0
                .len(),
            1
        );
        assert_eq!(EventRuns::from_ids(&[10, 11, 5, 12, 13]).0.len(), 3);
    }

    #[test]
    fn a_replaced_delivery_is_restored_by_rollback() {
        let mut index = DedupIndex::default();
        let first = Delivery {
            body_hash: DedupKey([9; 16]),
            events: vec![1, 2, 3],
            expires_at: 100,
        };
        index.record_delivery(DedupKey([1; 16]), &first);
        index.commit();
        let mark = index.mark();
        let second = Delivery {
            events: vec![8],
            ..first.clone()
        };
        index.record_delivery(DedupKey([1; 16]), &second);
        assert_eq!(index.delivery(&DedupKey([1; 16]), 0), Some(second));
        index.rollback_to(mark);
        assert_eq!(index.delivery(&DedupKey([1; 16]), 0), Some(first));
        assert_eq!(index.delivery(&DedupKey([1; 16]), 100), None, "expired");
    }

    #[test]
    fn rollback_restores_claims() {
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
    }

    #[derive(Debug, Clone)]
    enum Op {
        Claim(u8, u128, i64),
        Commit,
        Rollback,
        Drop(u8, u128),
        Forget(Vec<u8>, i64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..40, 0u128..8, 1i64..200).prop_map(|(k, e, x)| Op::Claim(k, e, x)),
            2 => Just(Op::Commit),
            1 => Just(Op::Rollback),
            1 => (0u8..40, 0u128..8).prop_map(|(k, e)| Op::Drop(k, e)),
            1 => (proptest::collection::vec(0u8..40, 0..10), 0i64..200)
                .prop_map(|(keys, now)| Op::Forget(keys, now)),
        ]
    }

    proptest::proptest! {
        /// An index whose claims were loaded at start answers like one whose claims were all
        /// made since: through claims again, rollbacks, erasure and forgetting.
        #[test]
        fn loaded_claims_behave_like_claims_made(
            loaded in proptest::collection::vec((0u8..40, 0u128..8, 1i64..200), 0..60),
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let key = |k: u8| DedupKey([k.wrapping_mul(37); 16]);
            let mut loader = IndexLoader::with_capacity(loaded.len(), 0);
            let mut made = DedupIndex::default();
            let mut latest = HashMap::new();
            let mut seen = std::collections::HashSet::new();
            for &(k, event, expires_at) in &loaded {
                if !seen.insert((k, expires_at)) {
                    continue; // two claims of a key never share an expiry
                }
                loader.load_claim(key(k), event, expires_at);
                // The loader keeps the later expiry of a key (see ClaimLoader::finish).
                let e = latest.entry(k).or_insert((event, expires_at));
                if expires_at > e.1 {
                    *e = (event, expires_at);
                }
            }
            for (&k, &(event, expires_at)) in &latest {
                made.claim(key(k), event, expires_at);
            }
            made.commit();
            let mut index = loader.finish();
            let mut mark = (index.mark(), made.mark());
            for op in ops {
                match op {
                    Op::Claim(k, event, expires_at) => {
                        index.claim(key(k), event, expires_at);
                        made.claim(key(k), event, expires_at);
                    }
                    Op::Commit => {
                        index.commit();
                        made.commit();
                        mark = (index.mark(), made.mark());
                    }
                    Op::Rollback => {
                        index.rollback_to(mark.0);
                        made.rollback_to(mark.1);
                    }
                    Op::Drop(k, event) => {
                        index.rollback_to(mark.0);
                        made.rollback_to(mark.1);
                        proptest::prop_assert_eq!(
                            index.drop_claim(&key(k), event),
                            made.drop_claim(&key(k), event)
                        );
                    }
                    Op::Forget(keys, now) => {
                        index.rollback_to(mark.0);
                        made.rollback_to(mark.1);
                        let expired = ExpiredKeys {
                            claims: keys.into_iter().map(key).collect(),
                            deliveries: vec![],
                        };
                        proptest::prop_assert_eq!(
                            index.forget_expired(&expired, now),
                            made.forget_expired(&expired, now)
                        );
                    }
                }
                proptest::prop_assert_eq!(index.len(), made.len());
                for k in 0u8..40 {
                    for now in [0, 100, 199] {
                        proptest::prop_assert_eq!(
                            index.holder(&key(k), now),
                            made.holder(&key(k), now)
                        );
                    }
                }
            }
            let mut exported = index.export(50).claims;
            let mut expected = made.export(50).claims;
            exported.sort_by_key(|c| c.key.0);
            expected.sort_by_key(|c| c.key.0);
            proptest::prop_assert_eq!(
                exported.iter().map(|c| (c.key.0, c.event, c.expires_at_ms)).collect::<Vec<_>>(),
                expected.iter().map(|c| (c.key.0, c.event, c.expires_at_ms)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn forgetting_keeps_a_key_claimed_again() {
        let mut index = DedupIndex::default();
        for n in 0..10u8 {
            index.claim(DedupKey([n; 16]), u128::from(n), 100);
        }
        index.claim(DedupKey([0; 16]), 99, 500);
        index.commit();
        let expired = ExpiredKeys {
            claims: (0..10u8).map(|n| DedupKey([n; 16])).collect(),
            deliveries: vec![],
        };
        assert_eq!(index.forget_expired(&expired, 100), 9);
        assert_eq!(
            index.holder(&DedupKey([0; 16]), 100),
            Some(EventId::from_u128(99)),
            "claimed again after expiry: stays"
        );
        assert_eq!(index.len(), 1);
    }
}
