//! The embedded event log: append-only, checksummed segment files.
//!
//! Why not a database table: a B-tree in WAL mode writes every event twice (the WAL, then
//! the checkpoint into the main file), and the checkpoint's writeback of a large store
//! stalls the `fsync` of every later commit — acknowledgement latency grew with the store
//! (`docs/benchmarks.md`). Here an event is written once, by the commit that acknowledges it,
//! and nothing is left to flush behind it. See `docs/storage.md` for the design.
//!
//! - **Writes**: one writer thread, group commit ([`writer`]); each append request is one
//!   checksummed frame holding its events *and* its dedup claims, so they are durable
//!   together by construction.
//! - **Reads**: the live tailer and the query API read frames straight from the files,
//!   never past the committed length, through a sparse in-memory offset index.
//! - **Recovery**: the newest segment is scanned and a torn tail (a write that was never
//!   acknowledged) is cut off; damage with valid frames after it is kept and reported.
//!   Older segments are opened from their sidecar (offset index + claims), not read.
//! - **Retention**: whole sealed segments are removed by age or total size in the
//!   background; their live dedup claims stay in the sidecar until they expire.
//! - **Backups**: holding `freeze.lock` exclusively (`flock -x`) pauses appends, so the
//!   directory can be copied consistently.

mod dedup;
mod erase;
pub mod format;
pub mod import;
mod key_map;
mod linger;
mod maintenance;
mod pace;
mod read;
pub mod retention;
mod segment;
mod sorted_claims;
mod writer;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use raccordo_core::{
    AppendBatch, AppendOutcome, ErasedEvents, EventFilter, EventLog, EventPage, EventQuery,
    EventSelector, LogPositions, PayloadRewrite, RawEvent, StoreError, StoredEvent,
};
use tokio::sync::{mpsc, oneshot};

pub use import::Importer;
pub use retention::RetentionPolicy;

use crate::dedup::DedupIndex;
use crate::segment::{Segment, Summary};

/// The live dedup claims of a log, for `raccordo migrate`.
#[derive(Debug, Clone, Default)]
pub struct ExportedClaims {
    pub claims: Vec<raccordo_core::migrate::ClaimRecord>,
    pub deliveries: Vec<raccordo_core::migrate::DeliveryClaimRecord>,
}

/// How much of a commit reaches the disk before the request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` at every commit group: acknowledged data survives power loss.
    Fsync,
    /// OS-buffered: acknowledged data survives a process crash, not a power cut.
    Buffered,
}

#[derive(Debug, Clone)]
pub struct SegmentLogOptions {
    /// The directory of segment files (created if missing).
    pub dir: PathBuf,
    pub durability: Durability,
    /// Append requests that may wait for the writer before `append` answers `Overloaded`.
    pub queue_capacity: usize,
    /// Upper bound on events per commit group (bounds commit latency under load).
    pub max_group_events: usize,
    /// The longest a commit waits for more appends when they have been arriving together
    /// (never longer than the last `fdatasync` took; zero: never wait), as the writer's
    /// `linger` module decides.
    pub max_commit_wait: Duration,
    /// A segment is sealed and a new one started past this size.
    pub segment_bytes: u64,
    /// Refuse appends (503 "full") once the log holds this many bytes.
    pub max_bytes: Option<u64>,
    pub retention: RetentionPolicy,
    /// How often retention looks for segments to remove.
    pub retention_every: Duration,
}

impl SegmentLogOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            durability: Durability::Fsync,
            queue_capacity: 512,
            max_group_events: 20_000,
            max_commit_wait: Duration::from_millis(1),
            segment_bytes: 64 << 20,
            max_bytes: None,
            retention: RetentionPolicy::default(),
            retention_every: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the event log at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// State shared by the writer, the readers and the maintenance thread.
pub(crate) struct Shared {
    dir: PathBuf,
    /// Every segment with events still readable, by first sequence number.
    segments: RwLock<BTreeMap<i64, Arc<Segment>>>,
    total_bytes: AtomicU64,
    /// The latest `received_at` committed: the clock dedup expiry is measured against.
    newest_received_at: AtomicI64,
    /// Set while the last commit failed because the disk (or the size limit) is full.
    full: AtomicBool,
    /// Live dedup claims and deliveries in memory, as of the last commit.
    dedup_keys: std::sync::atomic::AtomicUsize,
    /// A zero-filled segment file (`next.ready`) waits for the next roll-over.
    next_ready: AtomicBool,
    /// Set once the writer has stopped on `close`: background writes still to do go at
    /// full speed (nothing waits on the disk any more, and the close waits for them).
    closing: AtomicBool,
    /// Events erased while this process runs: their claims are left out of sidecars
    /// written later. Also the lock under which sidecars lose erased claims.
    erased: Mutex<std::collections::HashSet<u128>>,
}

impl Shared {
    fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

pub struct SegmentLog {
    shared: Arc<Shared>,
    jobs: Mutex<Option<mpsc::Sender<writer::Request>>>,
    ready: Arc<AtomicBool>,
    writer_done: Mutex<Option<oneshot::Receiver<()>>>,
    stop_maintenance: Mutex<Option<std::sync::mpsc::Sender<writer::Seal>>>,
    maintenance_done: Mutex<Option<oneshot::Receiver<()>>>,
    committed: tokio::sync::watch::Receiver<LogPositions>,
    /// Held by the erasure under way.
    erasing: tokio::sync::Mutex<()>,
}

/// What opening found, for the log line and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    /// Sealed segments whose sidecar was missing or unreadable and that were read whole.
    pub rescanned: usize,
    /// Bytes of a torn, unacknowledged write cut off the newest segment.
    pub torn_bytes: u64,
    /// Dedup claims loaded (live at the newest event's receive time).
    pub claims: usize,
}

/// Background writes that are large (a next segment's zeros, a sealed segment's sidecar of
/// up to ~20 MB) go to disk this much at a time, each step synced before the next: the
/// writer's commit waits behind whatever sits in the disk's queue when its `fdatasync`
/// comes, and one 17 MB sidecar written at once made commits wait 40–99 ms (`perf trace`
/// of an open loop). A step of 1 MiB costs a commit at most a few milliseconds; the steps
/// are also spread over time (`pace`).
pub(crate) const BACKGROUND_WRITE_STEP: usize = 1 << 20;

/// Writes zeros over `len` bytes from `at`.
pub(crate) fn zero_fill(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; (1 << 20).min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = zeros.len().min((len - done) as usize);
        file.write_all_at(&zeros[..n], at + done)?;
        done += n as u64;
    }
    Ok(())
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `options.dir` and starts its writer. The caller
    /// holds the data directory's lock.
    pub fn open(options: SegmentLogOptions) -> Result<(Self, Recovery), OpenError> {
        let dir = options.dir.clone();
        let io = |source| OpenError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let freeze = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("freeze.lock"))
            .map_err(io)?;
        erase::recover(&dir).map_err(io)?;
        let opened = open_segments(&dir).map_err(io)?;
        let Opened {
            segments,
            active,
            active_file,
            active_capacity,
            active_summary,
            index,
            leftover_sidecars,
            sealed_expiries,
            loaded_claims,
            newest_received_at,
            recovery,
        } = opened;
        let total_bytes = segments.values().map(|s| s.len()).sum();
        let next_seq = active.last_seq() + 1;
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            segments: RwLock::new(segments),
            total_bytes: AtomicU64::new(total_bytes),
            newest_received_at: AtomicI64::new(newest_received_at),
            full: AtomicBool::new(false),
            dedup_keys: std::sync::atomic::AtomicUsize::new(index.len()),
            next_ready: AtomicBool::new(dir.join(segment::NEXT_READY).exists()),
            closing: AtomicBool::new(false),
            erased: Mutex::new(Default::default()),
        });
        let (committed_tx, committed) =
            tokio::sync::watch::channel(LogPositions::single(next_seq - 1));
        let (seal_tx, seal_rx) = std::sync::mpsc::channel();
        let (expired_tx, expired_rx) = std::sync::mpsc::channel();
        let maintenance = maintenance::Maintenance {
            shared: shared.clone(),
            durability: options.durability,
            retention: options.retention,
            segment_bytes: options.segment_bytes.max(format::SEGMENT_HEADER_LEN + 1),
            sidecars_only: leftover_sidecars,
            expiries: sealed_expiries,
            loaded_claims,
            expired: expired_tx,
        };
        let every = options.retention_every;
        let (maintenance_tx, maintenance_done) = oneshot::channel();
        std::thread::Builder::new()
            .name("raccordo-log-maintenance".into())
            .spawn(move || {
                maintenance.run(seal_rx, every);
                let _ = maintenance_tx.send(());
            })
            .map_err(io)?;
        let writer = writer::Writer {
            shared: shared.clone(),
            index,
            active,
            active_file,
            active_capacity,
            warmed_to: 0,
            active_summary,
            next_seq,
            durability: options.durability,
            segment_bytes: options.segment_bytes.max(format::SEGMENT_HEADER_LEN + 1),
            max_bytes: options.max_bytes,
            max_group_events: options.max_group_events.max(1),
            freeze,
            sealer: seal_tx.clone(),
            committed: committed_tx,
            expired: expired_rx,
            linger: linger::Linger::new(options.max_commit_wait),
        };
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let ready = Arc::new(AtomicBool::new(true));
        let (done_tx, done_rx) = oneshot::channel();
        let writer_ready = ready.clone();
        std::thread::Builder::new()
            .name("raccordo-log-writer".into())
            .spawn(move || {
                writer.run(rx);
                writer_ready.store(false, Ordering::SeqCst);
                let _ = done_tx.send(());
            })
            .map_err(io)?;
        tracing::info!(
            dir = %dir.display(),
            segments = recovery.segments,
            rescanned = recovery.rescanned,
            torn_bytes = recovery.torn_bytes,
            claims = recovery.claims,
            head = next_seq - 1,
            "event log opened"
        );
        Ok((
            Self {
                shared,
                jobs: Mutex::new(Some(tx)),
                ready,
                writer_done: Mutex::new(Some(done_rx)),
                stop_maintenance: Mutex::new(Some(seal_tx)),
                maintenance_done: Mutex::new(Some(maintenance_done)),
                committed,
                erasing: tokio::sync::Mutex::new(()),
            },
            recovery,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Bytes held by the log's segments.
    pub fn total_bytes(&self) -> u64 {
        self.shared.total_bytes.load(Ordering::Acquire)
    }

    /// Dedup claims held in memory (claims and delivery ids), as of the last commit.
    pub fn dedup_keys(&self) -> usize {
        self.shared.dedup_keys.load(Ordering::Acquire)
    }

    /// The oldest sequence number still stored (retention removes from the front).
    pub fn first_seq(&self) -> i64 {
        self.shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .next()
            .copied()
            .unwrap_or(1)
    }

    /// Up to `limit` events after `after_seq`, as the log keeps them (`raccordo migrate`).
    pub async fn export_events(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<raccordo_core::migrate::LogRecord>, StoreError> {
        let shared = self.shared.clone();
        let head = self.committed.borrow().get(0);
        tokio::task::spawn_blocking(move || read::export(&shared, after_seq, head, limit))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    /// The dedup claims and delivery ids still live at `now_ms` (`raccordo migrate`),
    /// taken between two commits.
    pub async fn export_claims(&self, now_ms: i64) -> Result<ExportedClaims, StoreError> {
        let (reply, answer) = oneshot::channel();
        let sender = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sender =
            sender.ok_or_else(|| StoreError::Unavailable("the store is shutting down".into()))?;
        sender
            .send(writer::Request::ExportClaims { now_ms, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))
    }

    /// Stops accepting appends, lets the writer finish what is queued and waits for it and
    /// for the sidecars of sealed segments.
    pub async fn close(&self) {
        take(&self.jobs);
        if let Some(done) = take(&self.writer_done) {
            let _ = done.await;
        }
        self.shared.closing.store(true, Ordering::Release);
        take(&self.stop_maintenance);
        if let Some(done) = take(&self.maintenance_done) {
            let _ = done.await;
        }
    }
}

/// Runs `f` on a thread of its own at background priority.
async fn background<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name("raccordo-log-erase".into())
        .spawn(move || {
            maintenance::lower_priority_of_this_thread();
            let _ = done.send(f());
        })
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    result
        .await
        .map_err(|_| StoreError::Backend("an erasure thread stopped".into()))
}

/// Empties a slot shared under a mutex (a poisoned lock still holds a valid value).
fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

struct Opened {
    segments: BTreeMap<i64, Arc<Segment>>,
    active: Arc<Segment>,
    active_file: File,
    active_capacity: Option<u64>,
    active_summary: Summary,
    index: DedupIndex,
    leftover_sidecars: Vec<(i64, i64)>,
    sealed_expiries: std::collections::HashMap<i64, i64>,
    loaded_claims: BTreeMap<i64, i64>,
    newest_received_at: i64,
    recovery: Recovery,
}

/// Finds the segments, recovers the newest, loads the older ones' sidecars and rebuilds the
/// dedup index.
fn open_segments(dir: &Path) -> std::io::Result<Opened> {
    let mut segs: BTreeMap<i64, bool> = BTreeMap::new(); // first seq → has a .seg file
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            std::fs::remove_file(entry.path())?; // a sidecar whose write was cut short
            continue;
        }
        if let Some((seq, ext)) = segment::parse_name(name) {
            let has = segs.entry(seq).or_insert(false);
            *has |= ext == "seg";
        }
    }
    let mut recovery = Recovery::default();
    // The newest segment is the active one: scanned whole, torn tail cut off.
    let newest = segs.iter().rev().find(|(_, has)| **has).map(|(s, _)| *s);
    let (active_seq, active_file, active_summary, active_capacity) = match newest {
        Some(first_seq) => {
            let path = segment::segment_path(dir, first_seq);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let scanned = segment::scan(&file, first_seq)?;
            if scanned.torn_bytes > 0 {
                tracing::warn!(
                    segment = first_seq,
                    bytes = scanned.torn_bytes,
                    "cutting off an unacknowledged write torn by a crash"
                );
                // Zeroed rather than cut off: the space stays preallocated.
                zero_fill(&file, scanned.summary.len, scanned.torn_bytes)?;
                file.sync_data()?;
                recovery.torn_bytes = scanned.torn_bytes;
            }
            let capacity = (scanned.file_len > scanned.summary.len).then_some(scanned.file_len);
            (first_seq, file, scanned.summary, capacity)
        }
        None => {
            let first_seq = segs.keys().next_back().map_or(1, |s| s + 1).max(1);
            let path = segment::segment_path(dir, first_seq);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            use std::os::unix::fs::FileExt;
            file.write_all_at(&format::segment_header(first_seq), 0)?;
            file.sync_data()?;
            segment::sync_dir(dir)?;
            (first_seq, file, Summary::empty(first_seq), None)
        }
    };

    // Older segments: their sidecars (rebuilt by a scan where missing or damaged). First
    // the fixed part of each, to size the dedup index once; then each whole, one at a
    // time, so that at most one segment's claims are decoded at once.
    let mut newest_received_at = active_summary.max_received_at;
    let mut sealed = Vec::new();
    let (mut claims, mut deliveries) =
        (active_summary.claims.len(), active_summary.deliveries.len());
    for (&first_seq, &has_seg) in segs.range(..active_seq) {
        let side = segment::sidecar_path(dir, first_seq);
        let head = segment::read_sidecar_head(&side).filter(|h| h.first_seq == first_seq);
        let head = match head {
            Some(head) => head,
            None if has_seg => {
                let file = File::open(segment::segment_path(dir, first_seq))?;
                let scanned = segment::scan(&file, first_seq)?;
                recovery.rescanned += 1;
                let bytes = segment::encode_sidecar(first_seq, &scanned.summary);
                if scanned.summary.damaged.is_empty() && scanned.torn_bytes == 0 {
                    segment::write_durably(&side, &bytes)?;
                    match segment::decode_sidecar_head(&bytes) {
                        Some(head) => head,
                        None => continue,
                    }
                } else {
                    // Damaged: kept without a sidecar (read whole at every start).
                    sealed.push((first_seq, has_seg, Some(scanned.summary)));
                    continue;
                }
            }
            None => {
                tracing::warn!(sidecar = %side.display(), "unreadable sidecar of a removed segment: its claims are lost");
                continue;
            }
        };
        newest_received_at = newest_received_at.max(head.max_received_at);
        claims += head.claims as usize;
        deliveries += head.deliveries as usize;
        sealed.push((first_seq, has_seg, None));
    }
    let mut index = dedup::IndexLoader::with_capacity(claims, deliveries);
    let mut segments = BTreeMap::new();
    let mut leftover_sidecars = Vec::new();
    let mut sealed_expiries = std::collections::HashMap::new();
    let mut loaded_claims = BTreeMap::new();
    let load = |summary: &mut Summary, index: &mut dedup::IndexLoader| {
        for (key, event, expires_at) in summary.claims.drain(..) {
            if expires_at > newest_received_at {
                index.load_claim(key, event, expires_at);
            }
        }
        for (key, delivery) in summary.deliveries.drain(..) {
            if delivery.expires_at > newest_received_at {
                index.load_delivery(key, &delivery);
            }
        }
    };
    // Sidecars are read and decoded on a second thread while this one fills the index, in
    // segment order (later claims override earlier ones).
    let (decoded_tx, decoded_rx) = std::sync::mpsc::sync_channel(2);
    std::thread::scope(|scope| -> std::io::Result<()> {
        scope.spawn(move || {
            for (first_seq, has_seg, scanned) in sealed {
                let decoded = scanned.or_else(|| {
                    std::fs::read(segment::sidecar_path(dir, first_seq))
                        .ok()
                        .as_deref()
                        .and_then(segment::decode_sidecar)
                        .map(|(_, summary)| summary)
                });
                if decoded_tx.send((first_seq, has_seg, decoded)).is_err() {
                    return;
                }
            }
        });
        for (first_seq, has_seg, decoded) in decoded_rx {
            let mut summary = match decoded {
                Some(summary) => summary,
                None => {
                    tracing::warn!(
                        segment = first_seq,
                        "damaged sidecar: reading its segment instead"
                    );
                    if !has_seg {
                        continue;
                    }
                    let file = File::open(segment::segment_path(dir, first_seq))?;
                    recovery.rescanned += 1;
                    segment::scan(&file, first_seq)?.summary
                }
            };
            load(&mut summary, &mut index);
            if summary.max_expires_at > newest_received_at {
                loaded_claims.insert(first_seq, summary.max_expires_at);
            }
            summary.claims = Vec::new();
            summary.deliveries = Vec::new();
            if has_seg {
                sealed_expiries.insert(first_seq, summary.max_expires_at);
                let segment =
                    Segment::open(segment::segment_path(dir, first_seq), first_seq, &summary)?;
                segments.insert(first_seq, segment);
            } else if summary.max_expires_at > newest_received_at {
                leftover_sidecars.push((first_seq, summary.max_expires_at));
            } else {
                std::fs::remove_file(segment::sidecar_path(dir, first_seq))?;
            }
        }
        Ok(())
    })?;
    // The active segment's claims stay in its summary too: they go into its sidecar.
    for (key, event, expires_at) in &active_summary.claims {
        if *expires_at > newest_received_at {
            index.load_claim(*key, *event, *expires_at);
        }
    }
    for (key, delivery) in &active_summary.deliveries {
        if delivery.expires_at > newest_received_at {
            index.load_delivery(*key, delivery);
        }
    }
    let active = Segment::open(
        segment::segment_path(dir, active_seq),
        active_seq,
        &active_summary,
    )?;
    segments.insert(active_seq, active.clone());
    let index = index.finish();
    recovery.segments = segments.len();
    recovery.claims = index.len();
    Ok(Opened {
        segments,
        active,
        active_file,
        active_capacity,
        active_summary,
        index,
        leftover_sidecars,
        sealed_expiries,
        loaded_claims,
        newest_received_at,
        recovery,
    })
}

#[async_trait]
impl EventLog for SegmentLog {
    async fn append(&self, batch: AppendBatch) -> Result<AppendOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let sender = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sender =
            sender.ok_or_else(|| StoreError::Unavailable("the store is shutting down".into()))?;
        sender
            .try_send(writer::Request::Append(writer::Job { batch, reply }))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded {
                    retry_after_ms: 1000,
                },
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("the writer has stopped".into())
                }
            })?;
        let writer::Answer { result, batch } = answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))?;
        drop(batch); // here, on the thread that allocated it
        result
    }

    async fn tail(&self, after: &LogPositions, limit: usize) -> Result<Vec<RawEvent>, StoreError> {
        let shared = self.shared.clone();
        let after = after.get(0);
        let head = self.committed.borrow().get(0);
        tokio::task::spawn_blocking(move || read::tail(&shared, after, head, limit))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn erase(&self, rewrite: PayloadRewrite) -> Result<ErasedEvents, StoreError> {
        // One erasure at a time: there is one journal.
        let _one = self.erasing.lock().await;
        // 1. The whole log is planned on a thread of its own at background priority, so
        //    that reading it does not take the cores from requests being acknowledged.
        let head = self.committed.borrow().get(0);
        let shared = self.shared.clone();
        let planner = rewrite.clone();
        let mut patches = background(move || erase::plan(&shared, 0, head, &planner)).await??;
        // 2. The writer plans what was committed since and drops the claims (a short pause).
        let (reply, answer) = oneshot::channel();
        let sender = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let sender =
            sender.ok_or_else(|| StoreError::Unavailable("the store is shutting down".into()))?;
        sender
            .send(writer::Request::Erase(writer::EraseJob {
                claims: patches
                    .iter()
                    .flat_map(|p| p.claims.iter().copied())
                    .collect(),
                planned_up_to: head,
                rewrite,
                reply,
            }))
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        let (tail, claims) = answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))??;
        patches.extend(tail);
        // 3. The files are patched (journalled, synced) while appends go on.
        let shared = self.shared.clone();
        let ids = erase::event_ids(&patches);
        let events = ids.len() as u64;
        background(move || {
            erase::finish(&shared, &patches)
                .map_err(|e| StoreError::Backend(format!("patching the event log: {e}")))
        })
        .await??;
        metrics::counter!("raccordo_storage_erased_events_total").increment(events);
        Ok(ErasedEvents { ids, claims })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.shared.full.load(Ordering::SeqCst)
    }

    fn committed(&self) -> tokio::sync::watch::Receiver<LogPositions> {
        self.committed.clone()
    }

    async fn close(&self) {
        SegmentLog::close(self).await
    }
}

#[async_trait]
impl EventQuery for SegmentLog {
    async fn read(&self, filter: EventFilter) -> Result<EventPage, StoreError> {
        let shared = self.shared.clone();
        let head = self.committed.borrow().get(0);
        tokio::task::spawn_blocking(move || read::query(&shared, &filter, head))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn find(&self, select: EventSelector) -> Result<Vec<StoredEvent>, StoreError> {
        let shared = self.shared.clone();
        let head = self.committed.borrow().get(0);
        tokio::task::spawn_blocking(move || read::find(&shared, head, &select))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}
