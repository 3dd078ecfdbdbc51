//! Where every source hands its records. A source opens one [`StreamIntake`] per ordered
//! stream of records (a listener's gRPC stream; a file); for each batch, resent copies are
//! dropped ([`dedup`](crate::dedup)), each record waits for its turn ([`pace`](crate::pace)),
//! then the [`fan-out`](crate::fanout) takes it. The returned [`Delivered`] fires once every
//! sink is done with the batch's requests: only then may the source acknowledge it.

use std::sync::{Arc, Weak};

use governor::DefaultDirectRateLimiter;
use tapwire_runtime::Shutdown;
use tapwire_shared::proto;
use tokio::sync::oneshot;

use crate::config::Timing;
use crate::dedup::Deduplicator;
use crate::fanout::FanOut;
use crate::metrics::ReplayerMetrics;
use crate::pace::Pacer;
use crate::request::BatchDone;

/// Fires once every sink is done with each request of a batch (answered, failed or dropped,
/// and counted either way).
pub type Delivered = oneshot::Receiver<()>;

/// Who sent a batch: one listener process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The listener's name, as it reports it.
    pub listener_id: String,
    /// Its process: record ids restart with each.
    pub instance: u64,
}

/// Shutdown came while a batch was being paced: the part already dispatched goes on, but the
/// batch must not be acknowledged (the listener sends it again, elsewhere or later).
#[derive(Debug)]
pub struct Interrupted;

/// Shared by every source and stream.
#[derive(Clone)]
pub struct Intake {
    /// Only streams hold the fan-out: once they have ended, dropping the run's handle closes
    /// the target queues, even while a connection that cannot flush still holds a source.
    fanout: Weak<FanOut>,
    /// Shared by all streams: a listener's resend arrives on its next stream.
    dedup: Arc<Deduplicator>,
    timing: Timing,
    speed: f64,
    global_rate: Option<Arc<DefaultDirectRateLimiter>>,
    metrics: ReplayerMetrics,
}

impl Intake {
    pub fn new(
        fanout: &Arc<FanOut>,
        timing: Timing,
        speed: f64,
        global_rate: Option<Arc<DefaultDirectRateLimiter>>,
        metrics: ReplayerMetrics,
    ) -> Self {
        Intake {
            fanout: Arc::downgrade(fanout),
            dedup: Arc::default(),
            timing,
            speed,
            global_rate,
            metrics,
        }
    }

    /// A new ordered stream of records; `None` once the replayer is shutting down.
    pub fn open_stream(&self) -> Option<StreamIntake> {
        Some(StreamIntake {
            fanout: self.fanout.upgrade()?,
            dedup: Arc::clone(&self.dedup),
            pacer: Pacer::new(self.timing, self.speed, self.global_rate.clone()),
            metrics: self.metrics.clone(),
        })
    }
}

/// One ordered stream of records, paced on its own.
pub struct StreamIntake {
    fanout: Arc<FanOut>,
    dedup: Arc<Deduplicator>,
    pacer: Pacer,
    metrics: ReplayerMetrics,
}

impl StreamIntake {
    /// Takes one batch from `origin`: its new records go to the fan-out in order, each when
    /// pacing lets it; `responses` is how many production responses came along (counted, kept
    /// for comparison). Pacing yields to `shutdown`.
    pub async fn take(
        &mut self,
        origin: &Origin,
        records: Vec<proto::RequestRecord>,
        responses: usize,
        shutdown: &Shutdown,
    ) -> Result<Delivered, Interrupted> {
        let (batch_done, delivered) = BatchDone::new();
        let (records, copies) = self
            .dedup
            .fresh(&origin.listener_id, origin.instance, records);
        self.metrics.records_duplicate.inc_by(copies);
        for record in records {
            if self.pacer.paces() {
                tokio::select! {
                    biased;
                    () = shutdown.requested() => return Err(Interrupted),
                    () = self.pacer.until_due(record.captured_at_ns) => {}
                }
            }
            self.fanout
                .dispatch(record, &origin.listener_id, &batch_done);
        }
        self.metrics
            .production_responses_received
            .inc_by(responses as u64);
        // From here only the requests hold it: it fires when the last one is done.
        drop(batch_done);
        Ok(delivered)
    }
}
