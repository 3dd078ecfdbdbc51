//! The gRPC side: accepts record streams from any number of listeners, hands each batch to the
//! fan-out, and acknowledges it. On shutdown every open stream is ended with `UNAVAILABLE`, so
//! listeners know to reconnect elsewhere rather than wait.

use std::net::SocketAddr;
use std::sync::Arc;

use tapwire_shared::proto::{BatchAck, RecordBatch, replay_server::Replay};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fanout::FanOut;

/// Acks queued per stream before the stream stops reading batches.
const ACK_QUEUE: usize = 64;

pub struct ReplayService {
    fanout: Arc<FanOut>,
    shutdown: watch::Receiver<bool>,
}

impl ReplayService {
    pub fn new(fanout: Arc<FanOut>, shutdown: watch::Receiver<bool>) -> Self {
        ReplayService { fanout, shutdown }
    }
}

#[tonic::async_trait]
impl Replay for ReplayService {
    type StreamStream = ReceiverStream<Result<BatchAck, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<RecordBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request.remote_addr();
        let batches = request.into_inner();
        let (acks, outgoing) = mpsc::channel(ACK_QUEUE);
        tokio::spawn(serve_stream(
            peer,
            batches,
            acks,
            Arc::clone(&self.fanout),
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
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener_id = String::new();
    loop {
        let batch = tokio::select! {
            batch = batches.message() => batch,
            () = stopping(&mut shutdown) => {
                let _ = acks.send(Err(Status::unavailable("replayer shutting down"))).await;
                break;
            }
        };
        let batch = match batch {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(status) => {
                tracing::warn!(?peer, listener = %listener_id, %status, "listener stream failed");
                break;
            }
        };
        if listener_id.is_empty() {
            listener_id = batch.listener_id.clone();
            tracing::info!(?peer, listener = %listener_id, "listener connected");
        }
        let accepted = batch.records.len() as u32;
        for record in batch.records {
            fanout.dispatch(record);
        }
        // Comparing staging's answers with these is the replayer's next job; count them now.
        fanout.production_responses(batch.responses.len() as u64);
        let ack = BatchAck {
            sequence: batch.sequence,
            accepted,
        };
        if acks.send(Ok(ack)).await.is_err() {
            break;
        }
    }
    tracing::info!(?peer, listener = %listener_id, "listener stream ended");
}

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
