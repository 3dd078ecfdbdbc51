//! The gRPC side: accepts record streams from any number of listeners, paces each stream
//! (original timing, queued global rate), hands its records to the fan-out, and acknowledges
//! each batch. Pacing a stream holds that listener back (its acknowledgements wait), never the
//! others. A stream that sends what cannot be decoded is ended with the decoder's status
//! (`INTERNAL`, `OUT_OF_RANGE`...). On shutdown every open stream is ended with `UNAVAILABLE`,
//! so listeners know to reconnect elsewhere rather than wait, even a listener that has stopped
//! reading its acknowledgements.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use subtle::ConstantTimeEq;
use tapwire_shared::proto::{BatchAck, RecordBatch, replay_server::Replay};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::Timing;
use crate::dedup::Deduplicator;
use crate::fanout::{BatchDone, FanOut};

/// Acks queued per stream before the stream stops reading batches.
const ACK_QUEUE: usize = 64;
/// Batches of one stream dispatched and waiting for their targets before the stream stops
/// reading more: what one listener can have the targets working on at once.
const MAX_BATCHES_IN_FLIGHT: usize = 256;
/// On shutdown, how long a stream waits for targets to finish its dispatched batches so it
/// can acknowledge them (within the server's grace for closing connections).
const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(3);
/// How long a stream ended by shutdown waits for room in its ack queue to say why.
const END_STATUS_WAIT: Duration = Duration::from_secs(1);

/// Refuses streams without the configured bearer token. The comparison takes the same time
/// whatever the token presented, so it leaks nothing about the real one.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<[u8]>>,
    refused: prometheus_client::metrics::counter::Counter,
}

impl TokenCheck {
    pub fn new(
        token: Option<String>,
        refused: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        TokenCheck {
            expected: token.map(|token| format!("Bearer {token}").into_bytes().into()),
            refused,
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if bool::from(presented.ct_eq(expected)) {
            Ok(request)
        } else {
            self.refused.inc();
            tracing::warn!(peer = ?request.remote_addr(), "refused a listener stream: missing or wrong token");
            Err(Status::unauthenticated("missing or wrong token"))
        }
    }
}

/// When records of a stream are handed on.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub timing: Timing,
    pub speed: f64,
}

pub struct ReplayService {
    /// Only streams hold the fan-out: once they have ended, dropping `run`'s handle closes the
    /// target queues, even while a connection that cannot flush (its listener reads nothing)
    /// still holds this service.
    fanout: Weak<FanOut>,
    /// Shared by all streams: a listener's resend arrives on its next stream.
    dedup: Arc<Deduplicator>,
    pacing: Pacing,
    shutdown: watch::Receiver<bool>,
}

impl ReplayService {
    pub fn new(fanout: Arc<FanOut>, pacing: Pacing, shutdown: watch::Receiver<bool>) -> Self {
        ReplayService {
            fanout: Arc::downgrade(&fanout),
            dedup: Arc::default(),
            pacing,
            shutdown,
        }
    }
}

/// Keeps a stream's captured inter-arrival times: the first record goes at once, each later
/// one when its capture offset (divided by the speed) has passed.
struct OriginalTiming {
    speed: f64,
    start: Option<(u64, Instant)>,
}

impl OriginalTiming {
    async fn wait_for(&mut self, captured_at_ns: u64) {
        let (first_captured, started) = *self.start.get_or_insert((captured_at_ns, Instant::now()));
        let offset_ns = captured_at_ns.saturating_sub(first_captured) as f64 / self.speed;
        tokio::time::sleep_until(started + Duration::from_nanos(offset_ns as u64)).await;
    }
}

#[tonic::async_trait]
impl Replay for ReplayService {
    type StreamStream = ReceiverStream<Result<BatchAck, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<RecordBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let Some(fanout) = self.fanout.upgrade() else {
            return Err(Status::unavailable("replayer shutting down"));
        };
        let peer = request.remote_addr();
        let batches = request.into_inner();
        let (acks, outgoing) = mpsc::channel(ACK_QUEUE);
        tokio::spawn(serve_stream(
            peer,
            batches,
            acks,
            fanout,
            Arc::clone(&self.dedup),
            self.pacing,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(outgoing)))
    }
}

async fn serve_stream(
    peer: Option<SocketAddr>,
    mut batches: Streaming<RecordBatch>,
    acks: mpsc::Sender<Result<BatchAck, Status>>,
    fanout: Arc<FanOut>,
    dedup: Arc<Deduplicator>,
    pacing: Pacing,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener_id = String::new();
    let mut original = (pacing.timing == Timing::Original).then_some(OriginalTiming {
        speed: pacing.speed,
        start: None,
    });
    // Batches dispatched and not yet acknowledged, oldest first: each is acknowledged, in
    // order, once every target is done with its requests.
    let mut in_flight: VecDeque<(BatchAck, oneshot::Receiver<()>)> = VecDeque::new();
    loop {
        let room = in_flight.len() < MAX_BATCHES_IN_FLIGHT;
        let front_done = async {
            match in_flight.front_mut() {
                Some((_, done)) => {
                    let _ = done.await;
                }
                None => std::future::pending().await,
            }
        };
        let batch = tokio::select! {
            () = front_done => {
                let Some((ack, _)) = in_flight.pop_front() else { continue };
                match queue_reply(&acks, Ok(ack), &mut shutdown).await {
                    Reply::Queued => continue,
                    Reply::ListenerGone => break,
                    Reply::Stopping => {
                        finish_for_shutdown(&acks, in_flight).await;
                        break;
                    }
                }
            }
            batch = batches.message(), if room => batch,
            () = stopping(&mut shutdown) => {
                finish_for_shutdown(&acks, in_flight).await;
                break;
            }
        };
        let batch = match batch {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                // The listener is done sending; it still waits for these acks.
                let acknowledge_all = async {
                    while let Some((ack, done)) = in_flight.pop_front() {
                        let _ = done.await;
                        if acks.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                };
                let stopped = tokio::select! {
                    () = acknowledge_all => false,
                    () = stopping(&mut shutdown) => true,
                };
                if stopped {
                    finish_for_shutdown(&acks, in_flight).await;
                }
                break;
            }
            Err(status) => {
                tracing::warn!(?peer, listener = %listener_id, %status, "listener stream failed");
                // Ending with OK would tell the listener its stream closed cleanly.
                let _ = queue_reply(&acks, Err(status), &mut shutdown).await;
                break;
            }
        };
        if listener_id.is_empty() {
            listener_id = batch.listener_id.clone();
            tracing::info!(?peer, listener = %listener_id, "listener connected");
        }
        let ack = BatchAck {
            sequence: batch.sequence,
            accepted: batch.records.len() as u32,
        };
        let (batch_done, finished) = BatchDone::new();
        let (records, copies) = dedup.fresh(&listener_id, batch.listener_instance, batch.records);
        fanout.duplicates(copies);
        let paced = original.is_some() || fanout.paces();
        let mut stopped = false;
        for record in records {
            if paced {
                // Pacing may wait long: shutdown must not wait behind it.
                let due = async {
                    if let Some(timing) = original.as_mut() {
                        timing.wait_for(record.captured_at_ns).await;
                    }
                    fanout.until_global_rate_allows().await;
                };
                tokio::select! {
                    biased;
                    () = stopping(&mut shutdown) => {
                        stopped = true;
                        break;
                    }
                    () = due => {}
                }
            }
            fanout.dispatch(record, &listener_id, &batch_done);
        }
        if stopped {
            // This batch is not acknowledged: the listener sends it again elsewhere.
            finish_for_shutdown(&acks, in_flight).await;
            break;
        }
        // Comparing staging's answers with these is the replayer's next job; count them now.
        fanout.production_responses(batch.responses.len() as u64);
        // From here only the requests hold it: it fires when the last one is done.
        drop(batch_done);
        in_flight.push_back((ack, finished));
    }
    tracing::info!(?peer, listener = %listener_id, "listener stream ended");
}

/// On shutdown: acknowledges the batches whose requests the targets finish within
/// [`SHUTDOWN_ACK_WAIT`], in order, then ends the stream with `UNAVAILABLE` so the listener
/// moves the rest to another replayer (or keeps it for this one's return).
async fn finish_for_shutdown(
    acks: &mpsc::Sender<Result<BatchAck, Status>>,
    in_flight: VecDeque<(BatchAck, oneshot::Receiver<()>)>,
) {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_ACK_WAIT;
    for (ack, done) in in_flight {
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            break;
        }
        if tokio::time::timeout_at(deadline, acks.send(Ok(ack)))
            .await
            .is_err()
        {
            break;
        }
    }
    end_for_shutdown(acks).await;
}

enum Reply {
    Queued,
    ListenerGone,
    Stopping,
}

/// Waits for room in the ack queue, which a listener that reads no acks never makes: shutdown
/// must not wait on it. With room, the reply is queued even when stopping.
async fn queue_reply(
    acks: &mpsc::Sender<Result<BatchAck, Status>>,
    reply: Result<BatchAck, Status>,
    shutdown: &mut watch::Receiver<bool>,
) -> Reply {
    tokio::select! {
        biased;
        queued = acks.send(reply) => match queued {
            Ok(()) => Reply::Queued,
            Err(_) => Reply::ListenerGone,
        },
        () = stopping(shutdown) => Reply::Stopping,
    }
}

async fn end_for_shutdown(acks: &mpsc::Sender<Result<BatchAck, Status>>) {
    let status = Status::unavailable("replayer shutting down");
    let _ = tokio::time::timeout(END_STATUS_WAIT, acks.send(Err(status))).await;
}

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
