//! Erasing a data subject's events in place (GDPR article 17).
//!
//! An erasure rewrites the frames holding the subject's events: each payload is replaced by
//! one of the same byte length (see `raccordo_core::privacy`) and the business-key claims
//! of those events are zeroed, so the frame keeps its length and only its checksum changes.
//! Nothing moves: offsets, sparse indexes and readers' positions stay valid.
//!
//! Crash safety is a redo journal: the new frames are first written durably to
//! `erase.journal`, then over the old ones, then the journal is removed. Opening the log
//! with a journal present applies it again (patches are idempotent), so a `kill -9` at any
//! point leaves either the old frames (journal never complete: the erasure was not
//! acknowledged) or the new ones. Sealed segments whose claims changed get their sidecar
//! rewritten (or, in recovery, removed, so the next open rebuilds it from the frames).
//!
//! Readers never see a frame half-patched: patching holds the segment's `patching` lock
//! exclusively, and every read of a segment file holds it shared (a frame is always parsed
//! from one read).

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raccordo_core::{DedupKey, EventId, PayloadRewrite, StoreError};

use crate::Shared;
use crate::format::{self, EventRecord, FrameWriter, Record};
use crate::segment::{self, Step};

/// The journal's name in the log directory.
pub const JOURNAL: &str = "erase.journal";
const JOURNAL_MAGIC: [u8; 8] = *b"RCERASE1";

/// One frame to overwrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// The segment (its first sequence number) and the frame's byte offset in it.
    pub segment: i64,
    pub offset: u64,
    /// The whole new frame, header included: as long as the old one.
    pub frame: Vec<u8>,
    /// The events rewritten in it.
    pub events: Vec<u128>,
    /// The claims zeroed in it (key, event).
    pub claims: Vec<(DedupKey, u128)>,
}

/// A claim that no longer claims anything: no key, expired since the epoch.
const DEAD_CLAIM: (DedupKey, i64) = (DedupKey([0; 16]), 0);

/// One frame rewritten: its new bytes, the events rewritten and the claims zeroed.
struct PatchedFrame {
    frame: Vec<u8>,
    events: Vec<u128>,
    claims: Vec<(DedupKey, u128)>,
}

/// The new frame for one frame's records, if `rewrite` picks any of its events.
fn patch_frame(
    first_seq: i64,
    body: &[u8],
    rewrite: &PayloadRewrite,
) -> Result<Option<PatchedFrame>, String> {
    let mut new_payloads = Vec::new();
    for record in format::records(body) {
        if let Record::Event(e) = record.map_err(|e| e.0.to_string())?
            && let Some(payload) = rewrite(e.source, e.payload)
        {
            if payload.len() != e.payload.len() {
                return Err(format!(
                    "a rewrite changed the length of event {}'s payload",
                    e.seq
                ));
            }
            new_payloads.push((e.id, payload));
        }
    }
    if new_payloads.is_empty() {
        return Ok(None);
    }
    let erased: HashSet<u128> = new_payloads.iter().map(|(id, _)| *id).collect();
    let mut frames = FrameWriter::default();
    frames.begin(first_seq);
    let mut claims = Vec::new();
    for record in format::records(body) {
        match record.map_err(|e| e.0.to_string())? {
            Record::Event(e) => {
                let replaced = new_payloads.iter().find(|(id, _)| *id == e.id);
                let mut out = EventRecord {
                    payload: replaced.map_or(e.payload, |(_, p)| p.as_str()),
                    ..e.clone()
                };
                if replaced.is_some()
                    && let Some((key, _)) = e.claim
                {
                    if key != DEAD_CLAIM.0 {
                        claims.push((key, e.id));
                    }
                    out.claim = Some(DEAD_CLAIM);
                }
                frames.event(&out);
            }
            Record::Delivery(d) => frames.delivery(&d),
            Record::Claim {
                key,
                event,
                expires_at,
            } => {
                if erased.contains(&event) {
                    if key != DEAD_CLAIM.0 {
                        claims.push((key, event));
                    }
                    frames.claim(DEAD_CLAIM.0, event, DEAD_CLAIM.1);
                } else {
                    frames.claim(key, event, expires_at);
                }
            }
        }
    }
    frames.finish();
    Ok(Some(PatchedFrame {
        frame: frames.bytes().to_vec(),
        events: new_payloads.into_iter().map(|(id, _)| id).collect(),
        claims,
    }))
}

/// Finds the frames to patch among the events after `after` up to `head`. Runs on any
/// thread: it only reads committed frames.
pub fn plan(
    shared: &Shared,
    after: i64,
    head: i64,
    rewrite: &PayloadRewrite,
) -> Result<Vec<Patch>, StoreError> {
    let mut patches = Vec::new();
    for seg in shared.segments() {
        if seg.last_seq() <= after {
            continue;
        }
        let mut cursor = seg.cursor(seg.offset_for(after + 1));
        loop {
            let step = cursor
                .next_frame()
                .map_err(|e| StoreError::Backend(format!("reading {}: {e}", seg.path.display())))?;
            let (offset, header, body) = match step {
                Step::End => break,
                // Damage is reported by reads; an erasure patches what it can read.
                Step::Torn { .. } | Step::Bad { .. } => break,
                Step::Frame {
                    offset,
                    header,
                    body,
                } => (offset, header, body),
            };
            if header.events == 0 || header.last_seq() <= after {
                continue;
            }
            if header.first_seq > head {
                break;
            }
            let patched = patch_frame(header.first_seq, body, rewrite).map_err(|e| {
                StoreError::Backend(format!(
                    "erasing in {} at byte {offset}: {e}",
                    seg.path.display()
                ))
            })?;
            if let Some(PatchedFrame {
                frame,
                events,
                claims,
            }) = patched
            {
                if frame.len() != header.total_len() {
                    return Err(StoreError::Backend(format!(
                        "erasing in {} at byte {offset}: the frame would change length",
                        seg.path.display()
                    )));
                }
                patches.push(Patch {
                    segment: seg.first_seq,
                    offset,
                    frame,
                    events,
                    claims,
                });
            }
        }
    }
    Ok(patches)
}

pub fn encode_journal(patches: &[Patch]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&JOURNAL_MAGIC);
    b.extend_from_slice(&(patches.len() as u32).to_le_bytes());
    for p in patches {
        b.extend_from_slice(&p.segment.to_le_bytes());
        b.extend_from_slice(&p.offset.to_le_bytes());
        b.extend_from_slice(&(p.frame.len() as u32).to_le_bytes());
        b.extend_from_slice(&p.frame);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The patches of a complete journal; `None` for a torn or foreign one (never acknowledged).
pub fn decode_journal(b: &[u8]) -> Option<Vec<(i64, u64, Vec<u8>)>> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if crc32c::crc32c(body).to_le_bytes() != crc || !body.starts_with(&JOURNAL_MAGIC) {
        return None;
    }
    let mut rest = &body[JOURNAL_MAGIC.len()..];
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..count {
        let segment = i64::from_le_bytes(take(8)?.try_into().ok()?);
        let offset = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        out.push((segment, offset, take(len)?.to_vec()));
    }
    Some(out)
}

/// Overwrites the frames and makes them durable. A segment removed meanwhile (retention)
/// is skipped: its events are gone anyway.
/// With `shared` (a running log), each segment is patched under its `patching` lock.
pub fn apply(
    dir: &Path,
    patches: &[(i64, u64, Vec<u8>)],
    shared: Option<&Shared>,
) -> io::Result<Vec<i64>> {
    let mut touched: Vec<i64> = patches.iter().map(|p| p.0).collect();
    touched.sort_unstable();
    touched.dedup();
    let mut present = Vec::new();
    for first_seq in touched {
        let open = match shared {
            Some(shared) => match shared
                .segments
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&first_seq)
            {
                Some(seg) => Some(seg.clone()),
                None => continue, // removed by retention
            },
            None => None,
        };
        let _patching = open
            .as_ref()
            .map(|seg| seg.patching.write().unwrap_or_else(|p| p.into_inner()));
        let path = segment::segment_path(dir, first_seq);
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for (_, offset, frame) in patches.iter().filter(|p| p.0 == first_seq) {
            file.write_all_at(frame, *offset)?;
        }
        file.sync_data()?;
        present.push(first_seq);
    }
    Ok(present)
}

pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join(JOURNAL)
}

/// At open, before the segments are read: finishes an erasure a crash interrupted. The
/// sidecars of the segments it touched are removed, so opening rebuilds them from the
/// patched frames (their zeroed claims included). Returns how many frames were patched.
pub fn recover(dir: &Path) -> io::Result<usize> {
    let path = journal_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut patched = 0;
    if let Some(patches) = decode_journal(&bytes) {
        for first_seq in apply(dir, &patches, None)? {
            match std::fs::remove_file(segment::sidecar_path(dir, first_seq)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        patched = patches.len();
        tracing::info!(frames = patched, "an interrupted erasure was completed");
    }
    std::fs::remove_file(&path)?;
    segment::sync_dir(dir)?;
    Ok(patched)
}

/// Rewrites a sealed segment's sidecar without the given claims.
pub fn drop_sidecar_claims(dir: &Path, first_seq: i64, erased: &HashSet<u128>) -> io::Result<()> {
    let path = segment::sidecar_path(dir, first_seq);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        // Not written yet: the maintenance thread filters it when it writes it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match segment::decode_sidecar(&bytes) {
        Some((seq, mut summary)) if seq == first_seq => {
            let before = summary.claims.len();
            summary
                .claims
                .retain(|(_, event, _)| !erased.contains(event));
            if summary.claims.len() != before {
                segment::write_durably(&path, &segment::encode_sidecar(first_seq, &summary))?;
            }
            Ok(())
        }
        // Unreadable: removed, so the next open rebuilds it from the frames.
        _ => std::fs::remove_file(&path),
    }
}

/// The file side of an erasure, off the writer thread (appends go on meanwhile): the new
/// frames are journalled durably, written over the old ones and synced, the sealed
/// segments' sidecars lose the erased claims, and the journal goes. Erasures run one at a
/// time (the caller holds a lock): there is one journal.
pub fn finish(shared: &Shared, patches: &[Patch]) -> io::Result<()> {
    if patches.is_empty() {
        return Ok(());
    }
    let dir = shared.dir.clone();
    // A backup holding the freeze lock exclusively sees no patch mid-copy either.
    let freeze = std::fs::File::open(dir.join("freeze.lock"))?;
    freeze.lock_shared()?;
    let journal = journal_path(&dir);
    segment::write_durably(&journal, &encode_journal(patches))?;
    let frames: Vec<(i64, u64, Vec<u8>)> = patches
        .iter()
        .map(|p| (p.segment, p.offset, p.frame.clone()))
        .collect();
    apply(&dir, &frames, Some(shared))?;
    let erased: HashSet<u128> = patches
        .iter()
        .flat_map(|p| p.events.iter().copied())
        .collect();
    {
        // Sidecars: the maintenance thread, holding the same lock, filters a sidecar it has
        // yet to write; the ones written already are rewritten here.
        let mut dropped = shared.erased.lock().unwrap_or_else(|p| p.into_inner());
        dropped.extend(erased.iter().copied());
        let newest = shared.segments().last().map(|s| s.first_seq);
        let mut sealed: Vec<i64> = patches
            .iter()
            .map(|p| p.segment)
            .filter(|s| Some(*s) != newest)
            .collect();
        sealed.sort_unstable();
        sealed.dedup();
        for first_seq in sealed {
            drop_sidecar_claims(&dir, first_seq, &erased)?;
        }
    }
    std::fs::remove_file(&journal)?;
    segment::sync_dir(&dir)
}

/// The ids of erased events, for the report.
pub fn event_ids(patches: &[Patch]) -> Vec<EventId> {
    patches
        .iter()
        .flat_map(|p| p.events.iter().map(|id| EventId::from_u128(*id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(payloads: &[&str], claim: bool) -> (Vec<u8>, FrameWriter) {
        let mut w = FrameWriter::default();
        w.begin(10);
        for (n, p) in payloads.iter().enumerate() {
            w.event(&EventRecord {
                seq: 10 + n as i64,
                id: n as u128 + 1,
                received_at_ms: 5,
                event_time_ms: 4,
                duplicate_of: None,
                claim: claim.then_some((DedupKey([n as u8 + 1; 16]), 99)),
                source: "s",
                payload: p,
            });
        }
        w.claim(DedupKey([42; 16]), 1, 99);
        w.finish();
        (w.bytes()[format::FRAME_HEADER_LEN..].to_vec(), w)
    }

    #[test]
    fn only_picked_events_change_and_their_claims_die() {
        let (body, original) = frame(&[r#"{"c":"A"}"#, r#"{"c":"B"}"#], true);
        let rewrite: PayloadRewrite =
            Arc::new(|_, p| (p == r#"{"c":"A"}"#).then(|| r#"{"c":"z"}"#.to_string()));
        let PatchedFrame {
            frame: new,
            events,
            claims,
        } = patch_frame(10, &body, &rewrite).unwrap().unwrap();
        assert_eq!(new.len(), original.len());
        assert_eq!(events, vec![1]);
        assert_eq!(
            claims,
            vec![(DedupKey([1; 16]), 1), (DedupKey([42; 16]), 1)],
            "its own claim and a carried-over claim of the same event"
        );
        let format::Parsed::Frame {
            header,
            body: new_body,
        } = format::parse_frame(&new)
        else {
            panic!("the patched frame has a valid checksum");
        };
        assert_eq!(header.events, 2);
        let records: Vec<_> = format::records(new_body).map(Result::unwrap).collect();
        let Record::Event(a) = &records[0] else {
            panic!()
        };
        assert_eq!((a.payload, a.claim), (r#"{"c":"z"}"#, Some(DEAD_CLAIM)));
        let Record::Event(b) = &records[1] else {
            panic!()
        };
        assert_eq!(
            (b.payload, b.claim),
            (r#"{"c":"B"}"#, Some((DedupKey([2; 16]), 99)))
        );
        // Nothing picked: no patch; a length change: refused.
        let none: PayloadRewrite = Arc::new(|_, _| None);
        assert!(patch_frame(10, &body, &none).unwrap().is_none());
        let longer: PayloadRewrite = Arc::new(|_, p| Some(format!("{p} ")));
        assert!(patch_frame(10, &body, &longer).is_err());
    }

    /// `kill -9` right after the journal was made durable (before any frame was patched),
    /// and with a journal cut short (the erasure was never acknowledged).
    #[tokio::test]
    async fn a_journal_left_by_a_crash_is_applied_at_open_and_a_torn_one_ignored() {
        use raccordo_core::{AppendBatch, EventLog, EventQuery, NewEvent, SourceName};
        let dir = tempfile::tempdir().unwrap();
        let mut options = crate::SegmentLogOptions::new(dir.path().join("log"));
        options.segment_bytes = 600;
        let open = || crate::SegmentLog::open(options.clone()).unwrap().0;
        let log = open();
        let mut ids = ulid::Generator::new();
        for n in 0..8 {
            let who = if n % 2 == 0 { "ada" } else { "bob" };
            log.append(AppendBatch {
                received_at_ms: 1_000,
                delivery: None,
                business_key_retention_ms: 3_600_000,
                events: vec![NewEvent {
                    id: raccordo_core::EventId::generate(&mut ids, 1_000),
                    source: SourceName::new("s").unwrap(),
                    event_time_ms: 1,
                    payload: format!(r#"{{"who":"{who}","n":{n},"pad":"{}"}}"#, "p".repeat(120)),
                    business_key: Some(DedupKey([n; 16])),
                }],
            })
            .await
            .unwrap();
        }
        let ada: PayloadRewrite = Arc::new(|_, p| {
            p.contains("\"ada\"")
                .then(|| p.replace("\"ada\"", "\"xyz\""))
        });
        let patches = plan(&log.shared, 0, 8, &ada).unwrap();
        assert_eq!(event_ids(&patches).len(), 4);
        let journal = encode_journal(&patches);
        log.close().await;
        let log_dir = dir.path().join("log");
        let whos = |log: crate::SegmentLog| async move {
            let all: raccordo_core::EventSelector = Arc::new(|_, _| true);
            let found = log.find(all).await.unwrap();
            log.close().await;
            found
                .into_iter()
                .map(|e| e.payload["who"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        };

        // A torn journal: nothing changes, and it is removed.
        std::fs::write(journal_path(&log_dir), &journal[..journal.len() - 3]).unwrap();
        assert_eq!(whos(open()).await.iter().filter(|w| *w == "ada").count(), 4);
        assert!(!journal_path(&log_dir).exists());

        // A complete journal: applied, sidecars rebuilt without the zeroed claims.
        std::fs::write(journal_path(&log_dir), &journal).unwrap();
        let log = open();
        assert!(!journal_path(&log_dir).exists());
        let mut ids = ulid::Generator::new();
        let again = |k: u8, ids: &mut ulid::Generator| AppendBatch {
            received_at_ms: 2_000,
            delivery: None,
            business_key_retention_ms: 3_600_000,
            events: vec![NewEvent {
                id: raccordo_core::EventId::generate(ids, 2_000),
                source: SourceName::new("s").unwrap(),
                event_time_ms: 1,
                payload: "{}".into(),
                business_key: Some(DedupKey([k; 16])),
            }],
        };
        let first = log.append(again(0, &mut ids)).await.unwrap();
        let second = log.append(again(1, &mut ids)).await.unwrap();
        assert!(
            matches!(&first, raccordo_core::AppendOutcome::Appended(i) if !i[0].is_duplicate()),
            "an erased event's key is free: {first:?}"
        );
        assert!(
            matches!(&second, raccordo_core::AppendOutcome::Appended(i) if i[0].is_duplicate()),
            "another's stays claimed: {second:?}"
        );
        let seen = whos(log).await;
        assert_eq!(seen.iter().filter(|w| *w == "xyz").count(), 4);
        assert!(!seen.contains(&"ada".to_string()));
    }

    #[test]
    fn journals_round_trip_and_torn_ones_are_ignored() {
        let patches = vec![Patch {
            segment: 1,
            offset: 16,
            frame: vec![1, 2, 3],
            events: vec![7],
            claims: vec![],
        }];
        let bytes = encode_journal(&patches);
        assert_eq!(decode_journal(&bytes), Some(vec![(1, 16, vec![1, 2, 3])]));
        for cut in 0..bytes.len() {
            assert_eq!(decode_journal(&bytes[..cut]), None);
        }
        let mut flipped = bytes.clone();
        flipped[12] ^= 1;
        assert_eq!(decode_journal(&flipped), None);
    }
}
