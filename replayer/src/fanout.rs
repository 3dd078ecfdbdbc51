//! Fan-out: each received record is checked and parsed once into a [`ReplayRequest`], passed
//! through the global filters, admission rate and rewrites, then offered to every
//! [`ReplaySink`] (each staging target), registered first with the comparison when there is
//! one. Doing this once, not per target, counts a malformed capture once and shares the body
//! bytes between targets without copying.

use std::sync::Arc;

use tapwire_shared::RequestRecord;

use crate::compare::stage::CompareStage;
use crate::filter::Filters;
use crate::metrics::ReplayerMetrics;
use crate::outcome::RejectReason;
use crate::rate::CaptureRate;
use crate::request::{BatchDone, Dispatch, Origin, ReplayRequest};
use crate::rewrite::Rewrites;
use crate::sink::ReplaySink;

/// Every sink, fed from one place, behind the global filters, admission rate and rewrites.
pub struct FanOut {
    filters: Filters,
    rewrites: Rewrites,
    /// Checked per record when over-rate records are dropped.
    admission: Option<CaptureRate>,
    sinks: Vec<Box<dyn ReplaySink>>,
    /// Told of every request replayed, before any target can answer it.
    compare: Option<Arc<CompareStage>>,
    metrics: ReplayerMetrics,
}

impl FanOut {
    pub fn new(
        filters: Filters,
        rewrites: Rewrites,
        admission: Option<CaptureRate>,
        sinks: Vec<Box<dyn ReplaySink>>,
        compare: Option<Arc<CompareStage>>,
        metrics: ReplayerMetrics,
    ) -> Self {
        FanOut {
            filters,
            rewrites,
            admission,
            sinks,
            compare,
            metrics,
        }
    }
}

impl Dispatch for FanOut {
    /// Offers one record to every sink; `batch` is held until they are done with it.
    fn dispatch(&self, record: RequestRecord, origin: &Origin, batch: &Arc<BatchDone>) {
        let mut request = match ReplayRequest::from_record(&record, origin) {
            Ok(request) => request,
            Err(reason) => {
                self.metrics.rejected(reason).inc();
                return;
            }
        };
        if let Err(rule) = self.filters.check(&request) {
            self.metrics.filtered(rule).inc();
            return;
        }
        if let Some(admission) = &self.admission
            && !admission.admits(request.captured_at_ns)
        {
            self.metrics.rejected(RejectReason::GlobalRateLimited).inc();
            return;
        }
        if !self.rewrites.is_empty() {
            self.rewrites
                .apply(&mut request.path_and_query, &mut request.fields);
            request.host_override = self.rewrites.host_to_send(&request.fields);
        }
        request.batch = Some(Arc::clone(batch));
        let request = Arc::new(request);
        if let Some(stage) = &self.compare {
            stage.requested(&request);
        }
        for sink in &self.sinks {
            sink.offer(&request);
        }
    }
}
