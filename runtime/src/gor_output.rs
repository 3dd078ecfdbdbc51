//! Writing `.gor` messages to files or stdout without ever making the caller wait. Messages go
//! through a bounded queue to a writer thread, which:
//!
//! - names files from a template with GoReplay's tokens (`%Y %m %d %H %M %S` in UTC, `%NS` the
//!   nanosecond, `%r` the message id, `%t` its type, `%i` this process's instance), starting a
//!   new file whenever the expanded name changes;
//! - cuts files into chunks of `size_limit` bytes named `<base>_<n><ext>` (`requests_0.gor`,
//!   `requests.gor_0.gz`), continuing after the highest chunk already on disk, unless `append`
//!   (one file, appended to);
//! - gzips files whose name ends in `.gz`;
//! - stops at `max_total` bytes written in all;
//! - flushes at least once a second, and closes every file cleanly (gzip trailer included) when
//!   the output is closed.
//!
//! Every message is counted once, through the caller's [`Tally`]: written, refused because the
//! queue or `max_total` is full, or lost to an error.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tapwire_shared::gor::{GorMessage, PayloadType};

/// GoReplay's chunk size: a new file past this many bytes.
pub const DEFAULT_CHUNK_BYTES: u64 = 32 << 20;
/// Files are flushed at least this often.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Messages queued for the writer thread at most.
const QUEUE_MESSAGES: usize = 65_536;

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Files named from a template.
    Files {
        template: String,
        /// Bytes per chunk (uncompressed); 0 for no limit.
        size_limit: u64,
        /// Bytes written in all, after which messages are refused.
        max_total: Option<u64>,
        /// One file, appended to, never cut into chunks.
        append: bool,
    },
    Stdout,
}

/// How a [`GorOutput`] runs.
#[derive(Debug, Clone)]
pub struct GorOutputSettings {
    pub destination: Destination,
    /// Decode bodies for display (`--prettify`).
    pub prettify: bool,
    /// Message bytes queued for the writer at most; past it messages are refused.
    pub queue_bytes: usize,
}

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// Refused: the queue was full, or `max_total` was reached.
    Full,
    /// Lost to an error opening or writing a file (or to closing before it was written).
    Error,
}

/// Counts each message's outcome: the caller's metrics.
pub type Tally = Arc<dyn Fn(PayloadType, Outcome) + Send + Sync>;

/// The caller's side of a running output. Dropping it ends the output's input: the writer
/// writes what is queued and closes its files; [`OutputDone::wait`] waits for that.
pub struct GorOutput {
    queue: SyncSender<GorMessage>,
    shared: Arc<Shared>,
    tally: Tally,
    queue_bytes: usize,
}

/// Waits for an output's writer to finish.
pub struct OutputDone {
    done: Receiver<()>,
    shared: Arc<Shared>,
    tally: Tally,
}

struct Shared {
    queued_bytes: AtomicUsize,
    /// Messages queued, by type (request, response, replayed response).
    queued_messages: [AtomicUsize; 3],
    /// Set when closing gave up waiting: the thread discards what is left (already counted).
    abandoned: AtomicBool,
}

impl GorOutput {
    /// Starts the writer thread.
    pub fn start(
        settings: GorOutputSettings,
        tally: Tally,
    ) -> std::io::Result<(GorOutput, OutputDone)> {
        let (queue, messages) = std::sync::mpsc::sync_channel(QUEUE_MESSAGES);
        let (finished, done) = std::sync::mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            queued_messages: Default::default(),
            abandoned: AtomicBool::new(false),
        });
        let writer = Writer {
            sink: Sink::new(settings.destination),
            prettify: settings.prettify,
            tally: Arc::clone(&tally),
            shared: Arc::clone(&shared),
            reported_error: false,
            reported_full: false,
        };
        std::thread::Builder::new()
            .name("gor-output".into())
            .spawn(move || {
                writer.run(messages);
                let _ = finished.send(());
            })?;
        let output = GorOutput {
            queue,
            shared: Arc::clone(&shared),
            tally: Arc::clone(&tally),
            queue_bytes: settings.queue_bytes,
        };
        Ok((
            output,
            OutputDone {
                done,
                shared,
                tally,
            },
        ))
    }

    /// Queues a message without waiting; a message the queue has no room for is counted as
    /// refused (`full`).
    pub fn write(&self, message: GorMessage) {
        let (size, kind) = (message.payload.len(), message.header.payload_type);
        let queued = self.shared.queued_bytes.fetch_add(size, Ordering::Relaxed);
        // One message larger than the whole budget still goes when nothing else waits.
        if queued > 0 && queued + size > self.queue_bytes {
            self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            (self.tally)(kind, Outcome::Full);
            return;
        }
        self.shared.queued(kind).fetch_add(1, Ordering::Relaxed);
        if self.queue.try_send(message).is_err() {
            self.shared.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.shared.queued(kind).fetch_sub(1, Ordering::Relaxed);
            (self.tally)(kind, Outcome::Full);
        }
    }
}

impl OutputDone {
    /// Once every [`GorOutput`] is dropped: waits at most `timeout` for the writer to write
    /// what is queued and close its files; what is still queued then is counted as lost
    /// (`error`).
    pub fn wait(self, timeout: Duration) {
        if self.done.recv_timeout(timeout).is_err() {
            self.shared.abandoned.store(true, Ordering::Relaxed);
            let mut left = 0;
            for kind in PayloadType::ALL {
                let count = self.shared.queued(kind).swap(0, Ordering::Relaxed);
                left += count;
                for _ in 0..count {
                    (self.tally)(kind, Outcome::Error);
                }
            }
            tracing::warn!(
                left,
                ?timeout,
                "the output did not finish writing in time; what is left is counted as lost"
            );
        }
    }
}

impl Shared {
    fn queued(&self, kind: PayloadType) -> &AtomicUsize {
        &self.queued_messages[match kind {
            PayloadType::Request => 0,
            PayloadType::Response => 1,
            PayloadType::ReplayedResponse => 2,
        }]
    }

    fn queued_total(&self) -> usize {
        PayloadType::ALL
            .iter()
            .map(|&kind| self.queued(kind).load(Ordering::Relaxed))
            .sum()
    }
}

/// The writer thread.
struct Writer {
    sink: Sink,
    prettify: bool,
    tally: Tally,
    shared: Arc<Shared>,
    reported_error: bool,
    reported_full: bool,
}

impl Writer {
    fn run(mut self, messages: Receiver<GorMessage>) {
        let mut last_flush = Instant::now();
        let mut encoded = Vec::new();
        loop {
            let wait = FLUSH_INTERVAL.saturating_sub(last_flush.elapsed());
            match messages.recv_timeout(wait) {
                Ok(message) => {
                    self.shared
                        .queued_bytes
                        .fetch_sub(message.payload.len(), Ordering::Relaxed);
                    if self.shared.abandoned.load(Ordering::Relaxed) {
                        continue;
                    }
                    self.shared
                        .queued(message.header.payload_type)
                        .fetch_sub(1, Ordering::Relaxed);
                    encoded.clear();
                    self.write(message, &mut encoded);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Stdout is for eyes: show what is there as soon as the burst is over.
            let idle_stdout = self.sink.is_stdout() && self.shared.queued_total() == 0;
            if idle_stdout || last_flush.elapsed() >= FLUSH_INTERVAL {
                self.flush();
                last_flush = Instant::now();
            }
        }
        if let Err(error) = self.sink.close() {
            tracing::warn!(%error, "cannot close the output file cleanly");
        }
    }

    fn write(&mut self, mut message: GorMessage, encoded: &mut Vec<u8>) {
        if self.prettify {
            message.payload = tapwire_shared::prettify::prettify(&message.payload);
        }
        message.encode(encoded);
        let kind = message.header.payload_type;
        match self.sink.write(&message, encoded) {
            Ok(Written::Yes) => (self.tally)(kind, Outcome::Written),
            Ok(Written::MaxTotalReached) => {
                (self.tally)(kind, Outcome::Full);
                if !self.reported_full {
                    self.reported_full = true;
                    tracing::warn!(
                        "the output reached its total size limit; further messages are refused and counted"
                    );
                }
            }
            Err(error) => {
                (self.tally)(kind, Outcome::Error);
                if !self.reported_error {
                    self.reported_error = true;
                    tracing::warn!(%error, "cannot write to the output; messages are counted as lost until it works again");
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Err(error) = self.sink.flush() {
            tracing::warn!(%error, "cannot flush the output");
        }
    }
}

enum Written {
    Yes,
    MaxTotalReached,
}

enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    Files(Box<FileRotation>),
}

impl Sink {
    fn new(destination: Destination) -> Sink {
        match destination {
            Destination::Stdout => Sink::Stdout(BufWriter::new(std::io::stdout())),
            Destination::Files {
                template,
                size_limit,
                max_total,
                append,
            } => Sink::Files(Box::new(FileRotation {
                template,
                size_limit,
                max_total,
                append,
                instance: instance_tag(),
                open: None,
                total: 0,
            })),
        }
    }

    fn is_stdout(&self) -> bool {
        matches!(self, Sink::Stdout(_))
    }

    fn write(&mut self, message: &GorMessage, encoded: &[u8]) -> std::io::Result<Written> {
        match self {
            Sink::Stdout(out) => out.write_all(encoded).map(|()| Written::Yes),
            Sink::Files(files) => files.write(message, encoded),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::Files(files) => files.open.as_mut().map_or(Ok(()), OpenFile::flush),
        }
    }

    fn close(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::Files(files) => files.open.take().map_or(Ok(()), OpenFile::finish),
        }
    }
}

/// The files of a template: which one is open, and how much was written.
struct FileRotation {
    template: String,
    size_limit: u64,
    max_total: Option<u64>,
    append: bool,
    /// `%i`: this process's tag.
    instance: String,
    open: Option<OpenFile>,
    /// Bytes written in all, every file together.
    total: u64,
}

struct OpenFile {
    /// The template expanded, before any chunk index.
    expanded: String,
    writer: FileWriter,
    /// Uncompressed bytes written to it.
    bytes: u64,
}

enum FileWriter {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
}

impl OpenFile {
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.writer {
            FileWriter::Plain(out) => out.flush(),
            // A sync flush: everything so far can be read back, the trailer comes at close.
            FileWriter::Gzip(out) => out.flush(),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self.writer {
            FileWriter::Plain(mut out) => out.flush(),
            FileWriter::Gzip(out) => out.finish()?.flush(),
        }
    }
}

impl FileRotation {
    fn write(&mut self, message: &GorMessage, encoded: &[u8]) -> std::io::Result<Written> {
        let len = encoded.len() as u64;
        if self.max_total.is_some_and(|max| self.total + len > max) {
            return Ok(Written::MaxTotalReached);
        }
        let expanded = expand(&self.template, message, &self.instance, SystemTime::now());
        let name_changed = self
            .open
            .as_ref()
            .is_none_or(|open| open.expanded != expanded);
        let chunk_full = !self.append
            && self.size_limit > 0
            && self
                .open
                .as_ref()
                .is_some_and(|open| open.bytes >= self.size_limit);
        if name_changed || chunk_full {
            if let Some(previous) = self.open.take() {
                previous.finish()?;
            }
            self.open = Some(self.open_file(expanded)?);
        }
        let open = self.open.as_mut().expect("opened above");
        match &mut open.writer {
            FileWriter::Plain(out) => out.write_all(encoded)?,
            FileWriter::Gzip(out) => out.write_all(encoded)?,
        }
        open.bytes += len;
        self.total += len;
        Ok(Written::Yes)
    }

    fn open_file(&self, expanded: String) -> std::io::Result<OpenFile> {
        let path = if self.append {
            PathBuf::from(&expanded)
        } else {
            next_chunk(Path::new(&expanded))?
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(self.append)
            .write(true)
            .truncate(!self.append)
            .open(&path)?;
        tracing::info!(path = %path.display(), "writing to output file");
        let buffered = BufWriter::with_capacity(64 << 10, file);
        let writer = if path.extension().is_some_and(|ext| ext == "gz") {
            FileWriter::Gzip(flate2::write::GzEncoder::new(
                buffered,
                flate2::Compression::fast(),
            ))
        } else {
            FileWriter::Plain(buffered)
        };
        Ok(OpenFile {
            expanded,
            writer,
            bytes: 0,
        })
    }
}

/// The chunk after the highest of `path`'s chunks already on disk: `<base>_<n><ext>`.
fn next_chunk(path: &Path) -> std::io::Result<PathBuf> {
    let (base, extension) = split_extension(path);
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
    let stem = Path::new(&base)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut next = 0u64;
    let listing = match std::fs::read_dir(dir.unwrap_or(Path::new("."))) {
        Ok(listing) => Some(listing),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    for entry in listing.into_iter().flatten() {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let index = name
            .strip_prefix(&stem)
            .and_then(|rest| rest.strip_prefix('_'))
            .and_then(|rest| rest.strip_suffix(extension.as_str()))
            .and_then(|index| index.parse::<u64>().ok());
        if let Some(index) = index {
            next = next.max(index + 1);
        }
    }
    Ok(PathBuf::from(format!("{base}_{next}{extension}")))
}

/// `dir/x.gor.gz` into (`dir/x.gor`, `.gz`), as GoReplay cuts names: at the last extension.
fn split_extension(path: &Path) -> (String, String) {
    let text = path.to_string_lossy().into_owned();
    match path.extension() {
        Some(extension) => {
            let extension = format!(".{}", extension.to_string_lossy());
            (text[..text.len() - extension.len()].to_owned(), extension)
        }
        None => (text, String::new()),
    }
}

/// The template with GoReplay's tokens replaced (times in UTC).
fn expand(template: &str, message: &GorMessage, instance: &str, now: SystemTime) -> String {
    if !template.contains('%') {
        return template.to_owned();
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (year, month, day, hour, minute, second) = civil_time(since_epoch.as_secs());
    let has_id = template.contains("%r");
    let mut out = template
        .replace("%Y", &format!("{year:04}"))
        .replace("%m", &format!("{month:02}"))
        .replace("%d", &format!("{day:02}"))
        .replace("%H", &format!("{hour:02}"))
        .replace("%M", &format!("{minute:02}"))
        .replace("%NS", &since_epoch.subsec_nanos().to_string())
        .replace("%S", &format!("{second:02}"))
        .replace("%i", instance);
    if has_id {
        out = out
            .replace("%r", &message.header.id)
            .replace("%t", &message.header.payload_type.digit().to_string());
    }
    out
}

/// Year, month, day, hour, minute, second (UTC) of a Unix time.
fn civil_time(seconds: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (of_day / 3600) as u32,
        (of_day / 60 % 60) as u32,
        (of_day % 60) as u32,
    )
}

/// `%i`: eight letters, random per process.
fn instance_tag() -> String {
    let mut state = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        ^ u64::from(std::process::id()).rotate_left(32);
    (0..8)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let letter = (state % 52) as u8;
            char::from(if letter < 26 {
                b'a' + letter
            } else {
                b'A' + letter - 26
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tapwire_shared::gor::{GorHeader, GorReader, PayloadType};

    fn message(id: u64) -> GorMessage {
        GorMessage {
            header: GorHeader {
                payload_type: PayloadType::Request,
                id: format!("{id:024x}"),
                timestamp_ns: 1_700_000_000_000_000_000 + id,
                latency_ns: None,
            },
            payload: Bytes::from(format!("GET /{id} HTTP/1.1\r\nHost: a\r\n\r\n")),
        }
    }

    #[derive(Default)]
    struct Counts {
        written: AtomicUsize,
        full: AtomicUsize,
        error: AtomicUsize,
    }

    impl Counts {
        fn get(&self, outcome: Outcome) -> usize {
            match outcome {
                Outcome::Written => &self.written,
                Outcome::Full => &self.full,
                Outcome::Error => &self.error,
            }
            .load(Ordering::Relaxed)
        }
    }

    fn counters() -> Arc<Counts> {
        Arc::default()
    }

    struct Running(GorOutput, OutputDone);

    impl Running {
        fn write(&self, message: GorMessage) {
            self.0.write(message);
        }

        fn close(self, timeout: Duration) {
            drop(self.0);
            self.1.wait(timeout);
        }
    }

    fn output(destination: Destination, counts: &Arc<Counts>) -> Running {
        let settings = GorOutputSettings {
            destination,
            prettify: false,
            queue_bytes: 16 << 20,
        };
        let counts = Arc::clone(counts);
        let tally: Tally = Arc::new(move |_, outcome| {
            match outcome {
                Outcome::Written => &counts.written,
                Outcome::Full => &counts.full,
                Outcome::Error => &counts.error,
            }
            .fetch_add(1, Ordering::Relaxed);
        });
        let (output, done) = GorOutput::start(settings, tally).unwrap();
        Running(output, done)
    }

    fn read(path: &Path) -> Vec<GorMessage> {
        let file = File::open(path).unwrap();
        let input: Box<dyn std::io::BufRead> = if path.extension().is_some_and(|ext| ext == "gz") {
            Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
                file,
            )))
        } else {
            Box::new(std::io::BufReader::new(file))
        };
        GorReader::new(input, path.display().to_string())
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn chunks_rotate_at_the_size_limit_and_a_restart_continues_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("requests.gor").display().to_string();
        let destination = Destination::Files {
            template,
            size_limit: 300,
            max_total: None,
            append: false,
        };
        let counters = counters();
        let out = output(destination.clone(), &counters);
        for id in 0..10 {
            out.write(message(id));
        }
        out.close(Duration::from_secs(10));
        assert_eq!(counters.get(Outcome::Written), 10);
        let mut chunks: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        chunks.sort_by_key(|name| name.len());
        assert!(chunks.len() >= 3, "{chunks:?}");
        assert_eq!(chunks[0], "requests_0.gor");
        let mut ids = Vec::new();
        for index in 0..chunks.len() {
            let path = dir.path().join(format!("requests_{index}.gor"));
            ids.extend(read(&path).into_iter().map(|m| m.header.timestamp_ns));
        }
        assert_eq!(ids.len(), 10);
        // A second process never overwrites the first one's chunks.
        let out = output(destination, &counters);
        out.write(message(99));
        out.close(Duration::from_secs(10));
        let newest = dir.path().join(format!("requests_{}.gor", chunks.len()));
        assert_eq!(read(&newest)[0], message(99));
    }

    #[test]
    fn a_gz_file_is_gzip_with_a_trailer_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capture.gor.gz");
        let counters = counters();
        let out = output(
            Destination::Files {
                template: path.display().to_string(),
                size_limit: 0,
                max_total: None,
                append: true,
            },
            &counters,
        );
        for id in 0..100 {
            out.write(message(id));
        }
        out.close(Duration::from_secs(10));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
        let messages = read(&path);
        assert_eq!(messages, (0..100).map(message).collect::<Vec<_>>());
    }

    #[test]
    fn the_total_limit_refuses_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let counters = counters();
        let out = output(
            Destination::Files {
                template: dir.path().join("x.gor").display().to_string(),
                size_limit: 0,
                max_total: Some(250),
                append: true,
            },
            &counters,
        );
        for id in 0..10 {
            out.write(message(id));
        }
        out.close(Duration::from_secs(10));
        assert_eq!(
            counters.get(Outcome::Written) + counters.get(Outcome::Full),
            10
        );
        assert!(counters.get(Outcome::Written) >= 1 && counters.get(Outcome::Full) >= 5);
    }

    #[test]
    fn templates_take_goreplays_tokens() {
        // 2026-11-30 15:46:27.000000042 UTC
        let now = UNIX_EPOCH + Duration::new(1_796_053_587, 42);
        let name = expand(
            "/x/%Y-%m-%d_%H%M%S_%NS_%r_%t_%i.gor",
            &message(7),
            "abcdefgh",
            now,
        );
        assert_eq!(
            name,
            "/x/2026-11-30_154627_42_000000000000000000000007_1_abcdefgh.gor"
        );
        assert_eq!(civil_time(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_time(951_782_400), (2000, 2, 29, 0, 0, 0));
    }

    #[test]
    fn chunk_names_go_before_the_last_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gor.gz");
        assert_eq!(next_chunk(&path).unwrap(), dir.path().join("x.gor_0.gz"));
    }
}
