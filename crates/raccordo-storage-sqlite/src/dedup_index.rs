//! The in-memory side of dedup: which keys are claimed, by which event, until when.
//!
//! Authoritative for lookups while the process runs; durable through the append-only
//! `dedup_claims` / `delivery_claims` tables written in the same transaction as the events,
//! from which it is rebuilt at start-up. Every change made while applying a request is
//! recorded in an undo log, so a failed savepoint or commit leaves the map exactly as the
//! database is.

use std::collections::HashMap;

use raccordo_core::{DedupKey, EventId};
use rusqlite::{Connection, params};

#[derive(Debug, Clone, Copy)]
struct Claim {
    event: u128,
    expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub body_hash: DedupKey,
    pub events: Vec<u128>,
    pub expires_at: i64,
}

enum Undo {
    Claim(DedupKey, Option<Claim>),
    Delivery(DedupKey, Option<Delivery>),
}

#[derive(Default)]
pub struct DedupIndex {
    claims: HashMap<DedupKey, Claim>,
    deliveries: HashMap<DedupKey, Delivery>,
    undo: Vec<Undo>,
}

pub fn ulid_bytes(id: EventId) -> [u8; 16] {
    id.as_u128().to_be_bytes()
}

fn key_of(bytes: &[u8]) -> Option<DedupKey> {
    bytes.try_into().ok().map(DedupKey)
}

impl DedupIndex {
    /// Rebuilds the index from the claim tables (later rows override earlier ones).
    pub fn load(conn: &Connection, now_ms: i64) -> rusqlite::Result<Self> {
        let mut index = Self::default();
        let mut stmt = conn.prepare(
            "SELECT key, event_id, expires_at FROM dedup_claims WHERE expires_at > ?1 ORDER BY rid",
        )?;
        let mut rows = stmt.query(params![now_ms])?;
        while let Some(row) = rows.next()? {
            let (key, event): (Vec<u8>, Vec<u8>) = (row.get(0)?, row.get(1)?);
            if let (Some(key), Ok(event)) = (key_of(&key), <[u8; 16]>::try_from(event.as_slice())) {
                index.claims.insert(
                    key,
                    Claim {
                        event: u128::from_be_bytes(event),
                        expires_at: row.get(2)?,
                    },
                );
            }
        }
        let mut stmt = conn.prepare(
            "SELECT key, body_hash, event_ids, expires_at FROM delivery_claims WHERE expires_at > ?1 ORDER BY rid",
        )?;
        let mut rows = stmt.query(params![now_ms])?;
        while let Some(row) = rows.next()? {
            let (key, hash, ids): (Vec<u8>, Vec<u8>, Vec<u8>) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            if let (Some(key), Some(body_hash)) = (key_of(&key), key_of(&hash)) {
                let events = ids
                    .chunks_exact(16)
                    .map(|c| u128::from_be_bytes(c.try_into().unwrap_or([0; 16])))
                    .collect();
                index.deliveries.insert(
                    key,
                    Delivery {
                        body_hash,
                        events,
                        expires_at: row.get(3)?,
                    },
                );
            }
        }
        Ok(index)
    }

    pub fn len(&self) -> usize {
        self.claims.len() + self.deliveries.len()
    }

    /// The event holding `key`, if the claim is still live.
    pub fn holder(&self, key: &DedupKey, now_ms: i64) -> Option<EventId> {
        self.claims
            .get(key)
            .filter(|c| c.expires_at > now_ms)
            .map(|c| EventId::from_u128(c.event))
    }

    pub fn claim(&mut self, key: DedupKey, event: EventId, expires_at: i64) {
        let previous = self.claims.insert(
            key,
            Claim {
                event: event.as_u128(),
                expires_at,
            },
        );
        self.undo.push(Undo::Claim(key, previous));
    }

    pub fn delivery(&self, key: &DedupKey, now_ms: i64) -> Option<&Delivery> {
        self.deliveries.get(key).filter(|d| d.expires_at > now_ms)
    }

    pub fn record_delivery(&mut self, key: DedupKey, delivery: Delivery) {
        let previous = self.deliveries.insert(key, delivery);
        self.undo.push(Undo::Delivery(key, previous));
    }

    /// A position in the undo log, to roll back to.
    pub fn mark(&self) -> usize {
        self.undo.len()
    }

    /// Undoes every change made after `mark`.
    pub fn rollback_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
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

    /// The changes are committed: forget how to undo them.
    pub fn commit(&mut self) {
        self.undo.clear();
    }

    /// Forgets the given keys if their entry in memory has expired (a key re-claimed after
    /// expiry has a newer entry, which stays).
    pub fn forget<'a>(
        &mut self,
        business: bool,
        keys: impl Iterator<Item = &'a [u8]>,
        now_ms: i64,
    ) {
        for key in keys.filter_map(key_of) {
            if business {
                if self
                    .claims
                    .get(&key)
                    .is_some_and(|c| c.expires_at <= now_ms)
                {
                    self.claims.remove(&key);
                }
            } else if self
                .deliveries
                .get(&key)
                .is_some_and(|d| d.expires_at <= now_ms)
            {
                self.deliveries.remove(&key);
            }
        }
    }
}
