//! The listener's links against scripted replayers (real tonic servers on loopback): what was
//! sent but not acknowledged is sent again after a reconnect, in order, and counted as sent
//! only once acknowledged; replayers that appear get connections, those that go hand them on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tapwire_listener::link::{self, LinkSet, LinkSettings, Routed};
use tapwire_listener::metrics::ListenerMetrics;
use tapwire_listener::queue::{QueuedRecord, record_queue};
use tapwire_listener::replayers::ReplayerSet;
use tapwire_listener::router::{LinkConfig, stream_to_replayers};
use tapwire_runtime::{Health, Shutdown};
use tapwire_shared::RequestRecord;
use tapwire_shared::proto::replay_server::{Replay, ReplayServer};
use tapwire_shared::proto::{BatchAck, RecordBatch};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status, Streaming};

/// Records the ids of every stream's batches. The first stream acknowledges only its first
/// batch, then fails once it has three; later streams acknowledge everything.
#[derive(Clone, Default)]
struct ScriptedReplayer {
    streams: Arc<Mutex<Vec<Vec<u64>>>>,
    instances: Arc<Mutex<Vec<u64>>>,
    progress: Arc<Notify>,
}

#[tonic::async_trait]
impl Replay for ScriptedReplayer {
    type StreamStream = ReceiverStream<Result<BatchAck, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<RecordBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut batches = request.into_inner();
        let (acks, outgoing) = mpsc::channel(64);
        let this = self.clone();
        let stream_index = {
            let mut streams = this.streams.lock().unwrap();
            streams.push(Vec::new());
            streams.len() - 1
        };
        tokio::spawn(async move {
            let mut received = 0;
            while let Ok(Some(batch)) = batches.message().await {
                received += 1;
                this.instances.lock().unwrap().push(batch.listener_instance);
                this.streams.lock().unwrap()[stream_index]
                    .extend(batch.records.iter().map(|r| r.id));
                this.progress.notify_waiters();
                let first_stream = stream_index == 0;
                if !first_stream || received == 1 {
                    let ack = BatchAck {
                        sequence: batch.sequence,
                        accepted: batch.records.len() as u32,
                    };
                    let _ = acks.send(Ok(ack)).await;
                }
                if first_stream && received == 3 {
                    let _ = acks
                        .send(Err(Status::unavailable("scripted failure")))
                        .await;
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(outgoing)))
    }
}

fn record(id: u64) -> RequestRecord {
    RequestRecord {
        id,
        captured_at_ns: id,
        client: "10.0.0.1:4000".parse().unwrap(),
        server: "10.0.0.2:80".parse().unwrap(),
        request: Bytes::from(format!("GET /{id} HTTP/1.1\r\n\r\n")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_batches_are_sent_again_after_a_reconnect() {
    let replayer = ScriptedReplayer::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = replayer.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ReplayServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });

    let metrics = ListenerMetrics::register(&mut Registry::default());
    let (queue, records) = record_queue(1024, 1 << 20, metrics.clone());
    let config = LinkConfig {
        replayers: ReplayerSet::new(vec![format!("http://{addr}").parse().unwrap()], None),
        settings: LinkSettings {
            authorization: None,
            listener_id: "link-test".into(),
            instance: 7,
            // One record per batch, so batches map to ids.
            max_batch_records: 1,
            max_batch_bytes: 1 << 20,
            max_unacked_batches: 8,
            compress: false,
        },
    };
    let stopping = Shutdown::new();
    let link = tokio::spawn(stream_to_replayers(
        config,
        records,
        None,
        metrics.clone(),
        Health::new().condition("no replayer link is up"),
        stopping,
    ));
    // Each push waits until the replayer has seen the record, so batches stay one record each.
    for id in 1..=5 {
        let seen = replayer.progress.notified();
        queue.push_request(record(id));
        tokio::time::timeout(Duration::from_secs(10), seen)
            .await
            .unwrap();
    }
    drop(queue);
    tokio::time::timeout(Duration::from_secs(20), link)
        .await
        .unwrap()
        .unwrap();

    let streams = replayer.streams.lock().unwrap().clone();
    assert_eq!(
        streams[0],
        [1, 2, 3],
        "first stream: three batches, one acknowledged"
    );
    assert_eq!(
        streams[1],
        [2, 3, 4, 5],
        "second stream: the unacknowledged two first"
    );
    assert_eq!(
        metrics.records_sent.get(),
        5,
        "each record counted once, when acknowledged"
    );
    assert_eq!(metrics.dropped_total(), 0);
    let instances = replayer.instances.lock().unwrap().clone();
    assert!(
        instances.iter().all(|&i| i == instances[0]),
        "one listener instance"
    );
}

/// Acknowledges every batch at once and remembers the record ids it got.
#[derive(Clone, Default)]
struct AckingReplayer {
    ids: Arc<Mutex<Vec<u64>>>,
}

#[tonic::async_trait]
impl Replay for AckingReplayer {
    type StreamStream = ReceiverStream<Result<BatchAck, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<RecordBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut batches = request.into_inner();
        let (acks, outgoing) = mpsc::channel(64);
        let ids = Arc::clone(&self.ids);
        tokio::spawn(async move {
            while let Ok(Some(batch)) = batches.message().await {
                ids.lock()
                    .unwrap()
                    .extend(batch.records.iter().map(|r| r.id));
                let ack = BatchAck {
                    sequence: batch.sequence,
                    accepted: batch.records.len() as u32,
                };
                if acks.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(outgoing)))
    }
}

async fn acking_replayer() -> (AckingReplayer, Endpoint) {
    let replayer = AckingReplayer::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = replayer.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ReplayServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    (replayer, endpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayers_that_appear_get_connections_and_those_that_go_hand_them_on() {
    let (first, first_endpoint) = acking_replayer().await;
    let (second, second_endpoint) = acking_replayer().await;
    let metrics = ListenerMetrics::register(&mut Registry::default());
    let (queue, mut queued) = record_queue(1 << 16, 1 << 30, metrics.clone());
    let settings = Arc::new(LinkSettings {
        authorization: None,
        listener_id: "membership-test".into(),
        instance: 3,
        max_batch_records: 16,
        max_batch_bytes: 1 << 20,
        max_unacked_batches: 8,
        compress: false,
    });
    let stopping = Shutdown::new();
    let links = LinkSet::start(
        vec![first_endpoint.clone()],
        settings,
        metrics.clone(),
        Health::new().condition("no replayer link is up"),
        stopping,
    );
    // 200 client connections per phase, so every shard gets some.
    let send_phase = |phase: u64| {
        for client in 0..200u64 {
            let id = phase * 1000 + client;
            let mut record = record(id);
            record.client = std::net::SocketAddr::from(([10, 0, 0, 1], 20_000 + client as u16));
            queue.push_request(record);
        }
    };
    let route_all = |queued: &mut tapwire_listener::queue::QueueReceiver| {
        std::iter::from_fn(|| queued.try_recv()).collect::<Vec<_>>()
    };
    let deliver = |links: &Arc<LinkSet>, records: Vec<QueuedRecord>| {
        let handles = links.current();
        async move {
            for record in records {
                let owner = link::owner(&handles, record.shard(), None)
                    .or_else(|| link::home(&handles, record.shard()))
                    .unwrap();
                assert!(owner.send(Routed::Records(vec![record])).await.is_ok());
            }
        }
    };
    let wait_acknowledged = |count: u64| {
        let metrics = metrics.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while metrics.records_sent.get() < count {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "stuck at {}",
                    metrics.records_sent.get()
                );
                // The link has no event for acknowledgements; its counter is the signal.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    send_phase(0);
    deliver(&links, route_all(&mut queued)).await;
    wait_acknowledged(200).await;
    assert_eq!(
        first.ids.lock().unwrap().len(),
        200,
        "one replayer: it takes all"
    );

    // A second replayer appears: new connections spread over both.
    links.update(vec![first_endpoint.clone(), second_endpoint.clone()]);
    send_phase(1);
    deliver(&links, route_all(&mut queued)).await;
    wait_acknowledged(400).await;
    let second_share = second.ids.lock().unwrap().len();
    assert!(
        (50..=150).contains(&second_share),
        "second took {second_share} of 200"
    );

    // The first one goes away: everything goes to the second.
    links.update(vec![second_endpoint]);
    send_phase(2);
    deliver(&links, route_all(&mut queued)).await;
    wait_acknowledged(600).await;
    assert_eq!(second.ids.lock().unwrap().len(), second_share + 200);
    assert!(links.finish().await.is_empty());

    let mut all: Vec<u64> = first.ids.lock().unwrap().clone();
    all.extend(second.ids.lock().unwrap().iter());
    all.sort_unstable();
    let expected: Vec<u64> = (0..3)
        .flat_map(|phase| (0..200).map(move |c| phase * 1000 + c))
        .collect();
    assert_eq!(all, expected, "every record exactly once");
}
