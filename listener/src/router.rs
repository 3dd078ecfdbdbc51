//! The router: takes records from the [`queue`](crate::queue) in capture order and hands each to
//! the [`link`](crate::link) of the replayer owning its connection's [shard](crate::shard), many
//! at a time (one channel message per link per burst). While no replayer is up and a
//! [`spool`](crate::spool) is configured, records go to disk instead and come back, oldest
//! first, once one is up; after a stop, what the links still hold goes there too. Replayer names
//! are resolved again periodically, and links follow the addresses.

use std::sync::Arc;

use tapwire_runtime::Shutdown;
use tapwire_runtime::health::Condition;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use crate::batch::PendingBatch;
use crate::link::{self, LinkHandle, LinkSet, LinkSettings, Routed};
use crate::metrics::ListenerMetrics;
use crate::queue::{QueueReceiver, QueuedRecord};
use crate::replayers::ReplayerSet;
use crate::spool::Spool;

/// Records routed in one go once the router is awake.
const ROUTE_BURST: usize = 256;
/// How often the router looks again at which replayers are up, flushes a partly filled spill
/// batch and resumes reading the spool, when no record arrives to make it look.
const ROUTER_TICK: std::time::Duration = std::time::Duration::from_millis(100);
/// Times a refused hand-over is routed again before it is left to the shutdown accounting.
const ROUTE_ATTEMPTS: usize = 3;
/// How often replayer names are resolved again.
const RESOLVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the replayers are and how the links batch, pace and protect records.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub replayers: ReplayerSet,
    pub settings: LinkSettings,
}

/// Routes every queued record to the replayer owning its shard until the queue is closed and
/// every link is done (fully acknowledged, or told to stop by `stop`). Returns the spool for
/// the final accounting. Every link holds `output_ready` while its stream is open.
pub async fn stream_to_replayers(
    config: LinkConfig,
    records: QueueReceiver,
    spool: Option<Spool>,
    metrics: ListenerMetrics,
    output_ready: Condition,
    stop: Shutdown,
) -> Option<Spool> {
    let resolved = match config.replayers.resolve(&[]) {
        Ok(resolved) => resolved,
        Err(error) => {
            tracing::error!(%error, "cannot set up the replayer endpoints");
            return spool;
        }
    };
    Router::start(
        config,
        resolved,
        records,
        spool,
        metrics,
        output_ready,
        stop,
    )
    .run()
    .await
}

/// What becomes of a record taken from the queue right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    /// To the link owning its shard.
    Link,
    /// To the spool: no replayer is up, or the links were told to stop.
    Spool,
    /// Stopping without a spool: it stays counted as buffered, then dropped{shutdown}.
    Nowhere,
}

struct Router {
    links: Arc<LinkSet>,
    settings: Arc<LinkSettings>,
    records: QueueReceiver,
    spool: Option<Spool>,
    /// A batch being filled for the spool.
    spill: Option<PendingBatch>,
    stop: Shutdown,
    resolver: Option<JoinHandle<()>>,
}

impl Router {
    /// Starts a link for each resolved replayer address.
    fn start(
        config: LinkConfig,
        resolved: Vec<Vec<tonic::transport::Endpoint>>,
        records: QueueReceiver,
        spool: Option<Spool>,
        metrics: ListenerMetrics,
        output_ready: Condition,
        stop: Shutdown,
    ) -> Router {
        let settings = Arc::new(config.settings);
        let links = LinkSet::start(
            resolved.concat(),
            Arc::clone(&settings),
            metrics,
            output_ready,
            stop.clone(),
        );
        let resolver = config.replayers.has_names().then(|| {
            tokio::spawn(follow_replayer_names(
                config.replayers.clone(),
                Arc::clone(&links),
                resolved,
            ))
        });
        Router {
            links,
            settings,
            records,
            spool,
            spill: None,
            stop,
            resolver,
        }
    }

    async fn run(mut self) -> Option<Spool> {
        let mut tick = tokio::time::interval(ROUTER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let destination = self.destination();
            let restore_len = self
                .spool
                .as_ref()
                .filter(|_| destination == Destination::Link)
                .and_then(Spool::next_len);
            let reservation = self.records.restore_reservation(restore_len.unwrap_or(0));
            let budget = self.records.bytes();
            tokio::select! {
                biased;
                queued = self.records.recv() => {
                    let Some(queued) = queued else { break };
                    match destination {
                        Destination::Link => self.route_burst(queued).await,
                        Destination::Spool => self.spill(queued),
                        Destination::Nowhere => drop(queued),
                    }
                }
                permit = budget.acquire_many_owned(reservation), if restore_len.is_some() => {
                    if let Ok(permit) = permit {
                        self.restore_oldest(permit).await;
                    }
                }
                _ = tick.tick() => {}
            }
            self.flush_spill(destination).await;
        }
        self.finish().await
    }

    fn destination(&self) -> Destination {
        let stopping = self.stop.is_requested();
        let any_up = self.links.current().iter().any(|handle| handle.is_up());
        match (&self.spool, stopping) {
            (Some(_), _) if stopping || !any_up => Destination::Spool,
            (None, true) => Destination::Nowhere,
            _ => Destination::Link,
        }
    }

    /// Routes `first` and whatever else is waiting behind it: one message per link.
    async fn route_burst(&mut self, first: QueuedRecord) {
        let mut burst = Vec::with_capacity(ROUTE_BURST);
        burst.push(first);
        while burst.len() < ROUTE_BURST {
            let Some(next) = self.records.try_recv() else {
                break;
            };
            burst.push(next);
        }
        route(&self.links, Routed::Records(burst)).await;
    }

    /// Adds a record to the batch being filled for the spool; a full one is written.
    fn spill(&mut self, queued: QueuedRecord) {
        let batch = self.spill.get_or_insert_with(|| self.settings.new_batch());
        batch.add(queued);
        if self.settings.is_full(batch)
            && let (Some(spool), Some(full)) = (self.spool.as_mut(), self.spill.take())
        {
            spool.write(full.into_batch());
        }
    }

    /// Reads the oldest spooled batch back and routes it, holding `permit` for its bytes.
    async fn restore_oldest(&mut self, permit: OwnedSemaphorePermit) {
        if let Some(batch) = self.spool.as_mut().and_then(Spool::pop_oldest) {
            let batch = PendingBatch::restored(batch, Some(permit));
            route(&self.links, Routed::Batch(batch)).await;
        }
    }

    /// A partly filled spill batch leaves as soon as nothing more is waiting for it: to disk
    /// while spooling, or to a link once one is up again.
    async fn flush_spill(&mut self, destination: Destination) {
        let Some(batch) = self.spill.take() else {
            return;
        };
        match self.spool.as_mut() {
            Some(spool) if destination == Destination::Spool && self.records.is_empty() => {
                spool.write(batch.into_batch());
            }
            Some(_) if destination == Destination::Spool => self.spill = Some(batch),
            _ => route(&self.links, Routed::Batch(batch)).await,
        }
    }

    /// The queue is closed: closes every link's input, lets each finish its acknowledgements
    /// and spools what they still hold.
    async fn finish(mut self) -> Option<Spool> {
        if let (Some(spool), Some(batch)) = (self.spool.as_mut(), self.spill.take()) {
            spool.write(batch.into_batch());
        }
        if let Some(resolver) = self.resolver.take() {
            resolver.abort();
        }
        let left = self.links.finish().await;
        if let Some(spool) = self.spool.as_mut() {
            for batch in left {
                spool.write(batch);
            }
        }
        self.spool
    }
}

/// The live replayer owning `shard`; with none up, the shard's usual owner, which keeps what
/// it gets until its replayer returns.
fn owner_of(handles: &[Arc<LinkHandle>], shard: u32) -> Option<&Arc<LinkHandle>> {
    link::owner(handles, shard, None).or_else(|| link::home(handles, shard))
}

/// Hands records, or a batch, to the links owning their shards, in capture order per link. A
/// link that no longer takes any (retired meanwhile, or stopped) gives them back and they go
/// to the current set instead; at shutdown, with no link taking anything, they stay counted as
/// buffered and end as dropped{shutdown}.
async fn route(links: &LinkSet, routed: Routed) {
    let mut waiting = vec![routed];
    for _ in 0..ROUTE_ATTEMPTS {
        let handles = links.current();
        let mut refused = Vec::new();
        for routed in waiting {
            for (link, part) in split_by_owner(&handles, routed) {
                if let Err(back) = link.send(part).await {
                    refused.push(back);
                }
            }
        }
        if refused.is_empty() {
            return;
        }
        waiting = refused;
    }
}

/// Records grouped by the link owning their shard (a batch goes whole, by its first record).
fn split_by_owner(handles: &[Arc<LinkHandle>], routed: Routed) -> Vec<(&Arc<LinkHandle>, Routed)> {
    let records = match routed {
        Routed::Batch(batch) => {
            return owner_of(handles, batch.shard())
                .map(|link| (link, Routed::Batch(batch)))
                .into_iter()
                .collect();
        }
        Routed::Records(records) => records,
    };
    if let [only] = handles {
        return vec![(only, Routed::Records(records))];
    }
    let mut by_link: Vec<(&Arc<LinkHandle>, Vec<QueuedRecord>)> = Vec::new();
    for record in records {
        let Some(owner) = owner_of(handles, record.shard()) else {
            continue;
        };
        match by_link
            .iter_mut()
            .find(|(link, _)| Arc::ptr_eq(link, owner))
        {
            Some((_, records)) => records.push(record),
            None => by_link.push((owner, vec![record])),
        }
    }
    by_link
        .into_iter()
        .map(|(link, records)| (link, Routed::Records(records)))
        .collect()
}

/// Resolves the replayer names again and again, and starts or retires links as addresses
/// appear or disappear (a headless Service's pods being rescheduled).
async fn follow_replayer_names(
    replayers: ReplayerSet,
    links: Arc<LinkSet>,
    mut resolved: Vec<Vec<tonic::transport::Endpoint>>,
) {
    loop {
        tokio::time::sleep(RESOLVE_INTERVAL).await;
        let (set, previous) = (replayers.clone(), resolved.clone());
        // The system resolver blocks.
        match tokio::task::spawn_blocking(move || set.resolve(&previous)).await {
            Ok(Ok(fresh)) => {
                links.update(fresh.concat());
                resolved = fresh;
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot set up a resolved replayer"),
            Err(_) => {}
        }
    }
}
