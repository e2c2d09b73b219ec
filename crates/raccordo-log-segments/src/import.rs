//! Builds a log directory from events and claims kept elsewhere (a store from before the
//! segment log), keeping their sequence numbers, so offsets and checkpoints stay valid.
//!
//! Everything goes into a temporary directory that is renamed into place only when it is
//! complete and durable: an import cut short by a crash leaves no half-built log.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raccordo_core::DedupKey;

use crate::format::{self, DeliveryRecord, EventRecord, FrameWriter, SEGMENT_HEADER_LEN};
use crate::segment;

/// Records per frame in an imported log.
const FRAME_RECORDS: usize = 1000;

pub struct Importer {
    final_dir: PathBuf,
    tmp_dir: PathBuf,
    segment_bytes: u64,
    file: Option<(File, u64)>,
    frames: FrameWriter,
    in_frame: usize,
    next_seq: i64,
    pub events: u64,
}

impl Importer {
    /// Starts an import that will become `dir` (which must not exist yet).
    pub fn new(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        let tmp_dir = dir.with_extension("importing");
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir)?; // an earlier import cut short
        }
        std::fs::create_dir_all(&tmp_dir)?;
        Ok(Self {
            final_dir: dir.to_path_buf(),
            tmp_dir,
            segment_bytes,
            file: None,
            frames: FrameWriter::default(),
            in_frame: 0,
            next_seq: 1,
            events: 0,
        })
    }

    fn flush_frame(&mut self) -> io::Result<()> {
        if self.in_frame > 0 {
            self.frames.finish();
            self.in_frame = 0;
        }
        if self.frames.is_empty() {
            return Ok(());
        }
        let roll = self.file.as_ref().is_none_or(|(_, len)| {
            *len + self.frames.len() as u64 > self.segment_bytes && *len > SEGMENT_HEADER_LEN
        });
        if roll {
            if let Some((file, _)) = self.file.take() {
                file.sync_data()?;
            }
            let first_seq = self.frame_first_seq();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(segment::segment_path(&self.tmp_dir, first_seq))?;
            file.write_all_at(&format::segment_header(first_seq), 0)?;
            self.file = Some((file, SEGMENT_HEADER_LEN));
        }
        if let Some((file, len)) = &mut self.file {
            file.write_all_at(self.frames.bytes(), *len)?;
            *len += self.frames.len() as u64;
        }
        self.frames.clear();
        Ok(())
    }

    /// The first seq of the buffered frames (read from the first frame's header).
    fn frame_first_seq(&self) -> i64 {
        let b = self.frames.bytes();
        i64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]))
    }

    fn room(&mut self, seq: i64) -> io::Result<()> {
        if self.in_frame >= FRAME_RECORDS {
            self.frames.finish();
            self.in_frame = 0;
            if self.frames.len() as u64 >= 4 << 20 {
                self.flush_frame()?;
            }
        }
        if self.in_frame == 0 {
            self.frames.begin(seq);
        }
        self.in_frame += 1;
        Ok(())
    }

    /// Adds one event; sequence numbers must grow.
    pub fn event(&mut self, e: &EventRecord<'_>) -> io::Result<()> {
        if e.seq < self.next_seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "imported events must come in sequence order",
            ));
        }
        // A gap in sequence numbers starts a new frame: a frame's events are consecutive.
        if self.in_frame > 0 && e.seq != self.next_seq {
            self.frames.finish();
            self.in_frame = 0;
        }
        self.room(e.seq)?;
        self.frames.event(e);
        self.next_seq = e.seq + 1;
        self.events += 1;
        Ok(())
    }

    /// Adds a business-key claim (after the events).
    pub fn claim(&mut self, key: DedupKey, event: u128, expires_at: i64) -> io::Result<()> {
        self.room(self.next_seq)?;
        self.frames.claim(key, event, expires_at);
        Ok(())
    }

    pub fn delivery(&mut self, d: &DeliveryRecord) -> io::Result<()> {
        self.room(self.next_seq)?;
        self.frames.delivery(d);
        Ok(())
    }

    /// Makes everything durable and moves the log into place.
    pub fn finish(mut self) -> io::Result<()> {
        self.flush_frame()?;
        if let Some((file, _)) = self.file.take() {
            file.sync_data()?;
        }
        segment::sync_dir(&self.tmp_dir)?;
        std::fs::rename(&self.tmp_dir, &self.final_dir)?;
        segment::sync_dir(self.final_dir.parent().unwrap_or(Path::new(".")))
    }
}
