//! Which sealed segments retention removes: a pure decision over what the segments hold.

use std::time::Duration;

/// `[storage.retention]`: events older than `max_age`, or beyond `max_bytes` of log, are
/// removed a whole segment at a time, oldest first. The active segment is never removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
}

/// What retention needs to know of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFacts {
    pub first_seq: i64,
    pub last_seq: i64,
    pub bytes: u64,
    /// When its newest event was received: the whole segment is older than this.
    pub max_received_at: i64,
}

/// How many segments from the front of `segments` (oldest first, the active one last) to
/// remove at `now_ms`.
pub fn segments_to_remove(
    segments: &[SegmentFacts],
    now_ms: i64,
    policy: &RetentionPolicy,
) -> usize {
    let sealed = segments.len().saturating_sub(1);
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let cutoff = policy
        .max_age
        .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
    let mut remove = 0;
    for s in &segments[..sealed] {
        let too_old = cutoff.is_some_and(|cutoff| s.max_received_at < cutoff);
        let too_big = policy.max_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            break;
        }
        total -= s.bytes;
        remove += 1;
    }
    remove
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts(ages: &[i64], bytes: u64) -> Vec<SegmentFacts> {
        ages.iter()
            .enumerate()
            .map(|(n, at)| SegmentFacts {
                first_seq: n as i64 * 10 + 1,
                last_seq: n as i64 * 10 + 10,
                bytes,
                max_received_at: *at,
            })
            .collect()
    }

    #[test]
    fn age_removes_old_sealed_segments_from_the_front_only() {
        let policy = RetentionPolicy {
            max_age: Some(Duration::from_millis(100)),
            max_bytes: None,
        };
        // The third is old but sits behind a young one: order is kept, no holes.
        let s = facts(&[10, 20, 900, 30, 40], 1);
        assert_eq!(segments_to_remove(&s, 1000, &policy), 2);
        // The active segment stays however old.
        let s = facts(&[10, 20], 1);
        assert_eq!(segments_to_remove(&s, 1000, &policy), 1);
    }

    #[test]
    fn size_removes_until_the_rest_fits() {
        let policy = RetentionPolicy {
            max_age: None,
            max_bytes: Some(250),
        };
        let s = facts(&[1, 2, 3, 4, 5], 100);
        assert_eq!(segments_to_remove(&s, 0, &policy), 3);
    }

    proptest! {
        #[test]
        fn never_the_active_segment_and_what_stays_fits(
            ages in prop::collection::vec(0i64..1000, 1..20),
            sizes in 1u64..500, max_bytes in prop::option::of(0u64..5000),
            max_age in prop::option::of(0u64..1000), now in 0i64..2000,
        ) {
            let s = facts(&ages, sizes);
            let policy = RetentionPolicy { max_age: max_age.map(Duration::from_millis), max_bytes };
            let n = segments_to_remove(&s, now, &policy);
            prop_assert!(n < s.len());
            let kept: u64 = s[n..].iter().map(|f| f.bytes).sum();
            // Stopping before the active segment means what stays fits the size limit.
            if let Some(max) = max_bytes && n < s.len() - 1 {
                prop_assert!(kept <= max);
            }
            // Without any limit nothing goes.
            if max_bytes.is_none() && max_age.is_none() {
                prop_assert_eq!(n, 0);
            }
        }
    }
}
