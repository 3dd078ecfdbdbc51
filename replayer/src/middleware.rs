//! GoReplay's middleware protocol: an external program, started with `--middleware "CMD ARGS"`
//! (split at spaces, no shell), sees every message and decides what is replayed. Each message
//! goes to its stdin as one line: the hex of `<header line>\n<raw HTTP message>`, then `\n`.
//! Requests (type 1), production's responses (type 2) and each target's responses (type 3) all
//! go there, so a middleware can keep state across them (a token production issued, and the one
//! staging issued instead). What it writes back on stdout, one hex line per message, is what is
//! replayed: a request it writes back goes on to the fan-out, a request it does not is filtered
//! (`filtered{rule="middleware"}`). Its stderr goes to our log.
//!
//! It can never stall the replay: requests reach it through a bounded queue, each one is waited
//! for at most `--middleware-timeout`, and a middleware that dies, or hangs (stops reading its
//! stdin), is restarted with backoff; the requests it had taken are counted
//! (`records_rejected{reason="middleware"}`), and so is a request refused by a full queue. A
//! request is filtered, not dropped, when the middleware read it and answered others, or
//! nothing, for the timeout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::atomic::Ordering;
use tapwire_runtime::lock;
use tapwire_shared::RequestRecord;
use tapwire_shared::gor::{GorMessage, PayloadType};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::ReplayerMetrics;
use crate::observe::ReplayObserver;
use crate::outcome::{FilterRule, RejectReason};
use crate::request::{BatchDone, Dispatch, Origin};

/// Messages queued for the middleware at most; past it requests are dropped and counted.
pub const QUEUE_MESSAGES: usize = 4096;
/// Bytes (hex lines) queued for the middleware at most.
const QUEUE_BYTES: usize = 64 << 20;
/// Longest line read from the middleware: the hex of the largest message a file may hold.
const MAX_LINE_BYTES: usize = 2 * tapwire_shared::gor::MAX_MESSAGE_BYTES + 64;
/// Longest stderr line logged as is.
const MAX_LOG_LINE_BYTES: usize = 4096;
/// How long the answers a middleware wrote before it ended are waited for.
const READER_DRAIN: Duration = Duration::from_secs(1);
/// How often timeouts are checked.
const WATCH_TICK: Duration = Duration::from_millis(100);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A middleware that ran this long before dying starts over with the shortest backoff.
const RAN_WELL: Duration = Duration::from_secs(10);
/// Ids of requests given up on, remembered so that a late answer is not taken for a new one.
const REMEMBERED_EXPIRED: usize = 65_536;

/// How the middleware runs.
#[derive(Debug, Clone)]
pub struct MiddlewareSettings {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// How long a request written to it is waited for.
    pub timeout: Duration,
}

/// The running middleware: the fan-out's front door while it is configured.
pub struct Middleware {
    shared: Arc<Shared>,
    queue: Mutex<Option<mpsc::Sender<Outgoing>>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    settings: MiddlewareSettings,
    /// The fan-out, once it exists (it needs the middleware among its targets' observers),
    /// until the middleware finishes: the targets hold the middleware as an observer, so it
    /// must let go of them for their queues to close.
    downstream: Mutex<Option<Arc<dyn Dispatch>>>,
    state: Mutex<State>,
    metrics: ReplayerMetrics,
    /// Bytes of the lines in the queue.
    queued_bytes: std::sync::atomic::AtomicUsize,
}

/// A line for the middleware, and the request it stands for.
struct Outgoing {
    line: Vec<u8>,
    request: Option<String>,
}

#[derive(Default)]
struct State {
    /// Requests given to (or queued for) the middleware, by message id.
    pending: HashMap<String, Pending>,
    expired: HashSet<String>,
    expired_order: VecDeque<String>,
    /// Requests made up by the middleware get ids of their own.
    injected: u64,
}

struct Pending {
    record: RequestRecord,
    origin: Origin,
    batch: Arc<BatchDone>,
    written: Option<Written>,
}

/// When a request was written, to which start of the middleware, and where its line ends in
/// what that start was given.
#[derive(Debug, Clone, Copy)]
struct Written {
    at: Instant,
    generation: u64,
    end: u64,
}

impl State {
    fn forget(&mut self, id: String) {
        if self.expired_order.len() >= REMEMBERED_EXPIRED
            && let Some(oldest) = self.expired_order.pop_front()
        {
            self.expired.remove(&oldest);
        }
        self.expired.insert(id.clone());
        self.expired_order.push_back(id);
    }
}

impl Middleware {
    /// Starts the middleware (and keeps it running); what it writes back goes downstream once
    /// [`Middleware::connect`] says where. A command that cannot start at all is an error now,
    /// not a replay that loses everything.
    pub fn start(
        settings: MiddlewareSettings,
        metrics: ReplayerMetrics,
    ) -> std::io::Result<Arc<Middleware>> {
        let first = spawn(&settings).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!(
                    "cannot start the middleware {:?}: {error}",
                    settings.command
                ),
            )
        })?;
        let (queue, outgoing) = mpsc::channel(QUEUE_MESSAGES);
        let shared = Arc::new(Shared {
            settings,
            downstream: Mutex::new(None),
            state: Mutex::new(State::default()),
            metrics,
            queued_bytes: Default::default(),
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared), first, outgoing));
        Ok(Arc::new(Middleware {
            shared,
            queue: Mutex::new(Some(queue)),
            supervisor: Mutex::new(Some(supervisor)),
        }))
    }

    /// Where the requests it writes back go.
    pub fn connect(&self, downstream: Arc<dyn Dispatch>) {
        *lock(&self.shared.downstream) = Some(downstream);
    }

    fn sender(&self) -> Option<mpsc::Sender<Outgoing>> {
        lock(&self.queue).clone()
    }

    /// No more messages: waits for the requests in flight (each at most its timeout), then
    /// stops the middleware; what it still held is counted as dropped.
    pub async fn finish(&self) {
        lock(&self.queue).take();
        let supervisor = lock(&self.supervisor).take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        lock(&self.shared.downstream).take();
    }

    fn send(&self, outgoing: Outgoing) -> Result<(), Outgoing> {
        let size = outgoing.line.len();
        let queued = &self.shared.queued_bytes;
        if queued.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            queued.fetch_sub(size, Ordering::Relaxed);
            return Err(outgoing);
        }
        let sent = match self.sender() {
            Some(sender) => sender.try_send(outgoing).map_err(|error| match error {
                mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o) => o,
            }),
            None => Err(outgoing),
        };
        if sent.is_err() {
            queued.fetch_sub(size, Ordering::Relaxed);
        }
        sent
    }

    fn observe(&self, message: &GorMessage) {
        let outgoing = Outgoing {
            line: encode_line(message),
            request: None,
        };
        if self.send(outgoing).is_err() {
            self.shared.metrics.middleware.responses_dropped.inc();
        }
    }
}

impl Dispatch for Middleware {
    /// Gives the request to the middleware; `batch` is held until it comes back (and through
    /// the fan-out), or is filtered or dropped.
    fn dispatch(&self, record: RequestRecord, origin: &Origin, batch: &Arc<BatchDone>) {
        let message = GorMessage::request(&record, origin.instance);
        let id = message.header.id.clone();
        let replaced = lock(&self.shared.state).pending.insert(
            id.clone(),
            Pending {
                record,
                origin: origin.clone(),
                batch: Arc::clone(batch),
                written: None,
            },
        );
        if replaced.is_some() {
            // Two requests in flight with one message id (two listener processes whose tags
            // collide): the middleware can only answer one of them.
            self.shared.metrics.rejected(RejectReason::Middleware).inc();
        }
        let outgoing = Outgoing {
            line: encode_line(&message),
            request: Some(id),
        };
        if let Err(refused) = self.send(outgoing) {
            if let Some(id) = refused.request {
                lock(&self.shared.state).pending.remove(&id);
            }
            self.shared.metrics.rejected(RejectReason::Middleware).inc();
        }
    }
}

impl ReplayObserver for Middleware {
    fn original_response(&self, message: &GorMessage) {
        self.observe(message);
    }

    fn replayed_response(&self, _target: &str, message: &GorMessage) {
        self.observe(message);
    }
}

/// Hex of `<header>\n<payload>`, then a line feed.
fn encode_line(message: &GorMessage) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let raw = message.header_and_payload();
    let mut line = Vec::with_capacity(raw.len() * 2 + 1);
    for byte in raw {
        line.push(HEX[usize::from(byte >> 4)]);
        line.push(HEX[usize::from(byte & 0xf)]);
    }
    line.push(b'\n');
    line
}

fn decode_line(line: &[u8]) -> Result<Vec<u8>, String> {
    if !line.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", line.len()));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        other => Err(format!("{:?} is not a hex digit", char::from(other))),
    };
    line.chunks(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Keeps the middleware running until the queue is closed and nothing is in flight.
async fn supervise(shared: Arc<Shared>, first: Child, mut outgoing: mpsc::Receiver<Outgoing>) {
    let mut backoff = BACKOFF_FIRST;
    let mut generation = 0u64;
    let mut input_closed = false;
    let mut child = Some(first);
    loop {
        generation += 1;
        let started = Instant::now();
        let next = match child.take() {
            Some(child) => Ok(child),
            None => spawn(&shared.settings),
        };
        match next {
            Ok(child) => {
                let ended =
                    run_child(&shared, child, generation, &mut outgoing, &mut input_closed).await;
                drop_taken(&shared, generation, &ended);
                if matches!(ended, Ended::Finished) {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(command = ?shared.settings.command, %error, "cannot start the middleware");
            }
        }
        if input_closed && lock(&shared.state).pending.is_empty() {
            break;
        }
        if started.elapsed() >= RAN_WELL {
            backoff = BACKOFF_FIRST;
        }
        tracing::warn!(retry_in = ?backoff, "restarting the middleware");
        shared.metrics.middleware.restarts.inc();
        refuse_while_down(&shared, &mut outgoing, &mut input_closed, backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    // Whatever never reached a middleware that worked.
    let left: Vec<_> = lock(&shared.state).pending.drain().collect();
    if !left.is_empty() {
        shared
            .metrics
            .rejected(RejectReason::Middleware)
            .inc_by(left.len() as u64);
        tracing::warn!(
            requests = left.len(),
            "middleware stopped with requests it never returned"
        );
    }
}

/// While no middleware runs (for `backoff`), what arrives for it is dropped and counted rather
/// than held: a middleware that cannot stay up must not hold the replay (or its
/// acknowledgements) back.
async fn refuse_while_down(
    shared: &Shared,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    input_closed: &mut bool,
    backoff: Duration,
) {
    let until = Instant::now() + backoff;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return,
            next = outgoing.recv(), if !*input_closed => match next {
                Some(next) => {
                    shared.queued_bytes.fetch_sub(next.line.len(), Ordering::Relaxed);
                    forget_unwritten(shared, next.request);
                }
                None => *input_closed = true,
            },
        }
    }
}

fn spawn(settings: &MiddlewareSettings) -> std::io::Result<Child> {
    let (program, args) = settings
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// How one run of the middleware ended.
enum Ended {
    /// Input closed and every request answered or given up on: stop for good.
    Finished,
    Exited(std::process::ExitStatus),
    /// It stopped reading its input; it was killed.
    Hung,
    /// Writing to it failed (it closed its stdin).
    Broken(std::io::Error),
}

/// Feeds one started middleware until it ends (or the work does).
async fn run_child(
    shared: &Arc<Shared>,
    mut child: Child,
    generation: u64,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    input_closed: &mut bool,
) -> Ended {
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Ended::Broken(std::io::Error::other("no pipes to the middleware"));
    };
    tracing::info!(command = ?shared.settings.command, pid = child.id(), "middleware started");
    let reader = tokio::spawn(read_output(Arc::clone(shared), stdout));
    let logger = tokio::spawn(log_stderr(stderr));
    let mut stdin = Some(stdin);
    let mut reader = reader;
    let mut tick = tokio::time::interval(WATCH_TICK);
    let timeout = shared.settings.timeout;
    let mut progress = ReadProgress::new();
    let ended = loop {
        tokio::select! {
            next = outgoing.recv(), if !*input_closed => match next {
                Some(next) => {
                    shared.queued_bytes.fetch_sub(next.line.len(), Ordering::Relaxed);
                    let Some(pipe) = stdin.as_mut() else { continue };
                    match tokio::time::timeout(timeout, pipe.write_all(&next.line)).await {
                        Ok(Ok(())) => {
                            progress.written += next.line.len() as u64;
                            let written = Written {
                                at: Instant::now(),
                                generation,
                                end: progress.written,
                            };
                            mark_written(shared, next.request, written);
                        }
                        Ok(Err(error)) => {
                            forget_unwritten(shared, next.request);
                            break Ended::Broken(error);
                        }
                        Err(_) => {
                            forget_unwritten(shared, next.request);
                            break Ended::Hung;
                        }
                    }
                }
                None => {
                    *input_closed = true;
                }
            },
            status = child.wait() => match status {
                Ok(status) => break Ended::Exited(status),
                Err(error) => break Ended::Broken(error),
            },
            _ = tick.tick() => {
                let unread = stdin.as_ref().map_or(0, unread_bytes);
                if progress.stalled(unread, timeout) {
                    break Ended::Hung;
                }
                filter_overdue(shared, generation, progress.consumed, timeout);
                if *input_closed && lock(&shared.state).pending.is_empty() {
                    break Ended::Finished;
                }
            }
        }
    };
    match &ended {
        Ended::Finished => {}
        Ended::Exited(status) => tracing::warn!(%status, "middleware exited"),
        Ended::Hung => tracing::warn!(?timeout, "middleware stopped reading its input; killing it"),
        Ended::Broken(error) => tracing::warn!(%error, "middleware pipe broke"),
    }
    drop(stdin);
    let _ = child.kill().await;
    // What it wrote before it ended still counts.
    if tokio::time::timeout(READER_DRAIN, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    let _ = logger.await;
    ended
}

/// Whether the middleware still reads its stdin: what it has consumed of what was written.
struct ReadProgress {
    written: u64,
    consumed: u64,
    since: Instant,
}

impl ReadProgress {
    fn new() -> Self {
        ReadProgress {
            written: 0,
            consumed: 0,
            since: Instant::now(),
        }
    }

    /// With `unread` bytes waiting in its stdin: true once it has read nothing for `timeout`.
    /// A middleware busy with a burst always has bytes waiting; one that hangs has them and
    /// does not take any.
    fn stalled(&mut self, unread: usize, timeout: Duration) -> bool {
        let consumed = self.written.saturating_sub(unread as u64);
        let moved = consumed != self.consumed;
        self.consumed = consumed;
        if unread == 0 || moved {
            self.since = Instant::now();
            return false;
        }
        self.since.elapsed() >= timeout
    }
}

/// Requests the middleware has read (their whole line is out of its stdin: `consumed` bytes
/// are) and did not answer within the timeout: filtered. One it has not read yet is waited
/// for; if it never reads it, [`ReadProgress`] calls the middleware hung.
fn filter_overdue(shared: &Shared, generation: u64, consumed: u64, timeout: Duration) {
    let now = Instant::now();
    let mut state = lock(&shared.state);
    let overdue: Vec<String> = state
        .pending
        .iter()
        .filter(|(_, p)| {
            p.written.is_some_and(|written| {
                written.generation == generation
                    && written.end <= consumed
                    && now - written.at >= timeout
            })
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in overdue {
        state.pending.remove(&id);
        state.forget(id);
        shared.metrics.filtered(FilterRule::Middleware).inc();
    }
}

fn mark_written(shared: &Shared, request: Option<String>, written: Written) {
    if let Some(id) = request
        && let Some(pending) = lock(&shared.state).pending.get_mut(&id)
    {
        pending.written = Some(written);
    }
}

/// A request that could not be written is dropped and counted.
fn forget_unwritten(shared: &Shared, request: Option<String>) {
    if let Some(id) = request
        && lock(&shared.state).pending.remove(&id).is_some()
    {
        shared.metrics.rejected(RejectReason::Middleware).inc();
    }
}

/// After a middleware ended (but for good): the requests written to it are dropped and
/// counted; those still queued wait for the next one.
fn drop_taken(shared: &Shared, generation: u64, ended: &Ended) {
    if matches!(ended, Ended::Finished) {
        return;
    }
    let mut state = lock(&shared.state);
    let taken: Vec<String> = state
        .pending
        .iter()
        .filter(|(_, p)| {
            p.written
                .is_some_and(|written| written.generation == generation)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in &taken {
        state.pending.remove(id);
        state.forget(id.clone());
    }
    if !taken.is_empty() {
        shared
            .metrics
            .rejected(RejectReason::Middleware)
            .inc_by(taken.len() as u64);
        tracing::warn!(requests = taken.len(), "requests lost with the middleware");
    }
}

/// Bytes written to the middleware's stdin that it has not read yet.
fn unread_bytes(pipe: &ChildStdin) -> usize {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points at `unread`; on a
    // pipe it reports the bytes in the pipe whichever end it is asked on.
    let result = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut unread) };
    if result < 0 { 0 } else { unread as usize }
}

/// Reads one line into `line` (at most `cap` bytes of it; the rest is skipped). `None` at
/// the end; `Some(true)` when the line was longer than `cap`.
async fn read_line_capped<R: tokio::io::AsyncBufRead + Unpin>(
    input: &mut R,
    line: &mut Vec<u8>,
    cap: usize,
) -> Option<bool> {
    line.clear();
    let mut overflowed = false;
    loop {
        let available = match input.fill_buf().await {
            Ok([]) | Err(_) => return (!line.is_empty() || overflowed).then_some(overflowed),
            Ok(available) => available,
        };
        let (part, done) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..=end], true),
            None => (available, false),
        };
        let taken = part.len();
        if line.len() + taken > cap {
            overflowed = true;
        } else {
            line.extend_from_slice(part);
        }
        input.consume(taken);
        if done {
            return Some(overflowed);
        }
    }
}

/// Reads what the middleware writes: requests go on downstream.
async fn read_output(shared: Arc<Shared>, stdout: tokio::process::ChildStdout) {
    let mut lines = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut number = 0u64;
    while let Some(overflowed) = read_line_capped(&mut lines, &mut line, MAX_LINE_BYTES).await {
        number += 1;
        if overflowed {
            tracing::warn!(line = number, "middleware output line too long; skipped");
            shared.metrics.middleware.invalid_lines.inc();
            continue;
        }
        let mut text: &[u8] = &line;
        for ending in [b"\n", b"\r"] {
            text = text.strip_suffix(ending).unwrap_or(text);
        }
        if text.is_empty() {
            continue;
        }
        let message = decode_line(text).and_then(|raw| GorMessage::parse(&raw));
        match message {
            Ok(message) => returned(&shared, message),
            Err(problem) => {
                let invalid = &shared.metrics.middleware.invalid_lines;
                if invalid.get().is_multiple_of(100) {
                    tracing::warn!(line = number, %problem,
                        "middleware output is not a hex-encoded message; skipped (every 100th such line is logged)");
                }
                invalid.inc();
            }
        }
    }
}

/// A message the middleware wrote back.
fn returned(shared: &Shared, message: GorMessage) {
    if message.header.payload_type != PayloadType::Request {
        // Responses are for the middleware's own state; they are not replayed.
        return;
    }
    let Some(downstream) = lock(&shared.downstream).clone() else {
        return;
    };
    let pending = {
        let mut state = lock(&shared.state);
        match state.pending.remove(&message.header.id) {
            Some(pending) => Some(pending),
            None if state.expired.contains(&message.header.id) => {
                shared.metrics.middleware.late.inc();
                return;
            }
            None => {
                state.injected += 1;
                None
            }
        }
    };
    match pending {
        Some(pending) => {
            let record = RequestRecord {
                captured_at_ns: message.header.timestamp_ns,
                request: message.payload,
                ..pending.record
            };
            downstream.dispatch(record, &pending.origin, &pending.batch);
        }
        None => {
            shared.metrics.middleware.injected.inc();
            // Made up by the middleware: received, so the accounting still adds up.
            shared.metrics.records_received.inc();
            let injected = lock(&shared.state).injected;
            let origin = Origin {
                listener_id: "middleware".into(),
                instance: 0,
            };
            let record = RequestRecord {
                id: injected,
                captured_at_ns: message.header.timestamp_ns,
                client: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                server: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                request: message.payload,
            };
            let (batch, _) = BatchDone::new();
            downstream.dispatch(record, &origin, &batch);
        }
    }
}

/// The middleware's stderr, line by line, into our log (whatever bytes it writes).
async fn log_stderr(stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr);
    let mut line = Vec::new();
    while read_line_capped(&mut lines, &mut line, MAX_LOG_LINE_BYTES)
        .await
        .is_some()
    {
        let text = String::from_utf8_lossy(&line);
        tracing::info!(target: "middleware", "{}", text.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tapwire_shared::gor::GorHeader;

    #[test]
    fn lines_are_goreplays_hex_and_read_back() {
        let message = GorMessage {
            header: GorHeader {
                payload_type: PayloadType::Request,
                id: "a1b2c3d4e5f6a7b8c9d0e1f2".into(),
                timestamp_ns: 1_700_000_000_123_456_789,
                latency_ns: Some(0),
            },
            payload: Bytes::from_static(b"GET /ping HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        };
        let line = encode_line(&message);
        // GoReplay's documented example of this request.
        assert_eq!(
            line,
            b"3120613162326333643465356636613762386339643065316632203137303030303030303031323334353637383920300a474554202f70696e6720485454502f312e310d0a486f73743a206578616d706c652e636f6d0d0a0d0a\n"
        );
        let upper = line[..line.len() - 1].to_ascii_uppercase();
        let back = GorMessage::parse(&decode_line(&upper).unwrap()).unwrap();
        assert_eq!(back, message);
        assert!(decode_line(b"abc").is_err());
        assert!(decode_line(b"zz").is_err());
    }
}
