//! The listeners' source: a gRPC server accepting record streams from listeners (within the
//! [`LinkLimits`]: connections, handshake time and streams per connection are capped by
//! [`connections`](super::connections), and the bytes of batches held from all listeners
//! together by one budget: at the cap, streams stop reading and HTTP/2 flow control leaves the
//! rest with the listeners), each stream a [`StreamSession`] that hands batches to its own
//! [`StreamIntake`](crate::intake::StreamIntake) and acknowledges each batch, in order, once
//! every target is done with its requests. Pacing a stream holds that listener back (its
//! acknowledgements wait), never the others. A stream that sends what cannot be decoded is
//! ended with the decoder's status (`INTERNAL`, `OUT_OF_RANGE`...). On shutdown every open
//! stream is ended with `UNAVAILABLE`, so listeners know to reconnect elsewhere rather than
//! wait, even a listener that has stopped reading its acknowledgements.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;
use subtle::ConstantTimeEq;
use tapwire_runtime::Shutdown;
use tapwire_shared::config::ConfigError;
use tapwire_shared::link;
use tapwire_shared::proto::replay_server::{Replay, ReplayServer};
use tapwire_shared::proto::{BatchAck, RecordBatch};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Duration;
use tokio_rustls::rustls::ServerConfig;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::connections::{self, ConnectionLimits};
use crate::config::ReplayerConfig;
use crate::intake::{Delivered, Intake, StreamIntake};
use crate::metrics::ReplayerMetrics;
use crate::outcome::LinkRefusal;
use crate::pace::StreamPacing;
use crate::request::Origin;

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
/// How long shutdown waits for listener connections to close once their streams have ended.
const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Longest listener id taken (bytes); it keys the de-duplicator and appears in logs.
const MAX_LISTENER_ID: usize = 256;
/// The held-bytes budget counts in units of this many bytes (a semaphore's permits).
const HELD_UNIT: u64 = 1024;

/// What listeners may hold of the gRPC server.
#[derive(Debug, Clone, Copy)]
pub struct LinkLimits {
    pub connections: ConnectionLimits,
    pub max_streams_per_connection: u32,
    /// Bytes of batches held from all listeners together.
    pub max_held_bytes: u64,
}

impl LinkLimits {
    pub fn compile(config: &ReplayerConfig) -> Result<LinkLimits, ConfigError> {
        for (field, value) in [
            ("max_connections", u64::from(config.max_connections)),
            (
                "max_streams_per_connection",
                u64::from(config.max_streams_per_connection),
            ),
            ("max_held_bytes", config.max_held_bytes.get() / HELD_UNIT),
        ] {
            if value == 0 {
                return Err(ConfigError::new(
                    field,
                    "must be at least 1 (1KiB for bytes)",
                ));
            }
        }
        Ok(LinkLimits {
            connections: ConnectionLimits {
                max_connections: config.max_connections as usize,
                handshake_timeout: config.handshake_timeout,
            },
            max_streams_per_connection: config.max_streams_per_connection,
            max_held_bytes: config.max_held_bytes.get(),
        })
    }
}

/// The gRPC server, bound and ready to serve.
pub struct GrpcSource {
    listener: tokio::net::TcpListener,
    pacing: StreamPacing,
    limits: LinkLimits,
    token: Option<String>,
    tls: Option<Arc<ServerConfig>>,
    metrics: ReplayerMetrics,
}

impl GrpcSource {
    /// Binds `addr` now, so a taken port fails the start, not the run.
    pub async fn bind(
        addr: SocketAddr,
        pacing: StreamPacing,
        limits: LinkLimits,
        token: Option<String>,
        tls: Option<Arc<ServerConfig>>,
        metrics: ReplayerMetrics,
    ) -> anyhow::Result<GrpcSource> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for gRPC on {addr}"))?;
        Ok(GrpcSource {
            listener,
            pacing,
            limits,
            token,
            tls,
            metrics,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves listeners until `shutdown`: then every stream acknowledges what its targets
    /// finish in time and ends, and connections get a grace period to close.
    pub async fn run(self, intake: Intake, shutdown: Shutdown) -> anyhow::Result<()> {
        // At most u32::MAX units (4 TiB): what one acquire can ask for.
        let held_units = (self.limits.max_held_bytes / HELD_UNIT).min(u64::from(u32::MAX)) as u32;
        let peers = connections::AuthenticatedPeers::default();
        let service = ReplayServer::new(ReplayService {
            intake,
            pacing: self.pacing,
            shutdown: shutdown.clone(),
            held: Arc::new(Semaphore::new(held_units as usize)),
            held_units,
            metrics: self.metrics.clone(),
        })
        .max_decoding_message_size(link::MAX_MESSAGE_BYTES)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let service = tonic::service::interceptor::InterceptedService::new(
            service,
            TokenCheck::new(
                self.token,
                peers.clone(),
                self.metrics.streams_unauthenticated.clone(),
            ),
        );
        let server = tonic::transport::Server::builder()
            .initial_stream_window_size(link::WINDOW_BYTES)
            .initial_connection_window_size(link::WINDOW_BYTES)
            .max_concurrent_streams(self.limits.max_streams_per_connection)
            .add_service(service);
        let incoming = connections::accept(
            self.listener,
            self.limits.connections,
            self.tls,
            peers,
            self.metrics.clone(),
        );
        let serve = server.serve_with_incoming_shutdown(incoming, shutdown.requested());
        // Streams end at once on shutdown, but the connection of a listener that reads nothing
        // cannot flush its last frames, and the server would wait on it for ever.
        let grace = async {
            shutdown.requested().await;
            tokio::time::sleep(CONNECTION_CLOSE_GRACE).await;
        };
        tokio::select! {
            served = serve => if let Err(error) = served {
                // Streams must end too: they hold the fan-out, and targets drain only after.
                shutdown.request();
                return Err(error).context("gRPC server failed");
            },
            () = grace => tracing::warn!(
                grace = ?CONNECTION_CLOSE_GRACE,
                "listener connections still open after their streams ended; not waiting for them"
            ),
        }
        Ok(())
    }
}

/// Refuses streams without the configured bearer token. The comparison takes the same time
/// whatever the token presented, so it leaks nothing about the real one. A stream that passes
/// marks its connection as authenticated (see [`connections`]).
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<[u8]>>,
    peers: connections::AuthenticatedPeers,
    refused: Counter,
}

impl TokenCheck {
    pub fn new(
        token: Option<String>,
        peers: connections::AuthenticatedPeers,
        refused: Counter,
    ) -> Self {
        TokenCheck {
            expected: token.map(|token| link::bearer(&token).into_bytes().into()),
            peers,
            refused,
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            self.peers.authenticated(request.remote_addr());
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get(link::AUTHORIZATION)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if bool::from(presented.ct_eq(expected)) {
            self.peers.authenticated(request.remote_addr());
            Ok(request)
        } else {
            self.refused.inc();
            tracing::warn!(peer = ?request.remote_addr(), "refused a listener stream: missing or wrong token");
            Err(Status::unauthenticated("missing or wrong token"))
        }
    }
}

struct ReplayService {
    intake: Intake,
    pacing: StreamPacing,
    shutdown: Shutdown,
    /// The budget of bytes held from all listeners, in [`HELD_UNIT`]s.
    held: Arc<Semaphore>,
    held_units: u32,
    metrics: ReplayerMetrics,
}

#[tonic::async_trait]
impl Replay for ReplayService {
    type StreamStream = ReceiverStream<Result<BatchAck, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<RecordBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let Some(intake) = self.intake.open_stream(self.pacing) else {
            return Err(Status::unavailable("replayer shutting down"));
        };
        let peer = request.remote_addr();
        let (acks, outgoing) = mpsc::channel(ACK_QUEUE);
        let session = StreamSession {
            peer,
            origin: None,
            batches: request.into_inner(),
            acks,
            intake,
            in_flight: VecDeque::new(),
            shutdown: self.shutdown.clone(),
            held: Arc::clone(&self.held),
            held_units: self.held_units,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(session.run());
        Ok(Response::new(ReceiverStream::new(outgoing)))
    }
}

/// One listener stream.
struct StreamSession {
    peer: Option<SocketAddr>,
    /// Known from the first batch.
    origin: Option<Origin>,
    batches: Streaming<RecordBatch>,
    acks: mpsc::Sender<Result<BatchAck, Status>>,
    intake: StreamIntake,
    /// Batches dispatched and not yet acknowledged, oldest first: each is acknowledged, in
    /// order, once every target is done with its requests.
    in_flight: VecDeque<(BatchAck, Delivered)>,
    shutdown: Shutdown,
    held: Arc<Semaphore>,
    held_units: u32,
    metrics: ReplayerMetrics,
}

/// What wakes a stream up.
enum Turn {
    /// The oldest batch in flight is delivered: acknowledge it.
    Delivered,
    /// The listener sent a batch, closed its side (`None`), or broke the stream.
    Received(Result<Option<RecordBatch>, Status>),
    Stopping,
}

/// Why a stream takes no more batches.
enum Refused {
    /// Shutdown came first.
    Stopping,
    InvalidListenerId,
}

/// Printable and short: a listener id keys the de-duplicator and is written to logs.
fn valid_listener_id(id: &str) -> bool {
    id.len() <= MAX_LISTENER_ID && !id.chars().any(char::is_control)
}

/// What became of a reply.
enum Reply {
    Queued,
    ListenerGone,
    Stopping,
}

impl StreamSession {
    async fn run(mut self) {
        loop {
            match self.next_turn().await {
                Turn::Delivered => match self.acknowledge_oldest().await {
                    Reply::Queued => {}
                    Reply::ListenerGone => break,
                    Reply::Stopping => {
                        self.finish_for_shutdown().await;
                        break;
                    }
                },
                Turn::Received(Ok(Some(batch))) => match self.take(batch).await {
                    Ok(()) => {}
                    Err(Refused::Stopping) => {
                        // That batch is not acknowledged: the listener sends it again elsewhere.
                        self.finish_for_shutdown().await;
                        break;
                    }
                    Err(Refused::InvalidListenerId) => {
                        let status = Status::invalid_argument(format!(
                            "listener id must be at most {MAX_LISTENER_ID} bytes without control characters"
                        ));
                        let _ = self.reply(Err(status)).await;
                        break;
                    }
                },
                Turn::Received(Ok(None)) => {
                    self.acknowledge_all().await;
                    break;
                }
                Turn::Received(Err(status)) => {
                    tracing::warn!(peer = ?self.peer, listener = %self.listener_id(),
                        code = ?status.code(), status_message = %status.message().escape_debug(),
                        "listener stream failed");
                    // Ending with OK would tell the listener its stream closed cleanly.
                    let _ = self.reply(Err(status)).await;
                    break;
                }
                Turn::Stopping => {
                    self.finish_for_shutdown().await;
                    break;
                }
            }
        }
        tracing::info!(peer = ?self.peer, listener = %self.listener_id(), "listener stream ended");
    }

    fn listener_id(&self) -> &str {
        self.origin
            .as_ref()
            .map_or("", |origin| origin.listener_id.as_str())
    }

    async fn next_turn(&mut self) -> Turn {
        let room = self.in_flight.len() < MAX_BATCHES_IN_FLIGHT;
        let oldest_delivered = async {
            match self.in_flight.front_mut() {
                Some((_, delivered)) => {
                    let _ = delivered.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = oldest_delivered => Turn::Delivered,
            batch = self.batches.message(), if room => Turn::Received(batch),
            () = self.shutdown.requested() => Turn::Stopping,
        }
    }

    async fn acknowledge_oldest(&mut self) -> Reply {
        match self.in_flight.pop_front() {
            Some((ack, _)) => self.reply(Ok(ack)).await,
            None => Reply::Queued,
        }
    }

    /// Hands a batch to the intake once the held-bytes budget has room for it; `Err` when
    /// shutdown came first or the batch's listener id is refused.
    async fn take(&mut self, batch: RecordBatch) -> Result<(), Refused> {
        if self.origin.is_none() {
            if !valid_listener_id(&batch.listener_id) {
                self.metrics
                    .link_refused(LinkRefusal::InvalidListenerId)
                    .inc();
                tracing::warn!(peer = ?self.peer, listener = ?batch.listener_id,
                    "refused a listener stream: invalid listener id");
                return Err(Refused::InvalidListenerId);
            }
            tracing::info!(peer = ?self.peer, listener = %batch.listener_id, "listener connected");
        }
        let held = self.hold(&batch).await?;
        let origin = self.origin.get_or_insert_with(|| Origin {
            listener_id: batch.listener_id.clone(),
            instance: batch.listener_instance,
        });
        // Each batch says which listener process it comes from (a spooled batch keeps an
        // earlier one's).
        origin.instance = batch.listener_instance;
        let ack = BatchAck {
            sequence: batch.sequence,
            accepted: batch.records.len() as u32,
        };
        let delivered = self
            .intake
            .take_wire(origin, batch.records, batch.responses, &self.shutdown)
            .await
            .map_err(|_| Refused::Stopping)?;
        // The batch's bytes go back to the budget as soon as its requests are done, even
        // while its acknowledgement waits for the older ones.
        let (released, delivered_and_released) = oneshot::channel();
        tokio::spawn(async move {
            let _ = delivered.await;
            drop(held);
            let _ = released.send(());
        });
        self.in_flight.push_back((ack, delivered_and_released));
        Ok(())
    }

    /// Room in the held-bytes budget for `batch` (all of it, for a batch larger than that).
    async fn hold(&self, batch: &RecordBatch) -> Result<OwnedSemaphorePermit, Refused> {
        let bytes = prost::Message::encoded_len(batch) as u64;
        let units = bytes
            .div_ceil(HELD_UNIT)
            .clamp(1, u64::from(self.held_units)) as u32;
        tokio::select! {
            biased;
            () = self.shutdown.requested() => Err(Refused::Stopping),
            permit = Arc::clone(&self.held).acquire_many_owned(units) => {
                permit.map_err(|_| Refused::Stopping)
            }
        }
    }

    /// The listener is done sending; it still waits for the acknowledgements of what is in
    /// flight (unless shutdown comes first).
    async fn acknowledge_all(&mut self) {
        let acknowledge_all = async {
            while let Some((ack, delivered)) = self.in_flight.pop_front() {
                let _ = delivered.await;
                if self.acks.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        };
        let stopped = tokio::select! {
            () = acknowledge_all => false,
            () = self.shutdown.requested() => true,
        };
        if stopped {
            self.finish_for_shutdown().await;
        }
    }

    /// Waits for room in the ack queue, which a listener that reads no acks never makes:
    /// shutdown must not wait on it. With room, the reply is queued even when stopping.
    async fn reply(&self, reply: Result<BatchAck, Status>) -> Reply {
        tokio::select! {
            biased;
            queued = self.acks.send(reply) => match queued {
                Ok(()) => Reply::Queued,
                Err(_) => Reply::ListenerGone,
            },
            () = self.shutdown.requested() => Reply::Stopping,
        }
    }

    /// On shutdown: acknowledges the batches whose requests the targets finish within
    /// [`SHUTDOWN_ACK_WAIT`], in order, then ends the stream with `UNAVAILABLE` so the listener
    /// moves the rest to another replayer (or keeps it for this one's return).
    async fn finish_for_shutdown(&mut self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_ACK_WAIT;
        while let Some((ack, delivered)) = self.in_flight.pop_front() {
            if tokio::time::timeout_at(deadline, delivered).await.is_err() {
                break;
            }
            if tokio::time::timeout_at(deadline, self.acks.send(Ok(ack)))
                .await
                .is_err()
            {
                break;
            }
        }
        let status = Status::unavailable("replayer shutting down");
        let _ = tokio::time::timeout(END_STATUS_WAIT, self.acks.send(Err(status))).await;
    }
}
