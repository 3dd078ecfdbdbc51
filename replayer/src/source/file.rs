//! Recorded files as a source: GoReplay `.gor` files (gzipped when the name ends in `.gz`),
//! from one or more glob patterns, merged into one stream in timestamp order and replayed
//! through the same engine as live traffic. Requests (type 1) are replayed; production's
//! responses (type 2) travel with them, paired by id; replayed responses (type 3) are skipped.
//! A message that cannot be read is reported with its file and byte offset, counted
//! (`records_rejected{reason="malformed_record"}`), and reading goes on.
//!
//! Files do not say which connection a request came on, so each request is its own session
//! (`--preserve-connections` has nothing to keep).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tapwire_runtime::Shutdown;
use tapwire_shared::config::ConfigError;
use tapwire_shared::gor::{GorError, GorMessage, GorReader, PayloadType};
use tapwire_shared::http1;
use tapwire_shared::{RequestRecord, ResponseRecord};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use xxhash_rust::xxh3::xxh3_64;

use crate::intake::{Delivered, Intake};
use crate::metrics::ReplayerMetrics;
use crate::outcome::RejectReason;
use crate::pace::Schedule;
use crate::pace::StreamPacing;
use crate::request::Origin;

/// Requests handed to the intake at a time.
const BATCH_RECORDS: usize = 256;
/// Messages read ahead per file, re-sorted by timestamp: a capture writes a request when it is
/// complete, so slightly out of timestamp order. With many files each gets a share of
/// [`READ_AHEAD_TOTAL`], down to [`READ_AHEAD_LEAST`].
const READ_AHEAD: usize = 1024;
const READ_AHEAD_TOTAL: usize = 16_384;
const READ_AHEAD_LEAST: usize = 16;
/// Message bytes read ahead per file at most, and in all.
const READ_AHEAD_BYTES: usize = 8 << 20;
const READ_AHEAD_BYTES_TOTAL: usize = 64 << 20;
const READ_AHEAD_BYTES_LEAST: usize = 64 << 10;
/// Requests remembered for pairing their responses.
const PAIRING_WINDOW: usize = 65_536;
/// Malformed messages logged one by one before only every hundredth is.
const LOGGED_ONE_BY_ONE: u64 = 20;

/// The files to replay and how.
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub files: Vec<PathBuf>,
    /// Start over when done, until shut down (or `--exit-after`).
    pub repeat: bool,
    pub pacing: StreamPacing,
    /// Requests read and not yet finished with at most: reading waits for the targets, so a
    /// fast file fills no queue past what the targets can hold.
    pub in_flight: usize,
}

/// The files of `patterns` (globs), in order; a pattern that matches nothing is an error.
pub fn expand(patterns: &[String]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    for (index, pattern) in patterns.iter().enumerate() {
        let field = format!("input_file[{index}]");
        let matches: Vec<PathBuf> = glob::glob(pattern)
            .map_err(|error| ConfigError::new(&field, format!("{pattern:?}: {error}")))?
            .filter_map(Result::ok)
            .filter(|path| path.is_file())
            .collect();
        if matches.is_empty() {
            return Err(ConfigError::new(
                &field,
                format!("{pattern:?} matches no file"),
            ));
        }
        files.extend(matches);
    }
    Ok(files)
}

/// Reading the files: a file that cannot be read any further, and malformed messages.
#[derive(Debug, Default)]
pub struct ReadReport {
    /// Some file stopped before its end (an I/O error, a corrupt gzip stream): what it still
    /// held was not replayed, nor counted.
    pub cut_short: AtomicBool,
    pub malformed: AtomicU64,
}

/// The files as a source.
pub struct FileSource {
    settings: FileSettings,
    metrics: ReplayerMetrics,
    report: Arc<ReadReport>,
    /// Requests whose every sink is done: the progress.
    done: Arc<AtomicU64>,
}

impl FileSource {
    pub fn new(settings: FileSettings, metrics: ReplayerMetrics) -> Self {
        FileSource {
            settings,
            metrics,
            report: Arc::default(),
            done: Arc::default(),
        }
    }

    pub fn report(&self) -> Arc<ReadReport> {
        Arc::clone(&self.report)
    }

    /// Requests replayed and finished with so far.
    pub fn done(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.done)
    }

    /// Replays the files (over and over with `repeat`) until they are done or `shutdown`;
    /// returns once every request read is finished with.
    pub async fn run(self, intake: Intake, shutdown: Shutdown) -> anyhow::Result<()> {
        let in_flight = self.settings.in_flight.max(1);
        let window = Arc::new(Semaphore::new(in_flight));
        // A batch never holds more than the window lets in.
        let batch_records = in_flight.min(BATCH_RECORDS);
        let (delivered_sender, mut delivered) =
            mpsc::unbounded_channel::<(Delivered, OwnedSemaphorePermit, u64)>();
        let done = Arc::clone(&self.done);
        // Counts requests as their batches are finished with, and gives their room back. Not
        // waited for at the end: the replayer's drain (and its timeout) does that.
        tokio::spawn(async move {
            while let Some((batch, room, requests)) = delivered.recv().await {
                let _ = batch.await;
                done.fetch_add(requests, Ordering::Relaxed);
                drop(room);
            }
        });
        // Each pass is moved to start after the one before on the capture clock, so rates that
        // count captured time see a loop as new traffic, not as the past.
        let mut shift_ns = 0u64;
        loop {
            let Some(mut stream) = intake.open_stream(self.settings.pacing) else {
                break;
            };
            let origin = Origin {
                listener_id: "file".into(),
                // Each pass is a process of its own: a repeat is not a resend.
                instance: rand::random(),
            };
            let (batches, mut read) = mpsc::channel(4);
            let reader = {
                let (files, metrics, report) = (
                    self.settings.files.clone(),
                    self.metrics.clone(),
                    Arc::clone(&self.report),
                );
                tokio::task::spawn_blocking(move || {
                    let reading = Reading {
                        shift_ns,
                        batch_records,
                        metrics: &metrics,
                        report: &report,
                    };
                    read_files(&files, &reading, &batches)
                })
            };
            loop {
                let batch = tokio::select! {
                    batch = read.recv() => batch,
                    () = shutdown.requested() => None,
                };
                let Some(batch) = batch else { break };
                let requests = batch.records.len() as u64;
                let permits = requests.clamp(1, batch_records as u64) as u32;
                let room = tokio::select! {
                    room = Arc::clone(&window).acquire_many_owned(permits) => room,
                    () = shutdown.requested() => break,
                };
                let Ok(room) = room else { break };
                match stream
                    .take(&origin, batch.records, batch.responses, &shutdown)
                    .await
                {
                    Ok(batch) => {
                        let _ = delivered_sender.send((batch, room, requests));
                    }
                    Err(_) => break,
                }
            }
            drop(read);
            let span = reader.await.ok().flatten();
            if !self.settings.repeat || shutdown.is_requested() {
                break;
            }
            if let Some((first, last)) = span {
                shift_ns += last.saturating_sub(first) + 1;
            }
        }
        Ok(())
    }
}

/// What the reader hands over at a time.
struct FileBatch {
    records: Vec<RequestRecord>,
    responses: Vec<ResponseRecord>,
}

/// How one pass reads.
struct Reading<'a> {
    /// Moves every capture time (a pass of a loop comes after the one before).
    shift_ns: u64,
    batch_records: usize,
    metrics: &'a ReplayerMetrics,
    report: &'a ReadReport,
}

/// Reads every file, merged by timestamp, into batches; stops early if the receiver is gone.
/// Returns the span of the (moved) capture times read.
fn read_files(
    files: &[PathBuf],
    reading: &Reading<'_>,
    batches: &mpsc::Sender<FileBatch>,
) -> Option<(u64, u64)> {
    let Reading {
        shift_ns,
        batch_records,
        metrics,
        report,
    } = *reading;
    let mut merged = Merged::open(files, report);
    let mut records = Records::default();
    let mut span: Option<(u64, u64)> = None;
    let mut batch = FileBatch {
        records: Vec::new(),
        responses: Vec::new(),
    };
    while let Some(read) = merged.next() {
        match read {
            Ok(message) => match records.convert(message) {
                Ok(Converted::Request(mut record)) => {
                    record.captured_at_ns = record.captured_at_ns.saturating_add(shift_ns);
                    let at = record.captured_at_ns;
                    span =
                        Some(span.map_or((at, at), |(first, last)| (first.min(at), last.max(at))));
                    batch.records.push(record);
                }
                Ok(Converted::Response(mut response)) => {
                    response.captured_at_ns = response.captured_at_ns.saturating_add(shift_ns);
                    batch.responses.push(response);
                }
                Ok(Converted::Skipped) => {}
                Err(problem) => {
                    let error = merged.malformed_here(problem);
                    note_malformed(&error, metrics, report);
                }
            },
            Err(error) => note_malformed(&error, metrics, report),
        }
        if batch.records.len() >= batch_records || batch.responses.len() >= BATCH_RECORDS {
            let full = std::mem::replace(
                &mut batch,
                FileBatch {
                    records: Vec::new(),
                    responses: Vec::new(),
                },
            );
            if batches.blocking_send(full).is_err() {
                return span;
            }
        }
    }
    if !batch.records.is_empty() || !batch.responses.is_empty() {
        let _ = batches.blocking_send(batch);
    }
    span
}

fn note_malformed(error: &GorError, metrics: &ReplayerMetrics, report: &ReadReport) {
    let seen = report.malformed.fetch_add(1, Ordering::Relaxed) + 1;
    if seen <= LOGGED_ONE_BY_ONE || seen.is_multiple_of(100) {
        tracing::warn!(%error, malformed_so_far = seen, "skipped a message that cannot be replayed");
    }
    // Read, and refused: counted like any received record that cannot be replayed.
    metrics.records_received.inc();
    metrics.rejected(RejectReason::MalformedRecord).inc();
}

/// What a message became.
enum Converted {
    Request(RequestRecord),
    Response(ResponseRecord),
    /// A replayed response: not input.
    Skipped,
}

/// Turns messages into records: ids in reading order, responses paired with their requests.
#[derive(Default)]
struct Records {
    next_id: u64,
    /// Recent requests' ids, by a hash of their file id, for their responses.
    ids: HashMap<u64, u64>,
    /// (hash of the file id, id) in reading order, to forget the oldest.
    order: VecDeque<(u64, u64)>,
}

impl Records {
    fn convert(&mut self, message: GorMessage) -> Result<Converted, String> {
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        match message.header.payload_type {
            PayloadType::Request => {
                check_one_request(&message.payload)?;
                self.next_id += 1;
                self.remember(&message.header.id, self.next_id);
                Ok(Converted::Request(RequestRecord {
                    id: self.next_id,
                    captured_at_ns: message.header.timestamp_ns,
                    client: unknown,
                    server: unknown,
                    request: message.payload,
                }))
            }
            PayloadType::Response => {
                let request_id = match self.ids.get(&xxh3_64(message.header.id.as_bytes())) {
                    Some(&id) => id,
                    // Its request is not (or no longer) known: it still travels, on its own.
                    None => {
                        self.next_id += 1;
                        self.next_id
                    }
                };
                Ok(Converted::Response(ResponseRecord {
                    request_id,
                    captured_at_ns: message.header.timestamp_ns,
                    latency_ns: message.header.latency_ns.unwrap_or(0),
                    response: message.payload,
                }))
            }
            PayloadType::ReplayedResponse => Ok(Converted::Skipped),
        }
    }

    fn remember(&mut self, file_id: &str, id: u64) {
        if self.order.len() >= PAIRING_WINDOW
            && let Some((oldest, its_id)) = self.order.pop_front()
            // A file id used again since: the newer pairing stays.
            && self.ids.get(&oldest) == Some(&its_id)
        {
            self.ids.remove(&oldest);
        }
        let key = xxh3_64(file_id.as_bytes());
        self.ids.insert(key, id);
        self.order.push_back((key, id));
    }
}

/// A request payload must be exactly one complete request: bytes after it mean two messages
/// ran together (a missing separator), fewer mean it was cut.
fn check_one_request(payload: &bytes::Bytes) -> Result<(), String> {
    let head = match http1::parse_request_head(payload) {
        Ok(Some(head)) => head,
        Ok(None) => return Err("the request ends inside its head".into()),
        Err(error) => return Err(format!("not an HTTP/1.x request: {error}")),
    };
    let body = http1::decode_body(&payload.slice(head.len..), head.framing)
        .map_err(|error| format!("the request's body: {error}"))?;
    let extra = payload.len() - head.len - body.consumed;
    if extra > 0 {
        return Err(format!(
            "{extra} bytes follow the end of the request (a missing separator?)"
        ));
    }
    Ok(())
}

type FileInput = Box<dyn BufRead + Send>;

fn open(path: &Path, buffer: usize) -> std::io::Result<FileInput> {
    let file = std::fs::File::open(path)?;
    Ok(if path.extension().is_some_and(|ext| ext == "gz") {
        Box::new(std::io::BufReader::with_capacity(
            buffer,
            flate2::read::MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(std::io::BufReader::with_capacity(buffer, file))
    })
}

/// One file being read, with its read-ahead window sorted by timestamp.
struct Cursor {
    reader: GorReader<FileInput>,
    name: String,
    ahead: BinaryHeap<Reverse<Ahead>>,
    ahead_bytes: usize,
    exhausted: bool,
}

/// A message read ahead, ordered by timestamp, then by reading order.
struct Ahead {
    timestamp_ns: u64,
    order: u64,
    message: GorMessage,
    offset: u64,
}

impl PartialEq for Ahead {
    fn eq(&self, other: &Self) -> bool {
        (self.timestamp_ns, self.order) == (other.timestamp_ns, other.order)
    }
}
impl Eq for Ahead {}
impl PartialOrd for Ahead {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ahead {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.timestamp_ns, self.order).cmp(&(other.timestamp_ns, other.order))
    }
}

/// Every file's messages, merged in timestamp order.
struct Merged<'r> {
    cursors: Vec<Cursor>,
    /// Each file's read-ahead, in messages and bytes.
    ahead_messages: usize,
    ahead_bytes: usize,
    errors: VecDeque<GorError>,
    report: &'r ReadReport,
    order: u64,
    /// Where the last message handed out came from, for errors found in it later.
    last: Option<(String, u64)>,
}

impl<'r> Merged<'r> {
    fn open(files: &[PathBuf], report: &'r ReadReport) -> Self {
        let count = files.len().max(1);
        let share = |total: usize, least: usize, most: usize| (total / count).clamp(least, most);
        let ahead_bytes = share(
            READ_AHEAD_BYTES_TOTAL,
            READ_AHEAD_BYTES_LEAST,
            READ_AHEAD_BYTES,
        );
        let buffer = share(16 << 20, 16 << 10, 256 << 10);
        let mut cursors = Vec::new();
        for path in files {
            let name = path.display().to_string();
            match open(path, buffer) {
                Ok(input) => cursors.push(Cursor {
                    reader: GorReader::new(input, name.clone()),
                    name,
                    ahead: BinaryHeap::new(),
                    ahead_bytes: 0,
                    exhausted: false,
                }),
                Err(error) => {
                    report.cut_short.store(true, Ordering::Relaxed);
                    tracing::error!(file = %name, %error, "cannot open a recorded file");
                }
            }
        }
        Merged {
            cursors,
            ahead_messages: share(READ_AHEAD_TOTAL, READ_AHEAD_LEAST, READ_AHEAD),
            ahead_bytes,
            errors: VecDeque::new(),
            report,
            order: 0,
            last: None,
        }
    }

    /// The error for a message handed out that turned out not to be replayable.
    fn malformed_here(&self, problem: String) -> GorError {
        let (source_name, offset) = self.last.clone().unwrap_or_default();
        GorError::Malformed {
            source_name,
            offset,
            line: 0,
            problem,
        }
    }

    fn fill(&mut self) {
        for cursor in &mut self.cursors {
            while !cursor.exhausted
                && cursor.ahead.len() < self.ahead_messages
                && cursor.ahead_bytes < self.ahead_bytes
            {
                let offset = cursor.reader.position().0;
                match cursor.reader.next_message() {
                    None => cursor.exhausted = true,
                    Some(Ok(message)) => {
                        self.order += 1;
                        cursor.ahead_bytes += message.payload.len();
                        cursor.ahead.push(Reverse(Ahead {
                            timestamp_ns: message.header.timestamp_ns,
                            order: self.order,
                            message,
                            offset,
                        }));
                    }
                    Some(Err(error)) => {
                        if error.is_fatal() {
                            self.report.cut_short.store(true, Ordering::Relaxed);
                            tracing::error!(%error, "a recorded file cannot be read to its end");
                            cursor.exhausted = true;
                        } else {
                            self.errors.push_back(error);
                        }
                    }
                }
            }
        }
    }
}

impl Iterator for Merged<'_> {
    type Item = Result<GorMessage, GorError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.fill();
        if let Some(error) = self.errors.pop_front() {
            return Some(Err(error));
        }
        let earliest = self
            .cursors
            .iter_mut()
            .filter(|cursor| !cursor.ahead.is_empty())
            .min_by_key(|cursor| {
                let Reverse(head) = cursor.ahead.peek().expect("not empty");
                (head.timestamp_ns, head.order)
            })?;
        let Reverse(ahead) = earliest.ahead.pop().expect("not empty");
        earliest.ahead_bytes -= ahead.message.payload.len();
        self.last = Some((earliest.name.clone(), ahead.offset));
        Some(Ok(ahead.message))
    }
}

/// What `--input-file-dry-run` found.
#[derive(Debug, Default)]
pub struct DryRun {
    pub files: usize,
    pub requests: u64,
    pub responses: u64,
    pub replayed_responses: u64,
    pub malformed: u64,
    pub out_of_order: u64,
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    /// How long replaying would take with the pacing asked for (`None`: as fast as targets go).
    pub expected: Option<std::time::Duration>,
}

/// Reads everything and works out what a replay would do, sending nothing.
pub fn dry_run(files: &[PathBuf], pacing: StreamPacing) -> (DryRun, bool) {
    let report = ReadReport::default();
    let mut merged = Merged::open(files, &report);
    let mut records = Records::default();
    let mut result = DryRun {
        files: files.len(),
        ..DryRun::default()
    };
    let original = pacing.timing == crate::config::Timing::Original;
    let start = tokio::time::Instant::now();
    let mut schedule = Schedule::new(pacing.speed, pacing.max_wait);
    let mut clock = start;
    let mut latest = 0u64;
    while let Some(read) = merged.next() {
        let message = match read {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "skipped a message that cannot be replayed");
                result.malformed += 1;
                continue;
            }
        };
        let timestamp = message.header.timestamp_ns;
        match records.convert(message) {
            Ok(Converted::Request(_)) => {
                result.requests += 1;
                result.first_ns = Some(result.first_ns.map_or(timestamp, |f| f.min(timestamp)));
                result.last_ns = Some(result.last_ns.map_or(timestamp, |l| l.max(timestamp)));
                if timestamp < latest {
                    result.out_of_order += 1;
                }
                latest = latest.max(timestamp);
                if original {
                    clock = clock.max(schedule.due(timestamp, clock));
                }
            }
            Ok(Converted::Response(_)) => result.responses += 1,
            Ok(Converted::Skipped) => result.replayed_responses += 1,
            Err(problem) => {
                tracing::warn!(error = %merged.malformed_here(problem), "skipped a message that cannot be replayed");
                result.malformed += 1;
            }
        }
    }
    result.expected = original.then(|| clock - start);
    (result, report.cut_short.load(Ordering::Relaxed))
}

/// Requests in the files, for the progress bar: counted by reading them once.
pub fn count_requests(files: &[PathBuf]) -> u64 {
    let report = ReadReport::default();
    Merged::open(files, &report)
        .filter(|read| {
            read.as_ref()
                .is_ok_and(|m| m.header.payload_type == PayloadType::Request)
        })
        .count() as u64
}
