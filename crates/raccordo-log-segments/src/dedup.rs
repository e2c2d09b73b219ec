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
//! that beyond the map entry itself (40 bytes). A delivery id keeps the ids it was answered
//! with as runs of consecutive ids ([`EventRuns`]): a few bytes for a batch, not 16 per event.

use std::collections::HashMap;

use raccordo_core::{DedupKey, EventId};

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
    Delivery(DedupKey, Option<StoredDelivery>),
}

/// Dedup keys are SHA-256 digests (truncated): already uniform, so their first eight bytes
/// are the hash. Several times cheaper than hashing them again with SipHash, and no one
/// can aim collisions at digests they cannot invert.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 16]` hashes as its length, then its bytes: keep the first 8 bytes of data.
        if bytes.len() >= 8 {
            self.0 = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
        }
    }
    fn write_usize(&mut self, _len: usize) {}
}

type KeyMap<V> = HashMap<DedupKey, V, std::hash::BuildHasherDefault<DigestHasher>>;

/// Where to roll back to.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    undo: usize,
}

#[derive(Default)]
pub struct DedupIndex {
    claims: KeyMap<Claim>,
    deliveries: KeyMap<StoredDelivery>,
    undo: Vec<Undo>,
}

impl DedupIndex {
    /// Room for this many claims and deliveries without growing (a map that doubles while
    /// it is loaded holds both copies at the peak).
    pub fn with_capacity(claims: usize, deliveries: usize) -> Self {
        Self {
            claims: KeyMap::with_capacity_and_hasher(claims, Default::default()),
            deliveries: KeyMap::with_capacity_and_hasher(deliveries, Default::default()),
            undo: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.claims.len() + self.deliveries.len()
    }

    /// The event holding `key`, if the claim is still live at `now_ms`.
    pub fn holder(&self, key: &DedupKey, now_ms: i64) -> Option<EventId> {
        self.claims
            .get(key)
            .filter(|c| c.expires_at > now_ms)
            .map(|c| EventId::from_u128(u128::from_le_bytes(c.event)))
    }

    pub fn claim(&mut self, key: DedupKey, event: u128, expires_at: i64) {
        let claim = Claim {
            event: event.to_le_bytes(),
            expires_at,
        };
        let previous = self.claims.insert(key, claim);
        self.undo.push(Undo::Claim(key, previous));
    }

    /// Takes in a claim read back from disk at start: no undo entry (nothing to roll back).
    pub fn load_claim(&mut self, key: DedupKey, event: u128, expires_at: i64) {
        let claim = Claim {
            event: event.to_le_bytes(),
            expires_at,
        };
        self.claims.insert(key, claim);
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
        }
        held
    }

    /// Every claim and delivery still live at `now_ms`.
    pub fn export(&self, now_ms: i64) -> crate::ExportedClaims {
        use raccordo_core::migrate::{ClaimRecord, DeliveryClaimRecord};
        crate::ExportedClaims {
            claims: self
                .claims
                .iter()
                .filter(|(_, c)| c.expires_at > now_ms)
                .map(|(key, c)| ClaimRecord {
                    key: *key,
                    event: EventId::from_u128(u128::from_le_bytes(c.event)),
                    expires_at_ms: c.expires_at,
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

    /// The same for a delivery id.
    pub fn load_delivery(&mut self, key: DedupKey, delivery: &Delivery) {
        self.deliveries.insert(key, StoredDelivery::new(delivery));
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
    }

    /// Forgets the given keys where their entry has expired at `now_ms` (a key claimed
    /// again since has a newer entry, which stays). Returns how many were forgotten.
    pub fn forget_expired(&mut self, expired: &ExpiredKeys, now_ms: i64) -> usize {
        debug_assert!(self.undo.is_empty(), "purge only between commits");
        let before = self.len();
        for key in &expired.claims {
            if self.claims.get(key).is_some_and(|c| c.expires_at <= now_ms) {
                self.claims.remove(key);
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

    #[test]
    fn the_digest_hasher_spreads_keys_by_their_bytes() {
        use std::hash::BuildHasher;
        let build = std::hash::BuildHasherDefault::<DigestHasher>::default();
        let a = build.hash_one(DedupKey([1; 16]));
        let b = build.hash_one(DedupKey([2; 16]));
        assert_ne!(a, b);
        assert_eq!(a, u64::from_le_bytes([1; 8]));
    }

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
