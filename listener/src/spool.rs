//! The disk spool: batches kept in `--spool-dir` while no replayer is up, and what was still
//! unacknowledged at shutdown, so that neither an outage longer than memory allows nor a
//! listener restart loses them. Bounded by `--spool-bytes`; when full the newest batch is
//! refused or the oldest segment deleted (`--buffer-policy`), each record counted.
//!
//! Format: segment files `<sequence>.spool`, each a run of frames `[u32 little-endian length]
//! [RecordBatch protobuf]`, written in order and deleted once read back. A segment cut short by
//! a crash is read up to its last whole frame. Batches keep their listener instance, so
//! replayers tell them apart from the next process's records.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use tapwire_shared::proto;

use crate::metrics::{DropReason, ListenerMetrics};
use crate::queue::BufferPolicy;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 4 << 20;
/// No frame is larger (the replayer's message limit): a larger length read back means the file
/// is corrupt, not a reason to allocate gigabytes.
const MAX_FRAME_BYTES: usize = tapwire_shared::link::MAX_MESSAGE_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

struct Segment {
    path: PathBuf,
    bytes: u64,
    /// Frames not yet read back, with their record counts: (requests, responses).
    frames: VecDeque<(u64, u64)>,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    policy: BufferPolicy,
    /// Oldest first; the last one is being written.
    segments: VecDeque<Segment>,
    next_sequence: u64,
    writer: Option<File>,
    /// Reading the oldest segment: the open file, positioned at its next frame.
    reader: Option<BufReader<File>>,
    /// Totals over every segment's unread frames, kept as frames come and go.
    on_disk: Totals,
    metrics: ListenerMetrics,
}

/// Requests, responses and bytes in the spool.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    requests: u64,
    responses: u64,
    bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. What an earlier run left there is kept and
    /// counted as restored: it will be sent before it is deleted.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        policy: BufferPolicy,
        metrics: ListenerMetrics,
    ) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let path = entry.map_err(io_error(dir))?.path();
            let sequence = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_suffix(".spool"))
                .and_then(|stem| stem.parse::<u64>().ok());
            if let Some(sequence) = sequence {
                found.push((sequence, path));
            }
        }
        found.sort();
        let mut spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            policy,
            segments: VecDeque::new(),
            next_sequence: found.last().map_or(0, |(sequence, _)| sequence + 1),
            writer: None,
            reader: None,
            on_disk: Totals::default(),
            metrics,
        };
        for (_, path) in found {
            let segment = scan(&path)?;
            let (requests, responses) = segment.counts();
            spool.on_disk.requests += requests;
            spool.on_disk.responses += responses;
            spool.on_disk.bytes += segment.bytes;
            spool.metrics.records_restored.inc_by(requests);
            spool.metrics.responses_restored.inc_by(responses);
            tracing::info!(path = %path.display(), requests, responses, "restoring spooled records");
            spool.segments.push_back(segment);
        }
        spool.update_gauge();
        Ok(spool)
    }

    pub fn is_empty(&self) -> bool {
        self.segments
            .iter()
            .all(|segment| segment.frames.is_empty())
    }

    /// Requests on disk, not yet read back.
    pub fn requests(&self) -> u64 {
        self.on_disk.requests
    }

    pub fn responses(&self) -> u64 {
        self.on_disk.responses
    }

    fn bytes(&self) -> u64 {
        self.on_disk.bytes
    }

    fn update_gauge(&self) {
        self.metrics.records_spooled.set(self.requests() as i64);
    }

    /// Appends a batch. Past `--spool-bytes` the batch is refused or the oldest segments
    /// deleted, by policy; either way the records are counted as dropped (`spool_full`). A
    /// write error is logged and counts the batch as dropped (`spool_error`).
    pub fn write(&mut self, batch: proto::RecordBatch) {
        let (requests, responses) = (batch.records.len() as u64, batch.responses.len() as u64);
        let frame_len = 4 + batch.encoded_len() as u64;
        while self.bytes() + frame_len > self.max_bytes {
            let evictable = self.policy == BufferPolicy::DropOldest && self.segments.len() > 1;
            if !evictable {
                self.count_dropped(DropReason::SpoolFull, requests, responses);
                return;
            }
            self.delete_oldest(DropReason::SpoolFull);
        }
        if let Err(error) = self.append(&batch, frame_len) {
            tracing::warn!(dir = %self.dir.display(), %error, requests, "cannot write to the spool");
            self.count_dropped(DropReason::SpoolError, requests, responses);
            return;
        }
        self.update_gauge();
    }

    fn append(&mut self, batch: &proto::RecordBatch, frame_len: u64) -> std::io::Result<()> {
        let full = self
            .segments
            .back()
            .is_none_or(|last| last.bytes + frame_len > SEGMENT_BYTES);
        if full || self.writer.is_none() {
            let path = self.dir.join(format!("{:020}.spool", self.next_sequence));
            self.next_sequence += 1;
            self.writer = Some(
                OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)?,
            );
            self.segments.push_back(Segment {
                path,
                bytes: 0,
                frames: VecDeque::new(),
            });
        }
        let mut frame = Vec::with_capacity(frame_len as usize);
        frame.extend_from_slice(&((frame_len - 4) as u32).to_le_bytes());
        batch.encode(&mut frame).map_err(std::io::Error::other)?;
        let writer = self.writer.as_mut().expect("a segment was opened above");
        writer.write_all(&frame)?;
        let segment = self
            .segments
            .back_mut()
            .expect("a segment was opened above");
        segment.bytes += frame_len;
        let (requests, responses) = (batch.records.len() as u64, batch.responses.len() as u64);
        segment.frames.push_back((requests, responses));
        self.on_disk.requests += requests;
        self.on_disk.responses += responses;
        self.on_disk.bytes += frame_len;
        Ok(())
    }

    /// The encoded size of the oldest batch, to reserve memory for it before reading it.
    pub fn next_len(&self) -> Option<usize> {
        let segment = self.segments.iter().find(|s| !s.frames.is_empty())?;
        // Bytes per batch are not indexed; the segment's average is a fair reservation, and
        // never more than the whole segment.
        Some((segment.bytes / segment.frames.len() as u64) as usize)
    }

    /// Reads the oldest batch back, deleting segments once read. A frame that cannot be read
    /// ends its segment (counted as `spool_error`).
    pub fn pop_oldest(&mut self) -> Option<proto::RecordBatch> {
        loop {
            let segment = self.segments.front_mut()?;
            if segment.frames.is_empty() {
                if self.segments.len() == 1 && self.writer.is_some() {
                    return None;
                }
                self.delete_oldest(DropReason::SpoolError);
                continue;
            }
            if self.reader.is_none() {
                match File::open(&segment.path) {
                    Ok(file) => self.reader = Some(BufReader::new(file)),
                    Err(error) => {
                        tracing::warn!(path = %segment.path.display(), %error, "cannot read a spool segment");
                        self.delete_oldest(DropReason::SpoolError);
                        continue;
                    }
                }
            }
            let reader = self.reader.as_mut().expect("opened above");
            let segment = self.segments.front_mut().expect("checked above");
            match read_frame(reader) {
                Some(batch) => {
                    if let Some((requests, responses)) = segment.frames.pop_front() {
                        self.on_disk.requests -= requests;
                        self.on_disk.responses -= responses;
                    }
                    self.update_gauge();
                    return Some(batch);
                }
                None => {
                    tracing::warn!(path = %segment.path.display(), "spool segment ends early");
                    self.delete_oldest(DropReason::SpoolError);
                }
            }
        }
    }

    /// Deletes the oldest segment; records still in it are counted as dropped for `reason`.
    fn delete_oldest(&mut self, reason: DropReason) {
        let Some(segment) = self.segments.pop_front() else {
            return;
        };
        self.reader = None;
        if self.segments.is_empty() {
            self.writer = None;
        }
        let (requests, responses) = segment.counts();
        self.on_disk.requests -= requests;
        self.on_disk.responses -= responses;
        self.on_disk.bytes -= segment.bytes;
        self.count_dropped(reason, requests, responses);
        if let Err(error) = std::fs::remove_file(&segment.path) {
            tracing::warn!(path = %segment.path.display(), %error, "cannot delete a spool segment");
        }
        self.update_gauge();
    }

    fn count_dropped(&self, reason: DropReason, requests: u64, responses: u64) {
        self.metrics.dropped(reason).inc_by(requests);
        self.metrics.response_dropped(reason).inc_by(responses);
    }
}

impl Segment {
    fn counts(&self) -> (u64, u64) {
        self.frames
            .iter()
            .fold((0, 0), |(q, s), (requests, responses)| {
                (q + requests, s + responses)
            })
    }
}

fn read_frame(reader: &mut impl Read) -> Option<proto::RecordBatch> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).ok()?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return None;
    }
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).ok()?;
    proto::RecordBatch::decode(frame.as_slice()).ok()
}

/// A segment left by an earlier run: its whole frames, up to the first one cut short.
fn scan(path: &Path) -> Result<Segment, SpoolError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut reader = BufReader::new(file);
    let mut segment = Segment {
        path: path.to_owned(),
        bytes: 0,
        frames: VecDeque::new(),
    };
    while let Some(batch) = read_frame(&mut reader) {
        segment.bytes += 4 + batch.encoded_len() as u64;
        segment
            .frames
            .push_back((batch.records.len() as u64, batch.responses.len() as u64));
    }
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn batch(first_id: u64, records: u64) -> proto::RecordBatch {
        proto::RecordBatch {
            listener_id: "spool-test".into(),
            listener_instance: 9,
            records: (first_id..first_id + records)
                .map(|id| proto::RequestRecord {
                    id,
                    request: bytes::Bytes::from(vec![b'x'; 1000]),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn ids(batch: &proto::RecordBatch) -> Vec<u64> {
        batch.records.iter().map(|r| r.id).collect()
    }

    fn open(dir: &Path, max_bytes: u64, policy: BufferPolicy) -> (Spool, ListenerMetrics) {
        let metrics = ListenerMetrics::register(&mut Registry::default());
        let spool = Spool::open(dir, max_bytes, policy, metrics.clone()).unwrap();
        (spool, metrics)
    }

    #[test]
    fn batches_come_back_in_order_also_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path(), 1 << 30, BufferPolicy::DropNewest);
        for first in [0, 10, 20] {
            spool.write(batch(first, 10));
        }
        assert_eq!(
            ids(&spool.pop_oldest().unwrap()),
            (0..10).collect::<Vec<_>>()
        );
        drop(spool);

        // A new process finds what is left, counts it as restored, and reads it in order.
        let (mut spool, metrics) = open(dir.path(), 1 << 30, BufferPolicy::DropNewest);
        assert_eq!(
            metrics.records_restored.get(),
            30,
            "the first batch was not deleted yet"
        );
        assert_eq!(spool.requests(), 30);
        let mut read = Vec::new();
        while let Some(batch) = spool.pop_oldest() {
            read.extend(ids(&batch));
        }
        // A segment is deleted once fully read; the partly read one is read again (at-least-once).
        assert_eq!(read, (0..30).collect::<Vec<_>>());
        spool.write(batch(30, 1));
        assert_eq!(ids(&spool.pop_oldest().unwrap()), vec![30]);
        assert!(spool.is_empty());
    }

    #[test]
    fn a_full_spool_refuses_the_newest_or_evicts_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about 2.5 batches of 10 KB.
        let (mut spool, metrics) = open(dir.path(), 26_000, BufferPolicy::DropNewest);
        for first in [0, 10, 20] {
            spool.write(batch(first, 10));
        }
        assert_eq!(metrics.dropped(DropReason::SpoolFull).get(), 10);
        assert_eq!(spool.requests(), 20);

        let dir = tempfile::tempdir().unwrap();
        let (mut spool, metrics) = open(dir.path(), 26_000, BufferPolicy::DropOldest);
        // Small segments so the oldest can be evicted alone.
        for first in [0, 10, 20] {
            spool.write(batch(first, 10));
            spool.writer = None;
        }
        assert_eq!(metrics.dropped(DropReason::SpoolFull).get(), 10);
        assert_eq!(ids(&spool.pop_oldest().unwrap())[0], 10, "the oldest went");
    }

    #[test]
    fn a_corrupt_frame_length_ends_its_segment_without_allocating_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path(), 1 << 30, BufferPolicy::DropNewest);
        spool.write(batch(0, 5));
        let path = spool.segments[0].path.clone();
        drop(spool);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&u32::MAX.to_le_bytes()).unwrap();
        file.write_all(b"garbage").unwrap();

        let (mut spool, metrics) = open(dir.path(), 1 << 30, BufferPolicy::DropNewest);
        assert_eq!(metrics.records_restored.get(), 5);
        assert_eq!(ids(&spool.pop_oldest().unwrap()), vec![0, 1, 2, 3, 4]);
        assert!(spool.pop_oldest().is_none());
    }

    #[test]
    fn a_segment_cut_short_is_read_up_to_its_last_whole_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = open(dir.path(), 1 << 30, BufferPolicy::DropNewest);
        spool.write(batch(0, 5));
        spool.write(batch(5, 5));
        let path = spool.segments[0].path.clone();
        drop(spool);
        let length = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(length - 100).unwrap();

        let (mut spool, metrics) = open(dir.path(), 1 << 30, BufferPolicy::DropNewest);
        assert_eq!(metrics.records_restored.get(), 5);
        assert_eq!(ids(&spool.pop_oldest().unwrap()), vec![0, 1, 2, 3, 4]);
        assert!(spool.pop_oldest().is_none());
    }
}
