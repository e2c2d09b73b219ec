//! Segment files on disk: reading frames, recovering after a crash, and the sidecar file a
//! sealed segment gets (its sparse offset index and its dedup claims), so that opening a
//! store reads sidecars instead of whole segments.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use raccordo_core::DedupKey;

use crate::dedup::Delivery;
use crate::format::{
    self, FRAME_HEADER_LEN, FRAME_MAGIC, FrameHeader, Parsed, Record, SEGMENT_HEADER_LEN,
};

/// A sparse index entry is kept every this many bytes of frames.
pub const SPARSE_EVERY: u64 = 64 << 10;
/// Reads go through a buffer of at least this size.
const READ_CHUNK: usize = 256 << 10;
/// How many readers' stopping places a segment remembers (the live tailer, a few SSE or
/// API readers): one each, the one furthest behind given up first.
const READ_POINTS: usize = 4;
/// An empty read point: no event has a sequence number this large.
const NO_READ_POINT: (i64, u64) = (i64::MAX, 0);

/// A zero-filled segment file prepared in the background, renamed into place at roll-over.
pub const NEXT_READY: &str = "next.ready";
/// The same while it is being written (removed at start if a crash left it).
pub const NEXT_TMP: &str = "next.tmp";

pub fn segment_path(dir: &Path, first_seq: i64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

pub fn sidecar_path(dir: &Path, first_seq: i64) -> PathBuf {
    dir.join(format!("{first_seq:020}.idx"))
}

/// The first sequence number in a segment or sidecar file name.
pub fn parse_name(name: &str) -> Option<(i64, &'static str)> {
    let (stem, ext) = name.split_once('.')?;
    let ext = match ext {
        "seg" => "seg",
        "idx" => "idx",
        _ => return None,
    };
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok().map(|seq| (seq, ext)))
        .flatten()
}

/// One segment as readers see it. The writer appends to the newest one and publishes its
/// committed length; readers never read past that length.
pub struct Segment {
    pub first_seq: i64,
    pub path: PathBuf,
    file: File,
    len: AtomicU64,
    last_seq: AtomicI64,
    max_received_at: AtomicI64,
    sparse: RwLock<Vec<(i64, u64)>>,
    /// Where recent reads stopped: an event's sequence number and its frame's offset. A
    /// reader asking for the events after it starts there rather than at the sparse entry
    /// before it, which is up to `SPARSE_EVERY` bytes earlier: a tailer that keeps up would
    /// otherwise read and checksum ~32 KiB of old frames for each few new ones.
    read_points: Mutex<[(i64, u64); READ_POINTS]>,
    /// Held exclusively while an erasure patches frames in place, shared by every read of
    /// the file: a read sees a frame either before or after its patch, never half of each.
    pub(crate) patching: RwLock<()>,
}

impl Segment {
    pub fn open(path: PathBuf, first_seq: i64, summary: &Summary) -> io::Result<Arc<Self>> {
        let file = File::open(&path)?;
        Ok(Arc::new(Self {
            first_seq,
            path,
            file,
            len: AtomicU64::new(summary.len),
            last_seq: AtomicI64::new(summary.last_seq),
            max_received_at: AtomicI64::new(summary.max_received_at),
            sparse: RwLock::new(summary.sparse.clone()),
            read_points: Mutex::new([NO_READ_POINT; READ_POINTS]),
            patching: RwLock::new(()),
        }))
    }

    /// Committed bytes (header included).
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn last_seq(&self) -> i64 {
        self.last_seq.load(Ordering::Acquire)
    }

    pub fn max_received_at(&self) -> i64 {
        self.max_received_at.load(Ordering::Acquire)
    }

    /// Called by the writer after a commit made `len` bytes durable.
    pub fn publish(&self, len: u64, last_seq: i64, max_received_at: i64, sparse: &[(i64, u64)]) {
        if !sparse.is_empty() {
            self.sparse
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(sparse);
        }
        self.max_received_at
            .fetch_max(max_received_at, Ordering::AcqRel);
        self.last_seq.store(last_seq, Ordering::Release);
        self.len.store(len, Ordering::Release);
    }

    /// The offset of a frame at or before the one holding `seq`: the nearest of the sparse
    /// entries and the read points. Frames are in sequence order, so the frame holding an
    /// earlier event is never after the one holding `seq`.
    pub fn offset_for(&self, seq: i64) -> u64 {
        let sparse = {
            let sparse = self.sparse.read().unwrap_or_else(|p| p.into_inner());
            let at = sparse.partition_point(|(first, _)| *first <= seq);
            if at == 0 {
                SEGMENT_HEADER_LEN
            } else {
                sparse[at - 1].1
            }
        };
        let points = self.read_points.lock().unwrap_or_else(|p| p.into_inner());
        points
            .iter()
            .filter(|(read, _)| *read < seq)
            .map(|(_, offset)| *offset)
            .fold(sparse, u64::max)
    }

    /// Remembers that a reader which asked for the events after `after` stopped at event
    /// `seq`, held by the frame at `offset`. Offsets never move (an erasure patches frames
    /// in place), so a point stays true for as long as the segment exists.
    pub fn note_read(&self, after: i64, seq: i64, offset: u64) {
        let mut points = self.read_points.lock().unwrap_or_else(|p| p.into_inner());
        // The same reader's previous point, else a free one, else the one furthest behind.
        let slot = points
            .iter()
            .position(|(read, _)| *read == after)
            .or_else(|| points.iter().position(|p| *p == NO_READ_POINT))
            .unwrap_or_else(|| {
                (0..READ_POINTS)
                    .min_by_key(|&i| points[i].0)
                    .unwrap_or_default()
            });
        points[slot] = (seq, offset);
    }

    pub fn cursor(&self, from: u64) -> FrameCursor<'_> {
        FrameCursor {
            gate: Some(&self.patching),
            ..FrameCursor::new(&self.file, from, self.len())
        }
    }
}

/// What one step of reading frames found.
pub enum Step<'a> {
    Frame {
        offset: u64,
        header: FrameHeader,
        body: &'a [u8],
    },
    /// The bytes end inside a frame.
    Torn {
        offset: u64,
    },
    /// Not a frame (damage): `reason` says why.
    Bad {
        offset: u64,
        reason: &'static str,
    },
    End,
}

/// Reads frames from a file in large chunks.
pub struct FrameCursor<'f> {
    file: &'f File,
    /// The segment's patching lock, held for each read (none while opening: no erasure runs).
    gate: Option<&'f RwLock<()>>,
    buf: Vec<u8>,
    buf_start: u64,
    pos: u64,
    end: u64,
}

impl<'f> FrameCursor<'f> {
    pub fn new(file: &'f File, from: u64, end: u64) -> Self {
        Self {
            file,
            gate: None,
            buf: Vec::new(),
            buf_start: from,
            pos: from,
            end,
        }
    }

    pub fn next_frame(&mut self) -> io::Result<Step<'_>> {
        if self.pos >= self.end {
            return Ok(Step::End);
        }
        loop {
            let in_buf =
                self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
            let rel = (self.pos - self.buf_start) as usize;
            let available: &[u8] = if in_buf { &self.buf[rel..] } else { &[] };
            match format::parse_frame(available) {
                Parsed::Frame { header, .. } => {
                    let offset = self.pos;
                    self.pos += header.total_len() as u64;
                    let body_start = rel + FRAME_HEADER_LEN;
                    return Ok(Step::Frame {
                        offset,
                        header,
                        body: &self.buf[body_start..body_start + header.body_len],
                    });
                }
                Parsed::Bad(reason) => {
                    return Ok(Step::Bad {
                        offset: self.pos,
                        reason,
                    });
                }
                Parsed::Incomplete { needed } => {
                    if self.pos + needed as u64 > self.end {
                        return Ok(Step::Torn { offset: self.pos });
                    }
                    if in_buf && available.len() >= needed {
                        // Cannot happen: parse_frame asked for bytes that are there.
                        return Ok(Step::Torn { offset: self.pos });
                    }
                    let want = needed.max(READ_CHUNK).min((self.end - self.pos) as usize);
                    self.buf.resize(want, 0);
                    // One read holds the whole frame (it restarts at the frame's start).
                    let _gate = self
                        .gate
                        .map(|g| g.read().unwrap_or_else(|p| p.into_inner()));
                    self.file.read_exact_at(&mut self.buf, self.pos)?;
                    self.buf_start = self.pos;
                }
            }
        }
    }
}

/// What a segment holds, as recorded in its sidecar (or found by scanning it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Bytes of whole frames (header included): where the next frame goes.
    pub len: u64,
    pub last_seq: i64,
    pub max_received_at: i64,
    /// The latest expiry of any claim below (0: none), so a sidecar whose claims have all
    /// expired is skipped without reading it.
    pub max_expires_at: i64,
    pub sparse: Vec<(i64, u64)>,
    pub claims: Vec<(DedupKey, u128, i64)>,
    pub deliveries: Vec<(DedupKey, Delivery)>,
    /// Byte ranges of damage that valid frames follow (recovery keeps them; reads fail).
    pub damaged: Vec<(u64, u64)>,
}

impl Summary {
    pub fn empty(first_seq: i64) -> Self {
        Self {
            len: SEGMENT_HEADER_LEN,
            last_seq: first_seq - 1,
            ..Self::default()
        }
    }

    /// Takes in one committed frame's records.
    pub fn add_frame(
        &mut self,
        offset: u64,
        header: &FrameHeader,
        body: &[u8],
    ) -> Result<(), format::DecodeError> {
        // Validate before taking anything in, so a bad frame changes nothing.
        format::records(body).try_for_each(|r| r.map(drop))?;
        self.note_frame(offset, header);
        for record in format::records(body) {
            match record? {
                Record::Event(e) => {
                    self.last_seq = self.last_seq.max(e.seq);
                    self.max_received_at = self.max_received_at.max(e.received_at_ms);
                    if let Some((key, expires_at)) = e.claim {
                        self.max_expires_at = self.max_expires_at.max(expires_at);
                        self.claims.push((key, e.id, expires_at));
                    }
                }
                Record::Delivery(d) => {
                    self.max_expires_at = self.max_expires_at.max(d.expires_at);
                    self.deliveries.push((
                        d.key,
                        Delivery {
                            body_hash: d.body_hash,
                            events: d.events,
                            expires_at: d.expires_at,
                        },
                    ));
                }
                Record::Claim {
                    key,
                    event,
                    expires_at,
                } => {
                    self.max_expires_at = self.max_expires_at.max(expires_at);
                    self.claims.push((key, event, expires_at));
                }
            }
        }
        Ok(())
    }

    /// Records a frame's place: the sparse index entry (every `SPARSE_EVERY` bytes, and
    /// right after damage) and the new length. Returns the entry if one was added.
    pub fn note_frame(&mut self, offset: u64, header: &FrameHeader) -> Option<(i64, u64)> {
        self.len = offset + header.total_len() as u64;
        if header.events > 0 {
            self.last_seq = self.last_seq.max(header.last_seq());
        }
        let due = self
            .sparse
            .last()
            .is_none_or(|(_, at)| offset >= at + SPARSE_EVERY)
            || self.damaged.last().is_some_and(|(_, end)| *end == offset);
        due.then(|| {
            self.sparse.push((header.first_seq, offset));
            (header.first_seq, offset)
        })
    }
}

/// How a scan of a segment ended.
#[derive(Debug)]
pub struct Scanned {
    pub summary: Summary,
    /// Bytes after `summary.len` that are a torn, never-acknowledged write (zeros after
    /// them, up to the end of the file, are preallocated space).
    pub torn_bytes: u64,
    pub file_len: u64,
}

/// Reads a whole segment: every frame's records into a summary. A bad or incomplete frame
/// with no valid frame after it is a torn tail (cut off by a crash before its commit was
/// acknowledged); one with valid frames after it is damage, which is kept and reported.
pub fn scan(file: &File, first_seq: i64) -> io::Result<Scanned> {
    let file_len = file.metadata()?.len();
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    if file_len < SEGMENT_HEADER_LEN {
        return Ok(Scanned {
            summary: Summary::empty(first_seq),
            torn_bytes: file_len,
            file_len,
        });
    }
    file.read_exact_at(&mut header, 0)?;
    if format::parse_segment_header(&header) != Some(first_seq) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the segment header does not match its file name",
        ));
    }
    let mut summary = Summary::empty(first_seq);
    let mut from = SEGMENT_HEADER_LEN;
    loop {
        let mut cursor = FrameCursor::new(file, from, file_len);
        let stopped_at = loop {
            match cursor.next_frame()? {
                Step::Frame {
                    offset,
                    header,
                    body,
                } => {
                    if summary.add_frame(offset, &header, body).is_err() {
                        break offset;
                    }
                }
                Step::End => {
                    return Ok(Scanned {
                        summary,
                        torn_bytes: 0,
                        file_len,
                    });
                }
                Step::Torn { offset } | Step::Bad { offset, .. } => break offset,
            }
        };
        let (resume, garbage_end) = after_stop(file, stopped_at, file_len)?;
        match resume {
            Some(resume) => {
                tracing::error!(
                    segment = first_seq,
                    from = stopped_at,
                    to = resume,
                    "damaged bytes in the event log; the frames after them are kept"
                );
                summary.damaged.push((stopped_at, resume));
                summary.len = resume;
                from = resume;
            }
            None => {
                // Zeros after the last frame are preallocated space, not damage.
                return Ok(Scanned {
                    torn_bytes: garbage_end.map_or(0, |end| end - stopped_at),
                    file_len,
                    summary: Summary {
                        len: stopped_at,
                        ..summary
                    },
                });
            }
        }
    }
}

/// What follows a frame that does not read at `at`: the offset of the next whole, valid
/// frame (damage in between), if any; and otherwise where the non-zero bytes after `at` end
/// (a torn write; `None` if everything after `at` is zero, i.e. preallocated space).
fn after_stop(file: &File, at: u64, file_len: u64) -> io::Result<(Option<u64>, Option<u64>)> {
    if at >= file_len {
        return Ok((None, None));
    }
    let mut rest = vec![0u8; (file_len - at) as usize];
    file.read_exact_at(&mut rest, at)?;
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut from = 1;
    while let Some(found) = rest
        .get(from..)
        .and_then(|r| r.windows(4).position(|w| w == magic))
    {
        let start = from + found;
        if let Parsed::Frame { body, .. } = format::parse_frame(&rest[start..])
            && format::records(body).all(|r| r.is_ok())
        {
            return Ok((Some(at + start as u64), None));
        }
        from = start + 1;
    }
    let garbage_end = rest
        .iter()
        .rposition(|b| *b != 0)
        .map(|i| at + i as u64 + 1);
    Ok((None, garbage_end))
}

const SIDECAR_MAGIC: [u8; 8] = *b"RCCIDX01";

/// Serialises a sealed segment's summary (damage ranges are not kept: a sidecar is written
/// only for segments whose frames all read back).
pub fn encode_sidecar(first_seq: i64, s: &Summary) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + s.sparse.len() * 16 + s.claims.len() * 40);
    b.extend_from_slice(&SIDECAR_MAGIC);
    for v in [
        first_seq,
        s.len as i64,
        s.last_seq,
        s.max_received_at,
        s.max_expires_at,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for n in [s.sparse.len(), s.claims.len(), s.deliveries.len()] {
        b.extend_from_slice(&(n as u64).to_le_bytes());
    }
    for (seq, offset) in &s.sparse {
        b.extend_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
    }
    for (key, event, expires_at) in &s.claims {
        b.extend_from_slice(&key.0);
        b.extend_from_slice(&event.to_le_bytes());
        b.extend_from_slice(&expires_at.to_le_bytes());
    }
    for (key, d) in &s.deliveries {
        b.extend_from_slice(&key.0);
        b.extend_from_slice(&d.body_hash.0);
        b.extend_from_slice(&d.expires_at.to_le_bytes());
        b.extend_from_slice(&(d.events.len() as u64).to_le_bytes());
        for id in &d.events {
            b.extend_from_slice(&id.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The fixed part of a sidecar: enough to decide whether to read the rest.
pub const SIDECAR_HEAD_LEN: usize = 8 + 5 * 8 + 3 * 8;

pub struct SidecarHead {
    pub first_seq: i64,
    pub len: u64,
    pub last_seq: i64,
    pub max_received_at: i64,
    pub max_expires_at: i64,
    pub claims: u64,
    pub deliveries: u64,
}

pub fn decode_sidecar_head(b: &[u8]) -> Option<SidecarHead> {
    if b.len() < SIDECAR_HEAD_LEN || b[..8] != SIDECAR_MAGIC {
        return None;
    }
    let i = |n: usize| i64::from_le_bytes(b[8 + n * 8..16 + n * 8].try_into().unwrap_or([0; 8]));
    Some(SidecarHead {
        first_seq: i(0),
        len: i(1) as u64,
        last_seq: i(2),
        max_received_at: i(3),
        max_expires_at: i(4),
        claims: i(6) as u64,
        deliveries: i(7) as u64,
    })
}

/// Decodes a whole sidecar; `None` if it is damaged or not one.
pub fn decode_sidecar(b: &[u8]) -> Option<(i64, Summary)> {
    if b.len() < SIDECAR_HEAD_LEN + 4 {
        return None;
    }
    let (content, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(content) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let head = decode_sidecar_head(content)?;
    let mut r = Bytes(&content[8 + 5 * 8..]);
    let n_sparse = r.u64()? as usize;
    let n_claims = r.u64()? as usize;
    let n_deliveries = r.u64()? as usize;
    if n_sparse
        .saturating_mul(16)
        .saturating_add(n_claims.saturating_mul(40))
        > b.len()
    {
        return None;
    }
    let mut summary = Summary {
        len: head.len,
        last_seq: head.last_seq,
        max_received_at: head.max_received_at,
        max_expires_at: head.max_expires_at,
        ..Summary::default()
    };
    for _ in 0..n_sparse {
        summary.sparse.push((r.u64()? as i64, r.u64()?));
    }
    for _ in 0..n_claims {
        summary.claims.push((r.key()?, r.u128()?, r.u64()? as i64));
    }
    for _ in 0..n_deliveries {
        let key = r.key()?;
        let body_hash = r.key()?;
        let expires_at = r.u64()? as i64;
        let n = r.u64()? as usize;
        if n > r.0.len() / 16 {
            return None;
        }
        let events = (0..n).map(|_| r.u128()).collect::<Option<_>>()?;
        summary.deliveries.push((
            key,
            Delivery {
                body_hash,
                events,
                expires_at,
            },
        ));
    }
    Some((head.first_seq, summary))
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.0.len() < N {
            return None;
        }
        let (head, tail) = self.0.split_at(N);
        self.0 = tail;
        head.try_into().ok()
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn u128(&mut self) -> Option<u128> {
        self.array().map(u128::from_le_bytes)
    }
    fn key(&mut self) -> Option<DedupKey> {
        self.array().map(DedupKey)
    }
}

/// Reads the fixed part of a sidecar file; `None` if it is missing or not a sidecar.
pub fn read_sidecar_head(path: &Path) -> Option<SidecarHead> {
    let file = File::open(path).ok()?;
    let mut head = [0u8; SIDECAR_HEAD_LEN];
    file.read_exact_at(&mut head, 0).ok()?;
    decode_sidecar_head(&head)
}

/// Writes `bytes` to `path` atomically and durably: a temporary file, fsync, rename, and an
/// fsync of the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_durably_in_steps(path, bytes, &mut |_| {})
}

/// `write_durably`, calling `before_step` with each step's length before writing it (the
/// maintenance thread paces its steps there).
pub(crate) fn write_durably_in_steps(
    path: &Path,
    bytes: &[u8],
    before_step: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let file = File::create(&tmp)?;
        // In steps, each synced, so as not to hold up the writer's commits.
        let mut at = 0;
        for step in bytes.chunks(crate::BACKGROUND_WRITE_STEP) {
            before_step(step.len() as u64);
            file.write_all_at(step, at)?;
            file.sync_data()?;
            at += step.len() as u64;
        }
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_in_steps_reads_back_whole_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.side");
        std::fs::write(&path, b"an older, shorter version").unwrap();
        // Two whole steps and part of a third, no byte equal to its neighbour's.
        let bytes: Vec<u8> = (0..crate::BACKGROUND_WRITE_STEP * 5 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        write_durably(&path, &bytes).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(
            !path.with_extension("tmp").exists(),
            "the temporary file was renamed"
        );
    }

    #[test]
    fn a_read_point_moves_the_start_forward_only_for_events_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.seg");
        std::fs::write(&path, b"").unwrap();
        let summary = Summary {
            sparse: vec![(1, SEGMENT_HEADER_LEN), (100, 70_000)],
            ..Summary::default()
        };
        let segment = Segment::open(path, 1, &summary).unwrap();
        assert_eq!(segment.offset_for(150), 70_000, "the sparse entry");

        // A reader that asked for the events after 99 stopped at event 140 (frame 90 000).
        segment.note_read(99, 140, 90_000);
        assert_eq!(segment.offset_for(141), 90_000);
        assert_eq!(segment.offset_for(500), 90_000);
        // Not for event 140 or earlier: the point says nothing of frames before its own.
        assert_eq!(segment.offset_for(140), 70_000);
        assert_eq!(segment.offset_for(50), SEGMENT_HEADER_LEN);

        // Its next call moves its own point instead of taking a second one.
        segment.note_read(140, 160, 95_000);
        assert_eq!(segment.offset_for(141), 70_000, "the old point is gone");
        assert_eq!(segment.offset_for(161), 95_000);

        // More readers than points: the one furthest behind is given up.
        for (n, offset) in (1..=READ_POINTS as i64).zip([91_000, 92_000, 93_000, 94_000]) {
            segment.note_read(0, 160 + n * 10, offset);
        }
        assert_eq!(
            segment.offset_for(161),
            70_000,
            "the point at 160 was the furthest behind"
        );
        assert_eq!(segment.offset_for(171), 91_000);
        assert_eq!(segment.offset_for(201), 94_000);
    }

    #[test]
    fn sidecars_round_trip_and_refuse_damage() {
        let summary = Summary {
            len: 1234,
            last_seq: 99,
            max_received_at: 7,
            max_expires_at: 70,
            sparse: vec![(1, 16), (50, 70_000)],
            claims: vec![(DedupKey([3; 16]), 42, 70)],
            deliveries: vec![(
                DedupKey([4; 16]),
                Delivery {
                    body_hash: DedupKey([5; 16]),
                    events: vec![42, 43],
                    expires_at: 60,
                },
            )],
            damaged: vec![],
        };
        let bytes = encode_sidecar(1, &summary);
        assert_eq!(decode_sidecar(&bytes), Some((1, summary)));
        for at in [0, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert_eq!(decode_sidecar(&bad), None, "flip at {at}");
        }
        assert_eq!(decode_sidecar(&bytes[..bytes.len() - 3]), None);
    }

    #[test]
    fn names_parse() {
        assert_eq!(parse_name("00000000000000000042.seg"), Some((42, "seg")));
        assert_eq!(parse_name("00000000000000000042.idx"), Some((42, "idx")));
        assert_eq!(parse_name("42.seg"), None);
        assert_eq!(parse_name("00000000000000000042.tmp"), None);
    }
}
