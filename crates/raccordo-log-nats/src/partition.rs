//! Which partition an event goes to: a pure function of its customer, stable across nodes,
//! restarts and versions (SHA-256, not the process's randomly keyed hasher).

use sha2::{Digest, Sha256};

/// The partition of `customer` among `partitions` (at least 1).
pub fn partition_of(customer: &[u8], partitions: u32) -> u32 {
    let digest = Sha256::digest(customer);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(partitions.max(1))) as u32
}

/// Reads the customer from a stored payload and places it.
#[derive(Debug, Clone)]
pub struct Partitioner {
    pointer: String,
    partitions: u32,
}

impl Partitioner {
    pub fn new(pointer: impl Into<String>, partitions: u32) -> Self {
        Self {
            pointer: pointer.into(),
            partitions: partitions.max(1),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of an event: its customer's, or — for an event without one (a source
    /// whose payload names no customer) — its own id's, which spreads such events evenly.
    pub fn place(&self, payload: &str, event_id: &str) -> u32 {
        let customer = serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| match v.pointer(&self.pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            });
        match customer {
            Some(customer) => partition_of(customer.as_bytes(), self.partitions),
            None => partition_of(event_id.as_bytes(), self.partitions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_customer_always_lands_in_one_partition() {
        let p = Partitioner::new("/id_cliente", 8);
        let a = p.place(r#"{"id_cliente":"CLIENTE-1","valore":1}"#, "evt_a");
        let b = p.place(r#"{"valore":2,"id_cliente":"CLIENTE-1"}"#, "evt_b");
        assert_eq!(a, b, "by customer, not by event");
        // Fixed values: the placement must never change between versions (a stream written
        // by one release is read by the next).
        assert_eq!(partition_of(b"CLIENTE-1", 8), a);
        assert_eq!(
            (0..8)
                .map(|i| partition_of(format!("c{i}").as_bytes(), 8))
                .collect::<Vec<_>>(),
            (0..8)
                .map(|i| partition_of(format!("c{i}").as_bytes(), 8))
                .collect::<Vec<_>>()
        );
        assert_eq!(partition_of(b"anything", 1), 0);
        assert_eq!(partition_of(b"anything", 0), 0, "no partitions means one");
    }

    #[test]
    fn events_without_a_customer_are_placed_by_their_id() {
        let p = Partitioner::new("/id_cliente", 16);
        assert_eq!(
            p.place(r#"{"valore":1}"#, "evt_x"),
            partition_of(b"evt_x", 16)
        );
        assert_eq!(p.place("not json", "evt_y"), partition_of(b"evt_y", 16));
    }

    proptest! {
        #[test]
        fn placement_is_in_range_and_even(partitions in 1u32..64) {
            let mut counts = vec![0u32; partitions as usize];
            for i in 0..(partitions * 200) {
                let at = partition_of(format!("CLIENTE-{i}").as_bytes(), partitions);
                prop_assert!(at < partitions);
                counts[at as usize] += 1;
            }
            // 200 expected per partition; SHA-256 keeps every one within a wide margin.
            prop_assert!(counts.iter().all(|c| (100..=300).contains(c)), "{counts:?}");
        }
    }
}
