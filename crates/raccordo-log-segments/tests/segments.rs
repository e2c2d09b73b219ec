//! Segment files across restarts: roll-over and sidecars, a torn tail cut off, damage kept
//! and reported, retention by size with claims outliving their events.

use std::time::Duration;

use raccordo_core::{AppendOutcome, EventFilter, EventLog, EventQuery, LogPositions, StoreError};
use raccordo_log_segments::{Recovery, RetentionPolicy, SegmentLog, SegmentLogOptions};
use raccordo_storage_tests::fixtures::{batch, event, key};

fn options(dir: &tempfile::TempDir) -> SegmentLogOptions {
    let mut options = SegmentLogOptions::new(dir.path().join("log"));
    // Small segments: a roll-over every few requests.
    options.segment_bytes = 4096;
    options
}

fn open(options: &SegmentLogOptions) -> (SegmentLog, Recovery) {
    SegmentLog::open(options.clone()).unwrap()
}

/// Appends `n` single-event requests, each with its own business key, received at `at`.
async fn fill(log: &SegmentLog, from: u8, n: u8, at: i64) {
    let mut ids = ulid::Generator::new();
    for k in from..from + n {
        let out = log
            .append(batch(
                at,
                None,
                vec![event(&mut ids, Some(key(k)), &"x".repeat(300))],
            ))
            .await
            .unwrap();
        assert!(
            matches!(out, AppendOutcome::Appended(ref i) if !i[0].is_duplicate()),
            "{out:?}"
        );
    }
}

async fn tail_all(log: &SegmentLog) -> Result<Vec<i64>, StoreError> {
    let mut seqs = Vec::new();
    let mut at = LogPositions::default();
    loop {
        let page = log.tail(&at, 7).await?;
        if page.is_empty() {
            return Ok(seqs);
        }
        for e in page {
            at.advance(e.position);
            seqs.push(e.position.offset);
        }
    }
}

fn files(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    found.sort();
    found
}

async fn is_duplicate(log: &SegmentLog, k: u8, at: i64) -> bool {
    let mut ids = ulid::Generator::new();
    let out = log
        .append(batch(
            at,
            None,
            vec![event(&mut ids, Some(key(k)), "again")],
        ))
        .await
        .unwrap();
    matches!(out, AppendOutcome::Appended(ref i) if i[0].is_duplicate())
}

/// Tailers start where their previous page stopped (a read point), not at the sparse index
/// entry: pages of any size, interleaved, over frames of one and of many events, across
/// roll-overs, each still see every event once and in order.
#[tokio::test]
async fn interleaved_tailers_each_see_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(&options(&dir));
    let mut ids = ulid::Generator::new();
    let mut expected = Vec::new();
    let mut tailers: Vec<(usize, LogPositions, Vec<i64>)> = [1, 2, 3, 5, 7, 64]
        .into_iter()
        .map(|page| (page, LogPositions::default(), Vec::new()))
        .collect();
    for round in 0..40u8 {
        // One frame of one event, then one of three (a frame a page may stop inside).
        let k = round * 4;
        fill(&log, k, 1, 1_000).await;
        let out = log
            .append(batch(
                1_000,
                None,
                (1..4)
                    .map(|j| event(&mut ids, Some(key(k + j)), &"y".repeat(200)))
                    .collect(),
            ))
            .await
            .unwrap();
        assert!(matches!(out, AppendOutcome::Appended(ref i) if i.len() == 3));
        expected.extend((round as i64 * 4 + 1)..=(round as i64 * 4 + 4));
        for (page, at, seen) in &mut tailers {
            for e in log.tail(at, *page).await.unwrap() {
                at.advance(e.position);
                seen.push(e.position.offset);
            }
        }
    }
    for (page, at, seen) in &mut tailers {
        loop {
            let events = log.tail(at, *page).await.unwrap();
            if events.is_empty() {
                break;
            }
            for e in events {
                at.advance(e.position);
                seen.push(e.position.offset);
            }
        }
        assert_eq!(*seen, expected, "pages of {page}");
    }
    assert!(
        files(&dir.path().join("log"), "seg").len() > 3,
        "it rolled over"
    );
}

#[tokio::test]
async fn segments_roll_over_and_reopen_from_their_sidecars() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(&dir);
    let (log, _) = open(&options);
    fill(&log, 0, 60, 1_000).await;
    let before = tail_all(&log).await.unwrap();
    assert_eq!(before, (1..=60).collect::<Vec<_>>());
    log.close().await;
    let segs = files(&options.dir, "seg");
    assert!(segs.len() > 3, "4 KiB segments roll over: {}", segs.len());
    assert_eq!(
        files(&options.dir, "idx").len(),
        segs.len() - 1,
        "every sealed segment has its sidecar"
    );

    let (log, recovery) = open(&options);
    assert_eq!(
        recovery.rescanned, 0,
        "sealed segments open from their sidecars"
    );
    assert_eq!(recovery.claims, 60);
    assert_eq!(tail_all(&log).await.unwrap(), before);
    assert!(
        is_duplicate(&log, 0, 2_000).await,
        "the oldest claim, from a sidecar"
    );
    assert!(
        is_duplicate(&log, 59, 2_000).await,
        "the newest claim, from the active segment"
    );
    // Reading from the middle starts in the right segment.
    let page = log
        .read(EventFilter {
            after_seq: Some(30),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![31, 32, 33, 34, 35]
    );
    log.close().await;

    // A lost sidecar is rebuilt from its segment.
    std::fs::remove_file(&files(&options.dir, "idx")[0]).unwrap();
    let (log, recovery) = open(&options);
    assert_eq!(recovery.rescanned, 1);
    assert!(is_duplicate(&log, 0, 2_000).await);
    assert_eq!(
        tail_all(&log).await.unwrap().len(),
        63,
        "60 events and 3 recorded duplicates"
    );
}

/// The offsets of the frames of a segment file, read with the public format.
fn frame_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut at = 16;
    let mut frames = Vec::new();
    while let raccordo_log_segments::format::Parsed::Frame { header, .. } =
        raccordo_log_segments::format::parse_frame(&bytes[at..])
    {
        frames.push((at, header.total_len()));
        at += header.total_len();
    }
    frames
}

#[tokio::test]
async fn a_torn_tail_is_zeroed_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&dir);
    options.segment_bytes = 1 << 20;
    let (log, _) = open(&options);
    fill(&log, 0, 5, 1_000).await;
    log.close().await;
    // A crash in the middle of a write: the first part of a frame, as the next commit's
    // write would have started it, right after the last whole frame (in a prepared,
    // zero-filled segment or at the end of a growing one).
    let seg = files(&options.dir, "seg").pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames = frame_offsets(&bytes);
    let (last, len) = *frames.last().unwrap();
    let end = last + len;
    let torn: Vec<u8> = bytes[last..last + len - 100].to_vec();
    if bytes.len() < end + torn.len() {
        bytes.resize(end + torn.len(), 0);
    }
    bytes[end..end + torn.len()].copy_from_slice(&torn);
    std::fs::write(&seg, &bytes).unwrap();

    let (log, recovery) = open(&options);
    assert_eq!(recovery.torn_bytes, torn.len() as u64);
    let after = std::fs::read(&seg).unwrap();
    assert!(
        after[end..].iter().all(|b| *b == 0),
        "the torn write is zeroed"
    );
    assert_eq!(tail_all(&log).await.unwrap(), vec![1, 2, 3, 4, 5]);
    fill(&log, 10, 1, 1_000).await;
    assert_eq!(tail_all(&log).await.unwrap(), vec![1, 2, 3, 4, 5, 6]);
    log.close().await;
    let (log, recovery) = open(&options);
    assert_eq!(
        recovery.torn_bytes, 0,
        "zeros after the frames are free space, not damage"
    );
    assert_eq!(tail_all(&log).await.unwrap(), vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn damage_with_valid_frames_after_it_is_kept_and_reported_not_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&dir);
    options.segment_bytes = 1 << 20;
    let (log, _) = open(&options);
    // Once the prepared segment exists, the second append rolls over into it and the rest
    // follow there: the last segment then holds nine frames whatever the timing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !options.dir.join("next.ready").exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no prepared segment"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fill(&log, 0, 10, 1_000).await;
    log.close().await;
    let seg = files(&options.dir, "seg").pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames = frame_offsets(&bytes);
    assert!(
        frames.len() >= 4,
        "{} frames in the last segment",
        frames.len()
    );
    let len = bytes.len();
    // Damage inside the second frame of the last segment: a flipped byte in its payload.
    bytes[frames[1].0 + 100] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();

    let (log, recovery) = open(&options);
    assert_eq!(
        recovery.torn_bytes, 0,
        "acknowledged frames after the damage are not cut off"
    );
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len as u64);
    let read = tail_all(&log).await;
    assert!(
        matches!(&read, Err(StoreError::Corrupt(m)) if m.contains("checksum")),
        "{read:?}"
    );
    // New events still go in, after the old ones.
    fill(&log, 20, 1, 1_000).await;
    assert_eq!(log.committed().borrow().get(0), 11);
}

#[tokio::test]
async fn retention_removes_the_oldest_segments_and_their_claims_outlive_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&dir);
    options.retention = RetentionPolicy {
        max_age: None,
        max_bytes: Some(12 * 1024),
    };
    options.retention_every = Duration::from_millis(20);
    let (log, _) = open(&options);
    fill(&log, 0, 80, 1_000).await;
    // Retention runs on its own thread: wait (bounded) until it has caught up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log.total_bytes() > 12 * 1024 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = log.first_seq();
    assert!(first > 1);
    let left = tail_all(&log).await.unwrap();
    assert_eq!(
        left.first(),
        Some(&first),
        "tailing starts at the oldest event left"
    );
    assert_eq!(left.last(), Some(&80));
    log.close().await;

    // The removed events' claims are still live (same received time) after a restart.
    let (log, recovery) = open(&options);
    assert_eq!(
        recovery.claims, 80,
        "claims of removed segments stay in their sidecars"
    );
    assert!(is_duplicate(&log, 0, 2_000).await);
    assert_eq!(log.first_seq(), first);
}

#[tokio::test]
async fn claims_of_a_sealed_segment_are_forgotten_once_they_all_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&dir);
    options.retention_every = Duration::from_millis(20);
    let (log, _) = open(&options);
    fill(&log, 0, 40, 1_000).await;
    assert_eq!(log.dedup_keys(), 40);
    // An hour later (the fixtures' retention) every claim so far has expired; the sealed
    // segments' keys are handed to the writer, which forgets a chunk after each commit.
    let later = 1_000 + 3_600_000;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut ids = ulid::Generator::new();
    while log.dedup_keys() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired claims were not forgotten: {}",
            log.dedup_keys()
        );
        // Events without keys: they take no claims, and they fill and seal segments.
        log.append(batch(later, None, vec![event(&mut ids, None, "filler")]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The expired keys are free again.
    assert!(!is_duplicate(&log, 0, later).await);
}

/// A rewrite that picks payloads whose `canale` is `who` and writes `z`s over it.
fn erase_canale(who: &'static str) -> raccordo_core::PayloadRewrite {
    std::sync::Arc::new(move |_source: &str, payload: &str| {
        let needle = format!(r#""canale":"{who}""#);
        payload
            .contains(&needle)
            .then(|| payload.replace(&needle, &format!(r#""canale":"{}""#, "z".repeat(who.len()))))
    })
}

async fn canali(log: &SegmentLog) -> Vec<String> {
    let select: raccordo_core::EventSelector = std::sync::Arc::new(|_, _| true);
    log.find(select)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.payload["canale"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_erasure_patches_sealed_and_active_segments_and_drops_only_their_claims() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(&dir);
    let (log, _) = open(&options);
    let mut ids = ulid::Generator::new();
    // Alternating subjects over several segments; Ada's keys are odd (1, 3, …).
    for k in 0..24u8 {
        let who = if k % 2 == 0 { "ada" } else { "bob" };
        let e = event(&mut ids, Some(key(k + 1)), who);
        let e = raccordo_core::NewEvent {
            payload: e
                .payload
                .replace('}', &format!(r#","pad":"{}"}}"#, "p".repeat(300))),
            ..e
        };
        log.append(batch(1_000, None, vec![e])).await.unwrap();
    }
    assert!(files(&dir.path().join("log"), "seg").len() > 2);
    let erased = log.erase(erase_canale("ada")).await.unwrap();
    assert_eq!(erased.ids.len(), 12);
    assert_eq!(erased.claims, 12);
    let seen = canali(&log).await;
    assert_eq!(seen.iter().filter(|c| *c == "zzz").count(), 12);
    assert_eq!(seen.iter().filter(|c| *c == "bob").count(), 12);
    assert!(!seen.contains(&"ada".to_string()));
    // Every frame still reads (checksums rewritten), in order.
    assert_eq!(tail_all(&log).await.unwrap(), (1..=24).collect::<Vec<_>>());
    // Ada's claims are gone (her keys are free again), Bob's stay.
    assert!(!is_duplicate(&log, 1, 2_000).await);
    assert!(is_duplicate(&log, 2, 2_000).await);
    // Idempotent: nothing left to erase.
    assert_eq!(
        log.erase(erase_canale("ada")).await.unwrap(),
        Default::default()
    );
    log.close().await;

    // After a restart: still erased, and the sidecars do not bring the claims back.
    let (log, _) = open(&options);
    assert!(!canali(&log).await.contains(&"ada".to_string()));
    assert!(!is_duplicate(&log, 3, 3_000).await);
    assert!(is_duplicate(&log, 4, 3_000).await);
    for file in files(&dir.path().join("log"), "seg") {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(5).any(|w| w == b"\"ada\""),
            "{} still holds the erased value",
            file.display()
        );
    }
    // A rewrite that changes a length is refused and changes nothing.
    let longer: raccordo_core::PayloadRewrite =
        std::sync::Arc::new(|_: &str, p: &str| p.contains("bob").then(|| format!("{p} ")));
    assert!(log.erase(longer).await.is_err());
    assert_eq!(
        canali(&log).await.iter().filter(|c| *c == "bob").count(),
        12
    );
    log.close().await;
}
