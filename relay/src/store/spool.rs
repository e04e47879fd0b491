//! The on-disk spool: flows waiting for ClickHouse, in append-only segment files.
//!
//! # Format
//!
//! A segment is `<spool_dir>/<sequence, 20 digits>.spool`. It starts with a header, then
//! records, each on its own:
//!
//! ```text
//! header:  "PSCSPL01" | u32 LE cluster length | cluster (UTF-8) | u32 LE CRC-32 of the previous two
//! record:  u32 LE payload length | u32 LE CRC-32 of (length bytes ++ payload) | payload
//! payload: the Flow's protobuf encoding
//! ```
//!
//! The payload is the Flow itself, not its row: a replay runs
//! [`FlowRow::from_flow`](periscope_storage::FlowRow::from_flow) again, so it produces exactly
//! the row of the first attempt (same uuid), and a spool written by an older relay still replays
//! after the row layout gained columns. The cluster name the flows were received under is kept
//! in the header.
//!
//! Reading stops at the first record that is short (a torn write at the end: the relay or the
//! machine stopped in the middle of an append) or whose checksum does not match (nothing after
//! it can be trusted, its length included); what was before it is replayed, the rest is counted
//! as corrupt.
//!
//! # Life of a segment
//!
//! Appends go to one active segment, which is sealed (flushed and synced) when it reaches its
//! size, when the writer wants to replay it, or at shutdown; sealed segments are immutable and
//! replayed oldest first, and each is deleted once its insert succeeded. At open, every segment
//! already there (from before a restart) is sealed and queued for replay; new appends always go
//! to a new segment, so a torn tail stays at the end of its file.
//!
//! The spool is bounded: [`Spool::append`] refuses records that would take the files on disk
//! beyond `max_bytes` (headers included) and reports them as dropped.
//!
//! Appends are buffered writes flushed to the OS at the end of each batch (they survive a crash
//! of the relay, and are synced when a segment is sealed); a crash of the machine can lose the
//! unsynced tail of the active segment, which the checksums then detect.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use periscope_proto::flow::Flow;
use prost::Message;

use super::{Result, StoreError};

const MAGIC: &[u8; 8] = b"PSCSPL01";
const EXTENSION: &str = "spool";
/// A record longer than this is taken for corruption (a Flow is a few hundred bytes).
const MAX_RECORD: usize = 16 << 20;
/// Bytes of a record besides its payload.
pub const RECORD_OVERHEAD: u64 = 8;

/// A sealed segment waiting for replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Sequence number (order of creation).
    pub seq: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its size on disk.
    pub bytes: u64,
}

/// What [`Spool::append`] did with a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Flows written.
    pub flows: u64,
    /// Bytes written (records, plus a header when a segment was started).
    pub bytes: u64,
    /// Flows refused because the spool is full.
    pub dropped: u64,
}

/// What a segment holds.
#[derive(Debug, Default)]
pub struct SegmentContents {
    /// The cluster name the flows were received under.
    pub cluster: String,
    /// The readable flows, in append order.
    pub flows: Vec<Flow>,
    /// Records or trailing bytes that could not be read (torn or corrupt): `(records, bytes)`;
    /// a torn tail counts as one record.
    pub corrupt_records: u64,
    /// Bytes skipped with them.
    pub corrupt_bytes: u64,
}

struct Active {
    seg: Segment,
    file: BufWriter<File>,
    records: u64,
}

/// The spool of one writer. Not shared between processes: one relay per `spool_dir`.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_max: u64,
    cluster: String,
    /// Bytes of every segment file (sealed and active).
    total: u64,
    sealed: VecDeque<Segment>,
    active: Option<Active>,
    next_seq: u64,
}

fn header(cluster: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + cluster.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&(cluster.len() as u32).to_le_bytes());
    h.extend_from_slice(cluster.as_bytes());
    let crc = crc32fast::hash(&h[MAGIC.len()..]);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Appends the record of `payload` to `out`.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.{EXTENSION}")
}

fn parse_segment_name(path: &Path) -> Option<u64> {
    if path.extension()? != EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (stem.len() == 20).then_some(())?;
    stem.parse().ok()
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`: every segment already there is queued
    /// for replay. `cluster` is recorded with new flows.
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64, cluster: &str) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(StoreError::spool("creating", &dir))?;
        let mut sealed = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(StoreError::spool("listing", &dir))? {
            let entry = entry.map_err(StoreError::spool("listing", &dir))?;
            let path = entry.path();
            let Some(seq) = parse_segment_name(&path) else {
                continue;
            };
            let bytes = entry
                .metadata()
                .map_err(StoreError::spool("reading the size of", &path))?
                .len();
            sealed.push(Segment { seq, path, bytes });
        }
        sealed.sort_by_key(|s| s.seq);
        let next_seq = sealed.last().map_or(0, |s| s.seq + 1);
        let total = sealed.iter().map(|s| s.bytes).sum();
        if !sealed.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                segments = sealed.len(),
                bytes = total,
                "spool holds segments from before; they will be replayed"
            );
        }
        Ok(Self {
            // A few segments per spool, so that a replayed one frees space early, but not tiny
            // ones (each is one INSERT) nor huge ones (a replay reads one into memory).
            segment_max: (max_bytes / 8).clamp(64 << 10, 8 << 20),
            dir,
            max_bytes,
            cluster: cluster.to_owned(),
            total,
            sealed: sealed.into(),
            active: None,
            next_seq,
        })
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk (every segment, headers included).
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Segments on disk (sealed, plus the active one).
    pub fn segments(&self) -> usize {
        self.sealed.len() + usize::from(self.active.is_some())
    }

    /// Whether nothing waits for replay.
    pub fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.active.as_ref().is_none_or(|a| a.records == 0)
    }

    /// Appends `flows`, in order, until the spool is full; the rest is reported as dropped.
    /// The batch is flushed to the OS before this returns.
    pub fn append(&mut self, flows: &[Flow]) -> Result<Appended> {
        let mut out = Appended::default();
        let mut record = Vec::new();
        for (i, flow) in flows.iter().enumerate() {
            record.clear();
            encode_record(&flow.encode_to_vec(), &mut record);
            if self
                .active
                .as_ref()
                .is_some_and(|a| a.seg.bytes >= self.segment_max)
            {
                self.seal()?;
            }
            let header_len = if self.active.is_none() {
                header(&self.cluster).len() as u64
            } else {
                0
            };
            if self.total + header_len + record.len() as u64 > self.max_bytes {
                out.dropped = (flows.len() - i) as u64;
                break;
            }
            if self.active.is_none() {
                self.start_segment()?;
                out.bytes += header_len;
            }
            let active = self.active.as_mut().expect("started above");
            active
                .file
                .write_all(&record)
                .map_err(StoreError::spool("appending to", &active.seg.path))?;
            active.seg.bytes += record.len() as u64;
            active.records += 1;
            self.total += record.len() as u64;
            out.bytes += record.len() as u64;
            out.flows += 1;
        }
        if let Some(active) = &mut self.active {
            active
                .file
                .flush()
                .map_err(StoreError::spool("writing", &active.seg.path))?;
        }
        Ok(out)
    }

    fn start_segment(&mut self) -> Result<()> {
        let seq = self.next_seq;
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(StoreError::spool("creating", &path))?;
        let mut file = BufWriter::with_capacity(256 << 10, file);
        let h = header(&self.cluster);
        file.write_all(&h)
            .map_err(StoreError::spool("writing the header of", &path))?;
        self.next_seq += 1;
        self.total += h.len() as u64;
        self.active = Some(Active {
            seg: Segment {
                seq,
                path,
                bytes: h.len() as u64,
            },
            file,
            records: 0,
        });
        Ok(())
    }

    /// Flushes and syncs the active segment and queues it for replay (a no-op without one).
    pub fn seal(&mut self) -> Result<()> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let path = active.seg.path.clone();
        active
            .file
            .flush()
            .map_err(StoreError::spool("writing", &path))?;
        active
            .file
            .get_ref()
            .sync_data()
            .map_err(StoreError::spool("syncing", &path))?;
        self.sealed.push_back(active.seg);
        Ok(())
    }

    /// The oldest segment waiting for replay, sealing the active one when nothing older waits.
    /// It stays in the spool until [`Spool::remove`].
    pub fn next_replay(&mut self) -> Result<Option<Segment>> {
        if self.sealed.is_empty() && self.active.as_ref().is_some_and(|a| a.records > 0) {
            self.seal()?;
        }
        Ok(self.sealed.front().cloned())
    }

    /// Deletes a replayed segment.
    pub fn remove(&mut self, seg: &Segment) -> Result<()> {
        let Some(at) = self.sealed.iter().position(|s| s.seq == seg.seq) else {
            return Ok(());
        };
        let seg = self.sealed.remove(at).expect("position is in range");
        match std::fs::remove_file(&seg.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                // Keep accounting for it: it is still there.
                self.sealed.insert(at, seg.clone());
                return Err(StoreError::spool("deleting", &seg.path)(e));
            }
        }
        self.total = self.total.saturating_sub(seg.bytes);
        Ok(())
    }

    /// Renames a segment that the server keeps refusing to `<name>.rejected` (kept for
    /// inspection, no longer counted nor replayed).
    pub fn reject(&mut self, seg: &Segment) -> Result<()> {
        let Some(at) = self.sealed.iter().position(|s| s.seq == seg.seq) else {
            return Ok(());
        };
        let target = seg.path.with_extension("rejected");
        std::fs::rename(&seg.path, &target).map_err(StoreError::spool("renaming", &seg.path))?;
        let seg = self.sealed.remove(at).expect("position is in range");
        self.total = self.total.saturating_sub(seg.bytes);
        Ok(())
    }
}

/// Reads a segment file: its cluster and every readable flow, up to the first torn or corrupt
/// record.
pub fn read_segment(path: &Path) -> Result<SegmentContents> {
    let data = std::fs::read(path).map_err(StoreError::spool("reading", path))?;
    Ok(decode_segment(&data))
}

/// Decodes a segment's bytes (see the module documentation).
pub fn decode_segment(data: &[u8]) -> SegmentContents {
    let mut out = SegmentContents::default();
    let torn = |out: &mut SegmentContents, rest: usize| {
        if rest > 0 {
            out.corrupt_records += 1;
            out.corrupt_bytes += rest as u64;
        }
    };
    // Header.
    let Some(body) = (|| {
        let rest = data.strip_prefix(MAGIC)?;
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let cluster = rest.get(4..4 + len)?;
        let crc = u32::from_le_bytes(rest.get(4 + len..8 + len)?.try_into().ok()?);
        (crc32fast::hash(&rest[..4 + len]) == crc).then_some(())?;
        out.cluster = String::from_utf8(cluster.to_vec()).ok()?;
        Some(&rest[8 + len..])
    })() else {
        torn(&mut out, data.len());
        return out;
    };
    let mut at = 0;
    while at < body.len() {
        let rest = &body[at..];
        let Some(head) = rest.get(..8) else {
            torn(&mut out, rest.len());
            break;
        };
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let Some(payload) = rest.get(8..8 + len).filter(|_| len <= MAX_RECORD) else {
            torn(&mut out, rest.len());
            break;
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head[..4]);
        hasher.update(payload);
        if hasher.finalize() != crc {
            torn(&mut out, rest.len());
            break;
        }
        match Flow::decode(payload) {
            Ok(flow) => out.flows.push(flow),
            // The checksum matched, so the length is right: skip just this record.
            Err(_) => {
                out.corrupt_records += 1;
                out.corrupt_bytes += 8 + len as u64;
            }
        }
        at += 8 + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(i: u32) -> Flow {
        Flow {
            uuid: format!("00000000-0000-4000-8000-{i:012}"),
            node_name: format!("node-{i}"),
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i64::from(i),
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn flows(range: std::ops::Range<u32>) -> Vec<Flow> {
        range.map(flow).collect()
    }

    fn replay_all(spool: &mut Spool) -> Vec<Flow> {
        let mut out = Vec::new();
        while let Some(seg) = spool.next_replay().unwrap() {
            let c = read_segment(&seg.path).unwrap();
            assert_eq!(c.cluster, "c1");
            assert_eq!(c.corrupt_records, 0);
            out.extend(c.flows);
            spool.remove(&seg).unwrap();
        }
        out
    }

    #[test]
    fn appends_replay_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10 << 20, "c1").unwrap();
        spool.segment_max = 1000; // many small segments
        assert!(spool.is_empty());
        let a = spool.append(&flows(0..50)).unwrap();
        assert_eq!((a.flows, a.dropped), (50, 0));
        assert!(spool.segments() > 1, "rotated");
        assert_eq!(spool.bytes(), dir_bytes(dir.path()));
        drop(spool);
        // A restart: everything comes back, then new appends go after it.
        let mut spool = Spool::open(dir.path(), 10 << 20, "c1").unwrap();
        assert!(!spool.is_empty());
        spool.append(&flows(50..60)).unwrap();
        assert_eq!(replay_all(&mut spool), flows(0..60));
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert_eq!(dir_bytes(dir.path()), 0);
    }

    fn dir_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn bounded_by_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let mut r = Vec::new();
            encode_record(&flow(1).encode_to_vec(), &mut r);
            r.len() as u64
        };
        let max = header("c1").len() as u64 + 10 * one;
        let mut spool = Spool::open(dir.path(), max, "c1").unwrap();
        let a = spool.append(&flows(0..25)).unwrap();
        assert_eq!((a.flows, a.dropped), (10, 15));
        assert!(spool.bytes() <= max);
        let a = spool.append(&flows(25..26)).unwrap();
        assert_eq!((a.flows, a.dropped), (0, 1));
        assert_eq!(replay_all(&mut spool), flows(0..10));
        // Space is free again.
        assert_eq!(spool.append(&flows(0..3)).unwrap().flows, 3);
    }

    #[test]
    fn torn_last_record_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10 << 20, "c1").unwrap();
        spool.append(&flows(0..5)).unwrap();
        spool.seal().unwrap();
        let seg = spool.next_replay().unwrap().unwrap();
        drop(spool);
        let len = std::fs::metadata(&seg.path).unwrap().len();
        // Cut the last record in half, as a crash in the middle of a write would.
        let f = OpenOptions::new().write(true).open(&seg.path).unwrap();
        f.set_len(len - 10).unwrap();
        let c = read_segment(&seg.path).unwrap();
        assert_eq!(c.flows, flows(0..4));
        assert_eq!(c.corrupt_records, 1);
        // A flipped bit in the middle: the records before it are kept.
        let mut data = std::fs::read(&seg.path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x40;
        let c = decode_segment(&data);
        assert!(c.flows.len() < 4 && c.corrupt_records == 1, "{c:?}");
        assert_eq!(c.flows, flows(0..c.flows.len() as u32));
        // A header cut short: nothing, counted.
        let c = decode_segment(&data[..6]);
        assert!(c.flows.is_empty() && c.corrupt_bytes == 6);
    }

    #[test]
    fn torn_tail_after_restart_is_skipped_and_later_appends_survive() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 10 << 20, "c1").unwrap();
        spool.append(&flows(0..3)).unwrap();
        let path = spool.active.as_ref().unwrap().seg.path.clone();
        drop(spool);
        // Half a record at the end of the file.
        let mut partial = Vec::new();
        encode_record(&flow(3).encode_to_vec(), &mut partial);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&partial[..partial.len() / 2]).unwrap();
        drop(f);
        let mut spool = Spool::open(dir.path(), 10 << 20, "c1").unwrap();
        spool.append(&flows(10..12)).unwrap();
        let mut got = Vec::new();
        let mut corrupt = 0;
        while let Some(seg) = spool.next_replay().unwrap() {
            let c = read_segment(&seg.path).unwrap();
            corrupt += c.corrupt_records;
            got.extend(c.flows);
            spool.remove(&seg).unwrap();
        }
        assert_eq!(corrupt, 1);
        let mut want = flows(0..3);
        want.extend(flows(10..12));
        assert_eq!(got, want);
    }

    #[test]
    fn foreign_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        std::fs::write(dir.path().join("1.spool"), "x").unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, "c1").unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
    }
}
