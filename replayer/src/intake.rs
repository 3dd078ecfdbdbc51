//! Where every source hands its records. A source opens one [`StreamIntake`] per ordered
//! stream of records (a listener's gRPC stream; a pass over recorded files); for each batch,
//! resent copies are dropped ([`dedup`](crate::dedup)), every record and production response
//! is shown to the [observers](crate::observe), each request waits for its turn
//! ([`pace`](crate::pace)) and for room in every target's queue ([`Room`]: a full queue
//! stops the stream, so a burst is held by its source instead of dropped), then goes on
//! downstream: the [middleware](crate::middleware) if
//! there is one, else the [fan-out](crate::fanout). The returned [`Delivered`] fires once
//! everything downstream is done with the batch's requests: only then may the source
//! acknowledge it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use tapwire_runtime::Shutdown;
use tapwire_shared::gor::{GorMessage, message_id};
use tapwire_shared::{RequestRecord, ResponseRecord, proto};
use tokio::sync::oneshot;

use crate::compare::stage::CompareStage;
use crate::dedup::Deduplicator;
use crate::metrics::ReplayerMetrics;
use crate::observe::Observers;
use crate::outcome::RejectReason;
use crate::pace::{Pacer, StreamPacing};
use crate::request::{BatchDone, Dispatch, Origin};
use crate::sink::Room;

/// Fires once every sink is done with each request of a batch (answered, failed or dropped,
/// and counted either way).
pub type Delivered = oneshot::Receiver<()>;

/// Shutdown came while a batch was being paced: the part already dispatched goes on, but the
/// batch must not be acknowledged (the listener sends it again, elsewhere or later).
#[derive(Debug)]
pub struct Interrupted;

/// Shared by every source and stream.
#[derive(Clone)]
pub struct Intake {
    /// Only streams hold the downstream stage: once they have ended, dropping the run's
    /// handle lets the sinks drain and stop, even while a connection that cannot flush still
    /// holds a source.
    downstream: Weak<dyn Dispatch>,
    /// Shared by all streams: a listener's resend arrives on its next stream.
    dedup: Arc<Deduplicator>,
    global_rate: Option<Arc<DefaultDirectRateLimiter>>,
    /// Shared by all streams: room in the targets' queues, one record at a time.
    room: Arc<Room>,
    observers: Observers,
    compare: Option<Arc<CompareStage>>,
    metrics: ReplayerMetrics,
}

impl Intake {
    pub fn new(
        downstream: Weak<dyn Dispatch>,
        global_rate: Option<Arc<DefaultDirectRateLimiter>>,
        room: Room,
        observers: Observers,
        compare: Option<Arc<CompareStage>>,
        metrics: ReplayerMetrics,
    ) -> Self {
        Intake {
            downstream,
            dedup: Arc::default(),
            global_rate,
            room: Arc::new(room),
            observers,
            compare,
            metrics,
        }
    }

    /// A new ordered stream of records, paced as `pacing` says; `None` once the replayer is
    /// shutting down.
    pub fn open_stream(&self, pacing: StreamPacing) -> Option<StreamIntake> {
        Some(StreamIntake {
            downstream: self.downstream.upgrade()?,
            dedup: Arc::clone(&self.dedup),
            pacer: Pacer::new(pacing, self.global_rate.clone()),
            room: Arc::clone(&self.room),
            observers: self.observers.clone(),
            compare: self.compare.clone(),
            metrics: self.metrics.clone(),
        })
    }
}

/// One ordered stream of records, paced on its own.
pub struct StreamIntake {
    downstream: Arc<dyn Dispatch>,
    dedup: Arc<Deduplicator>,
    pacer: Pacer,
    room: Arc<Room>,
    observers: Observers,
    /// Set when responses are compared: production's go there too.
    compare: Option<Arc<CompareStage>>,
    metrics: ReplayerMetrics,
}

impl StreamIntake {
    /// Takes one batch from `origin`: its new records go downstream in order, each when pacing
    /// lets it, and production's `responses` are counted and shown to the observers. Pacing
    /// yields to `shutdown`.
    pub async fn take(
        &mut self,
        origin: &Origin,
        records: Vec<RequestRecord>,
        responses: Vec<ResponseRecord>,
        shutdown: &Shutdown,
    ) -> Result<Delivered, Interrupted> {
        let (batch_done, delivered) = BatchDone::new();
        let (arrived, copies) = self
            .dedup
            .fresh(&origin.listener_id, origin.instance, records);
        self.metrics.records_duplicate.inc_by(copies);
        self.metrics
            .production_responses_received
            .inc_by(responses.len() as u64);
        // The recorder sees each request as it arrives and goes on, then production's answer
        // to it: the middleware (which gets the request itself downstream) sees a request
        // before its response, as GoReplay's middleware expects; the comparison gets it once
        // the request is on its way to the targets.
        let mut answers: HashMap<u64, Vec<ResponseRecord>> = HashMap::new();
        if !self.observers.is_empty() || self.compare.is_some() {
            for response in responses {
                answers
                    .entry(response.request_id)
                    .or_default()
                    .push(response);
            }
        }
        for record in arrived {
            if self.pacer.paces() {
                tokio::select! {
                    biased;
                    () = shutdown.requested() => return Err(Interrupted),
                    () = self.pacer.until_due(record.captured_at_ns) => {}
                }
            }
            // While a target's queue is full this stream reads nothing more, and its source
            // (the listener's buffer, a file) holds what follows. No await from here to the
            // dispatch: the room seen is still there.
            let _turn = tokio::select! {
                biased;
                () = shutdown.requested() => return Err(Interrupted),
                turn = self.room.for_one() => turn,
            };
            // Received once it goes on: one interrupted by shutdown is sent again (by the
            // listener) and counted then.
            self.metrics.records_received.inc();
            if !self.observers.is_empty() {
                self.observers
                    .request(&GorMessage::request(&record, origin.instance));
            }
            let id = record.id;
            self.downstream.dispatch(record, origin, &batch_done);
            for response in answers.remove(&id).into_iter().flatten() {
                self.production_answered(origin, response);
            }
        }
        // Responses to requests of earlier batches.
        for response in answers.into_values().flatten() {
            self.production_answered(origin, response);
        }
        // From here only the requests hold it: it fires when the last one is done.
        drop(batch_done);
        Ok(delivered)
    }

    /// Production's `response` to a request of `origin`, to the observers and the comparison.
    fn production_answered(&self, origin: &Origin, response: ResponseRecord) {
        if !self.observers.is_empty() {
            self.observers
                .original_response(&GorMessage::response(&response, origin.instance));
        }
        if let Some(stage) = &self.compare {
            stage.production_answered(
                message_id(origin.instance, response.request_id),
                response.response,
                Duration::from_nanos(response.latency_ns),
            );
        }
    }

    /// Takes a batch as it came over the wire: records that are not valid are counted
    /// (`invalid_record`), the rest taken.
    pub async fn take_wire(
        &mut self,
        origin: &Origin,
        records: Vec<proto::RequestRecord>,
        responses: Vec<proto::ResponseRecord>,
        shutdown: &Shutdown,
    ) -> Result<Delivered, Interrupted> {
        let mut valid = Vec::with_capacity(records.len());
        for wire in records {
            match RequestRecord::try_from(wire) {
                Ok(record) => valid.push(record),
                Err(error) => {
                    tracing::debug!(%error, "invalid record");
                    self.metrics.records_received.inc();
                    self.metrics.rejected(RejectReason::InvalidRecord).inc();
                }
            }
        }
        let responses = responses.into_iter().map(ResponseRecord::from).collect();
        self.take(origin, valid, responses, shutdown).await
    }
}
