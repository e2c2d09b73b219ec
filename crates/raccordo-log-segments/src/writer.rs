//! The writer thread: group commit into the active segment.
//!
//! It takes every append request queued at that moment (waiting for more only when they
//! have been arriving together: [`crate::linger`]), decides each against the in-memory
//! dedup index, encodes each request as one frame, writes the group with one `write` and
//! makes it durable with one `fdatasync`, and only then answers.
//! Nothing else shares the file: no checkpoint copies the data a second time, and nothing
//! written earlier waits to be flushed behind a later commit, so the time to acknowledge
//! does not grow with the store.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use raccordo_core::{
    AppendBatch, AppendOutcome, EventId, ItemOutcome, LogPositions, PayloadRewrite, StoreError,
};
use tokio::sync::{mpsc, oneshot};

use crate::dedup::{DedupIndex, Delivery, ExpiredKeys};
use crate::format::{self, DeliveryRecord, EventRecord, FrameWriter, SEGMENT_HEADER_LEN};
use crate::segment::{self, Segment, Summary};
use crate::{Durability, Shared, erase};

pub struct Job {
    pub batch: AppendBatch,
    pub reply: oneshot::Sender<Answer>,
}

/// The writer's answer to one append, with the request's batch handed back: the batch was
/// allocated on the caller's thread, and freed there its memory goes straight back to that
/// thread's allocator heap instead of being queued across threads for it to collect later.
pub struct Answer {
    pub result: Result<AppendOutcome, StoreError>,
    pub batch: AppendBatch,
}

/// What the writer is asked to do, in order.
pub enum Request {
    Append(Job),
    Erase(EraseJob),
    /// The live dedup claims at `now_ms`, for `raccordo migrate`.
    ExportClaims {
        now_ms: i64,
        reply: oneshot::Sender<crate::ExportedClaims>,
    },
}

/// An erasure planned up to `planned_up_to`, whose events hold `claims`: the writer plans
/// the frames committed since, drops every claim from the index and answers the extra
/// patches with the number of claims it dropped.
pub struct EraseJob {
    pub claims: Vec<(raccordo_core::DedupKey, u128)>,
    pub planned_up_to: i64,
    pub rewrite: PayloadRewrite,
    pub reply: oneshot::Sender<Result<(Vec<erase::Patch>, u64), StoreError>>,
}

/// A segment to seal: its sidecar is written off the commit path.
pub struct Seal {
    pub segment: Arc<Segment>,
    pub summary: Summary,
}

pub struct Writer {
    pub shared: Arc<Shared>,
    pub index: DedupIndex,
    pub active: Arc<Segment>,
    pub active_file: File,
    /// The zero-filled size of the active segment's file, when it was prepared: writes
    /// below it overwrite allocated blocks, so their `fdatasync` commits no metadata (no
    /// file-size change, no journal commit). `None`: the file grows with each write.
    pub active_capacity: Option<u64>,
    /// How far the active prepared segment's pages have been asked into the page cache
    /// ([`Writer::warm_ahead`]).
    pub warmed_to: u64,
    /// The active segment's claims and sparse index, for its sidecar when it is sealed.
    pub active_summary: Summary,
    pub next_seq: i64,
    pub durability: Durability,
    pub segment_bytes: u64,
    pub max_bytes: Option<u64>,
    pub max_group_events: usize,
    pub freeze: File,
    pub sealer: std::sync::mpsc::Sender<Seal>,
    pub committed: tokio::sync::watch::Sender<LogPositions>,
    /// Keys of sealed segments whose claims expired, in chunks, from the maintenance
    /// thread; one chunk is forgotten after each commit (bounded work per commit).
    pub expired: std::sync::mpsc::Receiver<ExpiredKeys>,
    /// Whether to wait for more appends before a commit ([`crate::linger`]).
    pub linger: crate::linger::Linger,
}

/// How far ahead of the write position a prepared segment is read into the page cache.
const WARM_AHEAD: u64 = 4 << 20;

/// The part of a prepared segment of `capacity` bytes to read ahead once the log is written
/// up to `end`, when `warmed_to` was read ahead already: nothing while more than half of
/// [`WARM_AHEAD`] is left before `warmed_to`, else from there to [`WARM_AHEAD`] past `end`.
fn warm_range(warmed_to: u64, end: u64, capacity: u64) -> Option<(u64, u64)> {
    if warmed_to >= capacity || end + WARM_AHEAD / 2 <= warmed_to {
        return None;
    }
    let from = warmed_to.max(end.saturating_sub(WARM_AHEAD / 2));
    Some((from, capacity.min(end + WARM_AHEAD)))
}

/// A commit group slower than this is logged with where its time went.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(50);

/// One request's effect, remembered until the group is durable.
struct Applied {
    outcome: AppendOutcome,
    /// Where its frame sits in the group's buffer, with the frame's first seq and count.
    frame: Option<(usize, i64, u32)>,
    claims: Vec<(raccordo_core::DedupKey, u128, i64)>,
    delivery: Option<(raccordo_core::DedupKey, Delivery)>,
    max_received_at: i64,
}

impl Writer {
    pub fn run(mut self, mut jobs: mpsc::Receiver<Request>) {
        let mut frames = FrameWriter::default();
        while let Some(first) = jobs.blocking_recv() {
            let first = match first {
                Request::Append(job) => job,
                Request::Erase(job) => {
                    self.erase(job);
                    continue;
                }
                Request::ExportClaims { now_ms, reply } => {
                    let _ = reply.send(self.index.export(now_ms));
                    continue;
                }
            };
            let mut events = first.batch.events.len();
            let mut group = vec![first];
            // An erasure (or a claims export) queued behind appends runs right after their
            // commit, in order.
            let mut erasure = None;
            let mut lingered = false;
            while events < self.max_group_events {
                match jobs.try_recv() {
                    Ok(Request::Append(job)) => {
                        events += job.batch.events.len();
                        group.push(job);
                    }
                    Ok(Request::Erase(job)) => {
                        erasure = Some(Ok(job));
                        break;
                    }
                    Ok(Request::ExportClaims { now_ms, reply }) => {
                        erasure = Some(Err((now_ms, reply)));
                        break;
                    }
                    Err(_) => match self.linger.wait_before(group.len()) {
                        // Once per group: after the wait, commit what has come.
                        Some(wait) if !lingered => {
                            std::thread::sleep(wait);
                            lingered = true;
                            metrics::counter!("raccordo_storage_commit_waits_total").increment(1);
                        }
                        _ => break,
                    },
                }
            }
            self.linger.grouped(group.len());
            let started = Instant::now();
            let results = self.commit_group(&group, &mut frames);
            let full = results
                .iter()
                .any(|r| matches!(r, Err(StoreError::Full(_))));
            if full {
                if !self.shared.full.swap(true, Ordering::SeqCst) {
                    tracing::error!(
                        "the event log is full: appends are refused until space is freed"
                    );
                }
            } else if results.iter().any(Result::is_ok)
                && self.shared.full.swap(false, Ordering::SeqCst)
            {
                tracing::info!("the event log takes writes again");
            }
            metrics::histogram!("raccordo_storage_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("raccordo_storage_commit_group_requests")
                .record(group.len() as f64);
            metrics::histogram!("raccordo_storage_commit_group_events").record(events as f64);
            self.shared
                .dedup_keys
                .store(self.index.len(), Ordering::Release);
            for (job, result) in group.into_iter().zip(results) {
                let answer = Answer {
                    result,
                    batch: job.batch,
                };
                let _ = job.reply.send(answer); // the caller may be gone; the data is durable
            }
            if let Ok(expired) = self.expired.try_recv() {
                let now = self.shared.newest_received_at.load(Ordering::Acquire);
                self.index.forget_expired(&expired, now);
                self.shared
                    .dedup_keys
                    .store(self.index.len(), Ordering::Release);
            }
            metrics::gauge!("raccordo_storage_dedup_keys").set(self.index.len() as f64);
            match erasure {
                Some(Ok(job)) => self.erase(job),
                Some(Err((now_ms, reply))) => {
                    let _ = reply.send(self.index.export(now_ms));
                }
                None => {}
            }
        }
        // Queue closed: everything accepted was answered and is on disk.
        if self.durability == Durability::Buffered
            && let Err(e) = self.active_file.sync_data()
        {
            tracing::warn!(error = %e, "final sync of the event log failed");
        }
    }

    fn commit_group(
        &mut self,
        group: &[Job],
        frames: &mut FrameWriter,
    ) -> Vec<Result<AppendOutcome, StoreError>> {
        let fail_all = |error: StoreError| group.iter().map(|_| Err(error.clone())).collect();
        // A backup tool holding the freeze lock exclusively pauses appends here.
        if let Err(e) = self.freeze.lock_shared() {
            return fail_all(StoreError::Backend(format!("freeze lock: {e}")));
        }
        let result = self.commit_group_unfrozen(group, frames);
        let _ = self.freeze.unlock();
        match result {
            Ok(applied) => applied.into_iter().map(|a| Ok(a.outcome)).collect(),
            Err(e) => fail_all(e),
        }
    }

    fn commit_group_unfrozen(
        &mut self,
        group: &[Job],
        frames: &mut FrameWriter,
    ) -> Result<Vec<Applied>, StoreError> {
        let began = Instant::now();
        let mark = self.index.mark();
        frames.clear();
        let mut seq = self.next_seq;
        let applied: Vec<Applied> = group
            .iter()
            .map(|job| {
                let start = frames.len();
                frames.begin(seq);
                let first = seq;
                let mut a = apply(&mut self.index, &job.batch, frames, &mut seq);
                if frames.finish().is_some() {
                    a.frame = Some((start, first, (seq - first) as u32));
                }
                a
            })
            .collect();
        if frames.is_empty() {
            self.index.commit();
            return Ok(applied);
        }
        let bytes = frames.len() as u64;
        if let Some(max) = self.max_bytes
            && self.shared.total_bytes.load(Ordering::Acquire) + bytes > max
        {
            self.index.rollback_to(mark);
            return Err(StoreError::Full(format!(
                "the event log reached its size limit of {max} bytes"
            )));
        }
        let applied_at = Instant::now();
        let has_frames = self.active_summary.len > SEGMENT_HEADER_LEN;
        let full =
            self.active_summary.len + bytes > self.active_capacity.unwrap_or(self.segment_bytes);
        // A growing (unprepared) segment is left as soon as a prepared one is ready.
        let prepared_waits =
            self.active_capacity.is_none() && self.shared.next_ready.load(Ordering::Acquire);
        if has_frames
            && (full || prepared_waits)
            && let Err(e) = self.roll_over(self.next_seq)
        {
            self.index.rollback_to(mark);
            return Err(io_error("starting a new segment", e));
        }
        let at = self.active_summary.len;
        self.warm_ahead(at + bytes);
        let rolled_at = Instant::now();
        let mut wrote_at = rolled_at;
        let written = self
            .active_file
            .write_all_at(frames.bytes(), at)
            .and_then(|()| {
                wrote_at = Instant::now();
                match self.durability {
                    Durability::Fsync => self.active_file.sync_data(),
                    Durability::Buffered => Ok(()),
                }
            });
        let synced_at = Instant::now();
        if self.durability == Durability::Fsync {
            self.linger.synced(synced_at - wrote_at);
        }
        if synced_at - began >= SLOW_COMMIT {
            // Every request of the group waited this long: say where the time went.
            tracing::warn!(
                total_ms = (synced_at - began).as_millis() as u64,
                dedup_ms = (applied_at - began).as_millis() as u64,
                roll_over_ms = (rolled_at - applied_at).as_millis() as u64,
                write_ms = (wrote_at - rolled_at).as_millis() as u64,
                sync_ms = (synced_at - wrote_at).as_millis() as u64,
                requests = group.len(),
                bytes,
                "slow commit"
            );
        }
        if let Err(e) = written {
            // Undo the partial write, so the last acknowledged frame is followed by free
            // space again: zeros in a prepared file, the end of a growing one.
            let _ = match self.active_capacity {
                Some(_) => crate::zero_fill(&self.active_file, at, bytes),
                None => self.active_file.set_len(at),
            };
            self.index.rollback_to(mark);
            return Err(io_error("writing the event log", e));
        }
        self.index.commit();

        let mut sparse = Vec::new();
        let max_received_at = applied.iter().map(|a| a.max_received_at).max().unwrap_or(0);
        // Sparse entries and lengths, frame by frame, from the buffer's frame offsets.
        let offsets: Vec<(usize, i64, u32)> = applied.iter().filter_map(|a| a.frame).collect();
        for (n, (offset, first_seq, events)) in offsets.iter().enumerate() {
            let end = offsets.get(n + 1).map_or(frames.len(), |next| next.0);
            let header = format::FrameHeader {
                body_len: end - offset - format::FRAME_HEADER_LEN,
                first_seq: *first_seq,
                events: *events,
            };
            if let Some(entry) = self.active_summary.note_frame(at + *offset as u64, &header) {
                sparse.push(entry);
            }
        }
        for a in &applied {
            for claim in &a.claims {
                self.active_summary.max_expires_at =
                    self.active_summary.max_expires_at.max(claim.2);
                self.active_summary.claims.push(*claim);
            }
            if let Some((key, d)) = &a.delivery {
                self.active_summary.max_expires_at =
                    self.active_summary.max_expires_at.max(d.expires_at);
                self.active_summary.deliveries.push((*key, d.clone()));
            }
        }
        self.active_summary.max_received_at =
            self.active_summary.max_received_at.max(max_received_at);
        self.next_seq = seq;
        self.active.publish(
            self.active_summary.len,
            self.next_seq - 1,
            max_received_at,
            &sparse,
        );
        self.shared.total_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.shared
            .newest_received_at
            .fetch_max(max_received_at, Ordering::AcqRel);
        // Announce before answering, so a client that reads right after its 202 finds the
        // live views already woken.
        let head = self.next_seq - 1;
        self.committed.send_if_modified(|h| {
            let newer = head > h.get(0);
            if newer {
                *h = LogPositions::single(head);
            }
            newer
        });
        Ok(applied)
    }

    /// The writer's part of an erasure, with appends paused for as little as possible: the
    /// frames committed since the plan are planned here, and the erased events' claims
    /// leave the index — then the erasure thread patches the files while appends go on.
    fn erase(&mut self, job: EraseJob) {
        let result = self.erase_claims(job.claims, job.planned_up_to, &job.rewrite);
        self.shared
            .dedup_keys
            .store(self.index.len(), Ordering::Release);
        let _ = job.reply.send(result);
    }

    fn erase_claims(
        &mut self,
        mut claims: Vec<(raccordo_core::DedupKey, u128)>,
        planned_up_to: i64,
        rewrite: &PayloadRewrite,
    ) -> Result<(Vec<erase::Patch>, u64), StoreError> {
        let head = self.next_seq - 1;
        let tail = if head > planned_up_to {
            erase::plan(&self.shared, planned_up_to, head, rewrite)?
        } else {
            Vec::new()
        };
        claims.extend(tail.iter().flat_map(|p| p.claims.iter().copied()));
        let erased: std::collections::HashSet<u128> = claims.iter().map(|(_, e)| *e).collect();
        let mut dropped = 0;
        for (key, event) in &claims {
            dropped += u64::from(self.index.drop_claim(key, *event));
        }
        self.active_summary
            .claims
            .retain(|(_, event, _)| !erased.contains(event));
        Ok((tail, dropped))
    }

    /// Asks the kernel to read the prepared segment's zeros ahead of the write position into
    /// the page cache, in the background. A commit that writes part of a page the cache does
    /// not hold must first read that page from the disk, inside the commit: after a restart,
    /// or once the prepared file's pages were evicted, that was a 4 KiB read before many a
    /// commit's `fdatasync` (`perf record -e block:block_rq_issue`: up to 1 075 reads/s from
    /// the writer at 13 500 events/s). Once per `WARM_AHEAD / 2` of log; a no-op on cached
    /// pages.
    fn warm_ahead(&mut self, end: u64) {
        let Some(capacity) = self.active_capacity else {
            return;
        };
        let Some((from, to)) = warm_range(self.warmed_to, end, capacity) else {
            return;
        };
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: posix_fadvise only reads its arguments; the descriptor is open for as
            // long as `self.active_file` lives, which outlives the call.
            let advised = unsafe {
                libc::posix_fadvise(
                    self.active_file.as_raw_fd(),
                    from as libc::off_t,
                    (to - from) as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
            if advised != 0 {
                tracing::debug!(errno = advised, "posix_fadvise(WILLNEED) on the event log");
            }
        }
        self.warmed_to = to;
    }

    /// Seals the active segment (its sidecar is written in the background) and starts a
    /// new one whose first event will be `first_seq`.
    fn roll_over(&mut self, first_seq: i64) -> io::Result<()> {
        let path = segment::segment_path(&self.shared.dir, first_seq);
        let ready = self.shared.dir.join(segment::NEXT_READY);
        let (file, capacity) = if self.shared.next_ready.swap(false, Ordering::AcqRel) {
            // The prepared file: zero-filled and synced in the background.
            std::fs::rename(&ready, &path)?;
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let capacity = file.metadata()?.len();
            (file, Some(capacity))
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            (file, None)
        };
        file.write_all_at(&format::segment_header(first_seq), 0)?;
        file.sync_data()?;
        segment::sync_dir(&self.shared.dir)?;
        let summary = Summary::empty(first_seq);
        let segment = Segment::open(path, first_seq, &summary)?;
        self.shared
            .segments
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(first_seq, segment.clone());
        self.shared
            .total_bytes
            .fetch_add(SEGMENT_HEADER_LEN, Ordering::AcqRel);
        let sealed = std::mem::replace(&mut self.active, segment);
        let sealed_summary = std::mem::replace(&mut self.active_summary, summary);
        self.active_file = file;
        self.active_capacity = capacity.filter(|c| *c > SEGMENT_HEADER_LEN);
        self.warmed_to = 0;
        metrics::counter!("raccordo_storage_segments_sealed_total").increment(1);
        tracing::debug!(
            segment = sealed.first_seq,
            next = first_seq,
            "segment sealed"
        );
        let _ = self.sealer.send(Seal {
            segment: sealed,
            summary: sealed_summary,
        });
        Ok(())
    }
}

fn io_error(what: &str, e: io::Error) -> StoreError {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
        StoreError::Full(format!("{what}: the disk is full"))
    } else {
        StoreError::Backend(format!("{what}: {e}"))
    }
}

/// Decides one request against the dedup index and encodes its records into the open frame.
fn apply(
    index: &mut DedupIndex,
    batch: &AppendBatch,
    frames: &mut FrameWriter,
    seq: &mut i64,
) -> Applied {
    let now = batch.received_at_ms;
    let mut applied = Applied {
        outcome: AppendOutcome::DeliveryConflict,
        frame: None,
        claims: Vec::new(),
        delivery: None,
        max_received_at: now,
    };
    if let Some(claim) = &batch.delivery
        && let Some(seen) = index.delivery(&claim.key, now)
    {
        if seen.body_hash == claim.body_hash {
            let items = seen
                .events
                .iter()
                .map(|id| ItemOutcome::Duplicate(EventId::from_u128(*id)))
                .collect();
            applied.outcome = AppendOutcome::DeliveryReplayed(items);
        }
        return applied;
    }
    let expires_at = now.saturating_add(batch.business_key_retention_ms);
    let mut outcomes = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        let id = event.id.as_u128();
        let mut record = EventRecord {
            seq: *seq,
            id,
            received_at_ms: now,
            event_time_ms: event.event_time_ms,
            duplicate_of: None,
            claim: None,
            source: event.source.as_str(),
            payload: &event.payload,
        };
        match event.business_key {
            Some(key) => match index.holder(&key, now) {
                Some(original) => {
                    record.duplicate_of = Some(original.as_u128());
                    outcomes.push(ItemOutcome::Duplicate(original));
                }
                None => {
                    index.claim(key, id, expires_at);
                    record.claim = Some((key, expires_at));
                    applied.claims.push((key, id, expires_at));
                    outcomes.push(ItemOutcome::Accepted(event.id));
                }
            },
            None => outcomes.push(ItemOutcome::Accepted(event.id)),
        }
        frames.event(&record);
        *seq += 1;
    }
    if let Some(claim) = &batch.delivery {
        let events: Vec<u128> = outcomes.iter().map(|o| o.id().as_u128()).collect();
        let delivery = Delivery {
            body_hash: claim.body_hash,
            events: events.clone(),
            expires_at: now.saturating_add(claim.retention_ms),
        };
        frames.delivery(&DeliveryRecord {
            key: claim.key,
            body_hash: claim.body_hash,
            expires_at: delivery.expires_at,
            events,
        });
        index.record_delivery(claim.key, &delivery);
        applied.delivery = Some((claim.key, delivery));
    }
    applied.outcome = AppendOutcome::Appended(outcomes);
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_first_commit_reads_ahead_from_where_it_writes() {
        assert_eq!(warm_range(0, 16, 64 * MIB), Some((0, 16 + 4 * MIB)));
        // A restart in the middle of a segment starts at the write position, not at 0.
        assert_eq!(
            warm_range(0, 30 * MIB, 64 * MIB),
            Some((28 * MIB, 34 * MIB))
        );
    }

    #[test]
    fn it_reads_again_only_past_half_the_window() {
        let warmed = 4 * MIB + 100;
        assert_eq!(warm_range(warmed, 2 * MIB + 100, 64 * MIB), None);
        assert_eq!(
            warm_range(warmed, 2 * MIB + 101, 64 * MIB),
            Some((warmed, 6 * MIB + 101))
        );
    }

    #[test]
    fn it_never_reads_past_the_file_and_stops_at_its_end() {
        assert_eq!(
            warm_range(62 * MIB, 61 * MIB, 64 * MIB),
            Some((62 * MIB, 64 * MIB))
        );
        assert_eq!(warm_range(64 * MIB, 63 * MIB, 64 * MIB), None);
    }

    #[test]
    fn every_byte_up_to_the_write_position_is_read_ahead_once() {
        // Commits of 1–3 KiB through a 32 MiB segment: the ranges advised tile the file.
        let capacity = 32 * MIB;
        let (mut warmed, mut end, mut covered) = (0, 16, 0);
        let mut step = 0u64;
        while end < capacity {
            if let Some((from, to)) = warm_range(warmed, end, capacity) {
                assert!(from >= covered, "{from} read twice (covered to {covered})");
                assert!(to > end && to <= capacity);
                covered = to;
                warmed = to;
            }
            assert!(
                warmed > end || warmed == capacity,
                "{end} written before read ahead"
            );
            step = (step + 1) % 3;
            end = (end + 1024 * (1 + step)).min(capacity);
        }
        assert_eq!(covered, capacity);
    }
}
