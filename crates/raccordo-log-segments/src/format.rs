//! The bytes on disk: segment headers, checksummed frames and the records inside them.
//!
//! A segment file is a 16-byte header followed by frames. A frame is the unit of atomicity:
//! one append request's events and dedup claims, written with the rest of its commit group
//! in one `write` and made durable by one `fdatasync`. A frame whose checksum does not match
//! is either a torn tail (nothing valid follows it: the write was never acknowledged) or
//! damage (valid frames follow it), and recovery tells the two apart.
//!
//! All integers are little-endian. Pure functions only: no I/O here.

use raccordo_core::DedupKey;

/// First bytes of every segment file, then the sequence number of its first event (i64).
pub const SEGMENT_MAGIC: [u8; 8] = *b"RCCSEG01";
pub const SEGMENT_HEADER_LEN: u64 = 16;

/// "RCF1": the start of a frame.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RCF1");
/// magic u32 · body length u32 · first seq i64 · event count u32 · crc32c u32
pub const FRAME_HEADER_LEN: usize = 24;
/// Larger bodies are not written (the writer splits nothing: an append batch is far
/// smaller), so a larger length in a header can only be damage.
pub const MAX_FRAME_BODY: usize = 256 << 20;

const TAG_EVENT: u8 = 1;
const TAG_DELIVERY: u8 = 2;
const TAG_CLAIM: u8 = 3;

/// One stored event. `claim` is the business-key claim it took, if any; a duplicate
/// (`duplicate_of` set) takes none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord<'a> {
    pub seq: i64,
    pub id: u128,
    pub received_at_ms: i64,
    pub event_time_ms: i64,
    pub duplicate_of: Option<u128>,
    pub claim: Option<(DedupKey, i64)>,
    pub source: &'a str,
    pub payload: &'a str,
}

/// A delivery id claim: the body's hash and the events the first delivery produced, so a
/// retry is answered with the same outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub key: DedupKey,
    pub body_hash: DedupKey,
    pub expires_at: i64,
    pub events: Vec<u128>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Event(EventRecord<'a>),
    Delivery(DeliveryRecord),
    /// A business-key claim on its own (carried over from an older store by the import).
    Claim {
        key: DedupKey,
        event: u128,
        expires_at: i64,
    },
}

pub fn segment_header(first_seq: i64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// The first sequence number a segment header names, if it is one.
pub fn parse_segment_header(bytes: &[u8]) -> Option<i64> {
    if bytes.len() < SEGMENT_HEADER_LEN as usize || bytes[..8] != SEGMENT_MAGIC {
        return None;
    }
    Some(i64::from_le_bytes(bytes[8..16].try_into().ok()?))
}

/// Builds frames into a buffer that is written as a whole.
#[derive(Default)]
pub struct FrameWriter {
    buf: Vec<u8>,
    open: Option<OpenFrame>,
}

struct OpenFrame {
    start: usize,
    first_seq: i64,
    events: u32,
}

impl FrameWriter {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.open = None;
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Starts a frame whose first event (if it gets any) is `first_seq`.
    pub fn begin(&mut self, first_seq: i64) {
        debug_assert!(self.open.is_none());
        let start = self.buf.len();
        self.buf.resize(start + FRAME_HEADER_LEN, 0);
        self.open = Some(OpenFrame {
            start,
            first_seq,
            events: 0,
        });
    }

    /// Drops the open frame (its request failed).
    pub fn abandon(&mut self) {
        if let Some(open) = self.open.take() {
            self.buf.truncate(open.start);
        }
    }

    /// Seals the open frame; an empty one is dropped. Returns its offset in the buffer.
    pub fn finish(&mut self) -> Option<usize> {
        let open = self.open.take()?;
        let body_len = self.buf.len() - open.start - FRAME_HEADER_LEN;
        if body_len == 0 {
            self.buf.truncate(open.start);
            return None;
        }
        let h = &mut self.buf[open.start..open.start + FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
        h[8..16].copy_from_slice(&open.first_seq.to_le_bytes());
        h[16..20].copy_from_slice(&open.events.to_le_bytes());
        let crc = frame_crc(
            &self.buf[open.start..open.start + 20],
            &self.buf[open.start + FRAME_HEADER_LEN..],
        );
        self.buf[open.start + 20..open.start + FRAME_HEADER_LEN]
            .copy_from_slice(&crc.to_le_bytes());
        Some(open.start)
    }

    pub fn event(&mut self, e: &EventRecord<'_>) {
        if let Some(open) = &mut self.open {
            open.events += 1;
        }
        let b = &mut self.buf;
        b.push(TAG_EVENT);
        b.extend_from_slice(&e.seq.to_le_bytes());
        b.extend_from_slice(&e.id.to_le_bytes());
        b.extend_from_slice(&e.received_at_ms.to_le_bytes());
        b.extend_from_slice(&e.event_time_ms.to_le_bytes());
        let flags = u8::from(e.duplicate_of.is_some()) | (u8::from(e.claim.is_some()) << 1);
        b.push(flags);
        if let Some(original) = e.duplicate_of {
            b.extend_from_slice(&original.to_le_bytes());
        }
        if let Some((key, expires_at)) = &e.claim {
            b.extend_from_slice(&key.0);
            b.extend_from_slice(&expires_at.to_le_bytes());
        }
        let source = e.source.as_bytes();
        let source_len = source.len().min(u16::MAX as usize);
        b.extend_from_slice(&(source_len as u16).to_le_bytes());
        b.extend_from_slice(&source[..source_len]);
        b.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
        b.extend_from_slice(e.payload.as_bytes());
    }

    pub fn delivery(&mut self, d: &DeliveryRecord) {
        let b = &mut self.buf;
        b.push(TAG_DELIVERY);
        b.extend_from_slice(&d.key.0);
        b.extend_from_slice(&d.body_hash.0);
        b.extend_from_slice(&d.expires_at.to_le_bytes());
        b.extend_from_slice(&(d.events.len() as u32).to_le_bytes());
        for id in &d.events {
            b.extend_from_slice(&id.to_le_bytes());
        }
    }

    pub fn claim(&mut self, key: DedupKey, event: u128, expires_at: i64) {
        let b = &mut self.buf;
        b.push(TAG_CLAIM);
        b.extend_from_slice(&key.0);
        b.extend_from_slice(&event.to_le_bytes());
        b.extend_from_slice(&expires_at.to_le_bytes());
    }
}

fn frame_crc(header: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), body)
}

/// A frame's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: usize,
    pub first_seq: i64,
    pub events: u32,
}

impl FrameHeader {
    pub fn total_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len
    }

    /// The last sequence number in the frame (`first_seq - 1` when it has no events).
    pub fn last_seq(&self) -> i64 {
        self.first_seq + i64::from(self.events) - 1
    }
}

/// What the bytes at a frame boundary are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole frame whose checksum matches.
    Frame { header: FrameHeader, body: &'a [u8] },
    /// The bytes end before the frame does: `needed` bytes from the frame's start are needed.
    Incomplete { needed: usize },
    /// Not a valid frame (bad magic, impossible length or checksum mismatch).
    Bad(&'static str),
}

pub fn parse_frame(bytes: &[u8]) -> Parsed<'_> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Parsed::Incomplete {
            needed: FRAME_HEADER_LEN,
        };
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
    if u32_at(0) != FRAME_MAGIC {
        return Parsed::Bad("no frame starts here");
    }
    let body_len = u32_at(4) as usize;
    if body_len == 0 || body_len > MAX_FRAME_BODY {
        return Parsed::Bad("impossible frame length");
    }
    let total = FRAME_HEADER_LEN + body_len;
    if bytes.len() < total {
        return Parsed::Incomplete { needed: total };
    }
    let body = &bytes[FRAME_HEADER_LEN..total];
    if frame_crc(&bytes[..20], body) != u32_at(20) {
        return Parsed::Bad("checksum mismatch");
    }
    Parsed::Frame {
        header: FrameHeader {
            body_len,
            first_seq: i64::from_le_bytes(bytes[8..16].try_into().unwrap_or([0; 8])),
            events: u32_at(16),
        },
        body,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable record: {0}")]
pub struct DecodeError(pub &'static str);

/// The records of a frame body, in order.
pub struct Records<'a> {
    rest: &'a [u8],
}

pub fn records(body: &[u8]) -> Records<'_> {
    Records { rest: body }
}

impl<'a> Records<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError("record runs past its frame"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?
            .try_into()
            .map_err(|_| DecodeError("short field"))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn key(&mut self) -> Result<DedupKey, DecodeError> {
        Ok(DedupKey(self.array()?))
    }
    fn str(&mut self, len: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError("text is not UTF-8"))
    }

    fn next_record(&mut self) -> Result<Record<'a>, DecodeError> {
        match self.array::<1>()?[0] {
            TAG_EVENT => {
                let seq = self.i64()?;
                let id = self.u128()?;
                let received_at_ms = self.i64()?;
                let event_time_ms = self.i64()?;
                let flags = self.array::<1>()?[0];
                let duplicate_of = if flags & 1 != 0 {
                    Some(self.u128()?)
                } else {
                    None
                };
                let claim = if flags & 2 != 0 {
                    Some((self.key()?, self.i64()?))
                } else {
                    None
                };
                let source_len = u16::from_le_bytes(self.array()?) as usize;
                let source = self.str(source_len)?;
                let payload_len = self.u32()? as usize;
                let payload = self.str(payload_len)?;
                Ok(Record::Event(EventRecord {
                    seq,
                    id,
                    received_at_ms,
                    event_time_ms,
                    duplicate_of,
                    claim,
                    source,
                    payload,
                }))
            }
            TAG_DELIVERY => {
                let key = self.key()?;
                let body_hash = self.key()?;
                let expires_at = self.i64()?;
                let n = self.u32()? as usize;
                if n > self.rest.len() / 16 {
                    return Err(DecodeError(
                        "delivery lists more events than its frame holds",
                    ));
                }
                let events = (0..n).map(|_| self.u128()).collect::<Result<_, _>>()?;
                Ok(Record::Delivery(DeliveryRecord {
                    key,
                    body_hash,
                    expires_at,
                    events,
                }))
            }
            TAG_CLAIM => Ok(Record::Claim {
                key: self.key()?,
                event: self.u128()?,
                expires_at: self.i64()?,
            }),
            _ => Err(DecodeError("unknown record type")),
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let next = self.next_record();
        if next.is_err() {
            self.rest = &[];
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// seq, id, received, event time, duplicate of, claim, source, payload
    type EventParts = (
        i64,
        u128,
        i64,
        i64,
        Option<u128>,
        Option<([u8; 16], i64)>,
        String,
        String,
    );

    fn event_strategy() -> impl Strategy<Value = EventParts> {
        (
            1i64..i64::MAX / 2,
            any::<u128>(),
            any::<i64>(),
            any::<i64>(),
            any::<Option<u128>>(),
            any::<Option<([u8; 16], i64)>>(),
            "[a-z_-]{1,40}",
            ".{0,300}",
        )
    }

    proptest! {
        /// Whatever is written reads back the same, frame by frame.
        #[test]
        fn frames_round_trip(frames in prop::collection::vec(prop::collection::vec(event_strategy(), 0..6), 1..5),
                             delivery in any::<Option<([u8; 16], [u8; 16], i64, Vec<u128>)>>()) {
            let mut w = FrameWriter::default();
            let mut expected = Vec::new();
            for (n, events) in frames.iter().enumerate() {
                w.begin(events.first().map_or(1, |e| e.0));
                let mut records = Vec::new();
                for e in events {
                    let r = EventRecord { seq: e.0, id: e.1, received_at_ms: e.2, event_time_ms: e.3,
                        duplicate_of: e.4, claim: e.5.map(|(k, x)| (DedupKey(k), x)), source: &e.6, payload: &e.7 };
                    w.event(&r);
                    records.push(Record::Event(r));
                }
                if n == 0 && let Some((k, h, x, ids)) = &delivery {
                    let d = DeliveryRecord { key: DedupKey(*k), body_hash: DedupKey(*h), expires_at: *x, events: ids.clone() };
                    w.delivery(&d);
                    records.push(Record::Delivery(d));
                }
                if w.finish().is_some() {
                    expected.push(records);
                }
            }
            let mut at = 0;
            let bytes = w.bytes();
            let mut seen = Vec::new();
            while at < bytes.len() {
                let Parsed::Frame { header, body } = parse_frame(&bytes[at..]) else { panic!("frame at {at}") };
                seen.push(records(body).collect::<Result<Vec<_>, _>>().unwrap());
                at += header.total_len();
            }
            prop_assert_eq!(seen, expected);
        }

        /// Any single flipped bit in a frame is caught by its checksum or its header checks;
        /// any prefix of a frame is incomplete, never a frame.
        #[test]
        fn damage_and_truncation_are_detected(payload in ".{1,200}", bit in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
            let mut w = FrameWriter::default();
            w.begin(7);
            w.event(&EventRecord { seq: 7, id: 1, received_at_ms: 2, event_time_ms: 3, duplicate_of: None,
                claim: Some((DedupKey([9; 16]), 4)), source: "web", payload: &payload });
            w.finish();
            let bytes = w.bytes().to_vec();
            let mut damaged = bytes.clone();
            let b = bit.index(damaged.len() * 8);
            damaged[b / 8] ^= 1 << (b % 8);
            let parsed_as_frame = matches!(parse_frame(&damaged), Parsed::Frame { .. });
            prop_assert!(!parsed_as_frame);
            let cut = cut.index(bytes.len());
            let incomplete = matches!(parse_frame(&bytes[..cut]), Parsed::Incomplete { .. });
            prop_assert!(incomplete, "cut at {}", cut);
        }

        /// Garbage never panics the record decoder.
        #[test]
        fn any_body_decodes_or_errs(body in prop::collection::vec(any::<u8>(), 0..200)) {
            for r in records(&body) { let _ = r; }
        }
    }

    #[test]
    fn an_empty_frame_is_not_written() {
        let mut w = FrameWriter::default();
        w.begin(1);
        assert_eq!(w.finish(), None);
        assert!(w.is_empty());
    }
}
