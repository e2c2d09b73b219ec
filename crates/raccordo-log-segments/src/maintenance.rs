//! Background work off the commit path: sidecars of sealed segments, and retention.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::dedup::ExpiredKeys;
use crate::retention::{self, RetentionPolicy, SegmentFacts};
use crate::segment;
use crate::writer::Seal;
use crate::{Durability, Shared};

pub struct Maintenance {
    pub shared: Arc<Shared>,
    pub durability: Durability,
    pub retention: RetentionPolicy,
    pub segment_bytes: u64,
    /// Sidecars kept after retention removed their segment, for their live claims:
    /// (first seq, latest claim expiry).
    pub sidecars_only: Vec<(i64, i64)>,
    /// Latest claim expiry of each sealed segment, to know whether its sidecar must stay
    /// after the segment is removed.
    pub expiries: HashMap<i64, i64>,
    /// Segments (or kept sidecars) whose claims sit in the writer's index, with their latest
    /// expiry: once that passes, their keys go to the writer to be forgotten.
    pub loaded_claims: BTreeMap<i64, i64>,
    pub expired: std::sync::mpsc::Sender<ExpiredKeys>,
}

/// Keys handed to the writer at a time (it forgets one chunk per commit).
const EXPIRED_CHUNK: usize = 10_000;

impl Maintenance {
    /// Runs until every sender of seals is gone (the log closed).
    pub fn run(mut self, seals: std::sync::mpsc::Receiver<Seal>, every: Duration) {
        lower_priority_of_this_thread();
        loop {
            if let Err(e) = self.prepare_next_segment() {
                tracing::warn!(error = %e, "preparing the next segment failed; appends extend the file instead");
            }
            let mut next = match seals.recv_timeout(every) {
                Ok(seal) => Some(seal),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            while let Some(seal) = next {
                let began = std::time::Instant::now();
                match self.write_sidecar(&seal) {
                    // When the background writes ran, to lay beside a benchmark's slow seconds.
                    Ok(()) => tracing::debug!(
                        segment = seal.segment.first_seq,
                        ms = began.elapsed().as_millis() as u64,
                        "sidecar written"
                    ),
                    // Not fatal: the next start reads the segment whole instead.
                    Err(e) => {
                        tracing::warn!(segment = seal.segment.first_seq, error = %e, "writing a segment's sidecar failed")
                    }
                }
                self.expiries
                    .insert(seal.segment.first_seq, seal.summary.max_expires_at);
                self.loaded_claims
                    .insert(seal.segment.first_seq, seal.summary.max_expires_at);
                next = seals.try_recv().ok();
            }
            self.hand_over_expired_claims();
            if let Err(e) = self.apply_retention() {
                tracing::warn!(error = %e, "retention failed; it retries on its next pass");
            }
        }
    }

    /// Sends the keys of every segment whose claims have all expired to the writer.
    fn hand_over_expired_claims(&mut self) {
        let newest = self.shared.newest_received_at.load(Ordering::Acquire);
        let due: Vec<i64> = self
            .loaded_claims
            .iter()
            .filter(|(_, expiry)| **expiry <= newest)
            .map(|(seq, _)| *seq)
            .collect();
        for first_seq in due {
            self.loaded_claims.remove(&first_seq);
            let path = segment::sidecar_path(&self.shared.dir, first_seq);
            let Some((_, summary)) = std::fs::read(&path)
                .ok()
                .as_deref()
                .and_then(segment::decode_sidecar)
            else {
                continue;
            };
            let claims: Vec<_> = summary.claims.iter().map(|c| c.0).collect();
            let deliveries: Vec<_> = summary.deliveries.iter().map(|d| d.0).collect();
            for chunk in claims.chunks(EXPIRED_CHUNK) {
                let keys = ExpiredKeys {
                    claims: chunk.to_vec(),
                    deliveries: Vec::new(),
                };
                if self.expired.send(keys).is_err() {
                    return;
                }
            }
            for chunk in deliveries.chunks(EXPIRED_CHUNK) {
                let keys = ExpiredKeys {
                    claims: Vec::new(),
                    deliveries: chunk.to_vec(),
                };
                if self.expired.send(keys).is_err() {
                    return;
                }
            }
        }
    }

    /// Keeps one zero-filled, synced segment file ready for the writer's next roll-over,
    /// so that appends overwrite allocated blocks instead of growing the file: the
    /// `fdatasync` of each commit then writes no metadata and waits for no journal commit.
    /// Small logs get small files (from 4 MiB, growing with the log up to `segment_bytes`).
    fn prepare_next_segment(&self) -> std::io::Result<()> {
        if self.shared.next_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let size = self
            .segment_bytes
            .min(self.shared.total_bytes.load(Ordering::Acquire).max(4 << 20));
        let began = std::time::Instant::now();
        let tmp = self.shared.dir.join(segment::NEXT_TMP);
        let file = std::fs::File::create(&tmp)?;
        // In steps, each synced and paced: the writeback stays small and never queues a
        // large flush in front of the writer's commits.
        const STEP: u64 = crate::BACKGROUND_WRITE_STEP as u64;
        let mut pacer = self.pacer();
        let mut at = 0;
        while at < size {
            let n = STEP.min(size - at);
            pacer.before_write(n);
            crate::zero_fill(&file, at, n)?;
            file.sync_data()?;
            at += n;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, self.shared.dir.join(segment::NEXT_READY))?;
        segment::sync_dir(&self.shared.dir)?;
        self.shared.next_ready.store(true, Ordering::Release);
        metrics::counter!("raccordo_storage_segments_prepared_total").increment(1);
        tracing::debug!(
            bytes = size,
            ms = began.elapsed().as_millis() as u64,
            "next segment prepared"
        );
        Ok(())
    }

    fn pacer(&self) -> crate::pace::Pacer<'_> {
        crate::pace::Pacer::new(&self.shared.total_bytes, &self.shared.closing)
    }

    fn write_sidecar(&self, seal: &Seal) -> std::io::Result<()> {
        if self.durability == Durability::Buffered {
            std::fs::File::open(&seal.segment.path)?.sync_data()?;
        }
        // Claims of events erased since the segment was sealed are left out; the lock keeps
        // an erasure from rewriting this sidecar between the check and the write.
        let erased = self.shared.erased.lock().unwrap_or_else(|p| p.into_inner());
        let summary = if erased.is_empty() {
            std::borrow::Cow::Borrowed(&seal.summary)
        } else {
            let mut summary = seal.summary.clone();
            summary
                .claims
                .retain(|(_, event, _)| !erased.contains(event));
            std::borrow::Cow::Owned(summary)
        };
        let mut pacer = self.pacer();
        segment::write_durably_in_steps(
            &segment::sidecar_path(&self.shared.dir, seal.segment.first_seq),
            &segment::encode_sidecar(seal.segment.first_seq, &summary),
            &mut |n| pacer.before_write(n),
        )
    }

    fn apply_retention(&mut self) -> std::io::Result<()> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let newest = self.shared.newest_received_at.load(Ordering::Acquire);
        let segments = self.shared.segments();
        let facts: Vec<SegmentFacts> = segments
            .iter()
            .map(|s| SegmentFacts {
                first_seq: s.first_seq,
                last_seq: s.last_seq(),
                bytes: s.len(),
                max_received_at: s.max_received_at(),
            })
            .collect();
        // Only segments whose sidecar is written (it keeps their claims) may go.
        let sealed = segments
            .iter()
            .take_while(|s| self.expiries.contains_key(&s.first_seq))
            .count();
        let remove = retention::segments_to_remove(&facts, now_ms, &self.retention).min(sealed);
        for (segment, facts) in segments.iter().zip(&facts).take(remove) {
            self.shared
                .segments
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&segment.first_seq);
            // Readers holding the segment keep their open file; the space is freed when
            // the last one lets go.
            std::fs::remove_file(&segment.path)?;
            self.shared
                .total_bytes
                .fetch_sub(facts.bytes, Ordering::AcqRel);
            let events = (facts.last_seq - facts.first_seq + 1).max(0) as u64;
            metrics::counter!("raccordo_storage_retention_removed_events_total").increment(events);
            metrics::counter!("raccordo_storage_retention_removed_bytes_total")
                .increment(facts.bytes);
            metrics::counter!("raccordo_storage_retention_removed_segments_total").increment(1);
            tracing::info!(
                first_seq = facts.first_seq,
                last_seq = facts.last_seq,
                events,
                bytes = facts.bytes,
                "retention removed a segment"
            );
            let expiry = self.expiries.remove(&segment.first_seq).unwrap_or(i64::MAX);
            self.sidecars_only.push((segment.first_seq, expiry));
        }
        // Sidecars whose claims have all expired go too.
        let mut kept = Vec::with_capacity(self.sidecars_only.len());
        for (first_seq, expiry) in std::mem::take(&mut self.sidecars_only) {
            // Its keys go to the writer first (hand_over_expired_claims reads the file).
            if expiry <= newest && !self.loaded_claims.contains_key(&first_seq) {
                match std::fs::remove_file(segment::sidecar_path(&self.shared.dir, first_seq)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            } else {
                kept.push((first_seq, expiry));
            }
        }
        self.sidecars_only = kept;
        Ok(())
    }
}

/// Background work should yield the CPU to request handling and the writer (Linux:
/// per-thread nice).
pub(crate) fn lower_priority_of_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority only reads its arguments.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0 {
            tracing::debug!("could not lower the maintenance thread's priority");
        }
    }
}
