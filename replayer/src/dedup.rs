//! De-duplication of resent records. A listener sends unacknowledged batches again after a
//! reconnect (at-least-once), so some records arrive twice at the same replayer, and not always
//! in id order: with several replayers each sees a subset of a listener's ids, and a replayer
//! that goes down hands its batches to another. (What a replayer that died had replayed, the
//! next one cannot know: those copies pass, and the listener counts them as resent.) Per
//! listener instance, a bitmap remembers which of the last [`WINDOW`] ids were seen. A record further behind than that is let through: resends are
//! never that far behind, but records restored from a listener's disk spool can be, and losing
//! them would be worse than a rare second copy.
//!
//! The work per record is bounded whatever ids a client sends: sliding the window forward
//! clears whole words (at most `WINDOW / 64` of them), and ids are never walked one by one.
//! Memory is bounded too: [`MAX_INSTANCES`] windows of 32 KiB, keyed by listener ids the gRPC
//! source caps in length.

use std::collections::HashMap;
use std::sync::Mutex;

use tapwire_shared::proto;

/// Ids remembered per listener instance (32 KiB of bits).
pub const WINDOW: u64 = 1 << 18;
/// Listener instances remembered; past it the least recently seen is forgotten.
pub const MAX_INSTANCES: usize = 1024;

/// Which recent ids of one listener instance were seen.
#[derive(Debug)]
struct SeenWindow {
    highest: u64,
    bits: Box<[u64]>,
    last_used: u64,
}

impl SeenWindow {
    fn new(first: u64) -> Self {
        let mut window = SeenWindow {
            highest: first,
            bits: vec![0; (WINDOW / 64) as usize].into_boxed_slice(),
            last_used: 0,
        };
        window.flip(first, true);
        window
    }

    fn flip(&mut self, id: u64, seen: bool) {
        let slot = id % WINDOW;
        let (word, bit) = ((slot / 64) as usize, slot % 64);
        if seen {
            self.bits[word] |= 1 << bit;
        } else {
            self.bits[word] &= !(1 << bit);
        }
    }

    /// Forgets the `count` slots from `first` on (wrapping), a word at a time.
    fn clear(&mut self, first: u64, count: u64) {
        let (mut slot, mut left) = (first % WINDOW, count.min(WINDOW));
        while left > 0 {
            let (word, bit) = ((slot / 64) as usize, slot % 64);
            let width = (64 - bit).min(left);
            let mask = if width == 64 {
                u64::MAX
            } else {
                ((1u64 << width) - 1) << bit
            };
            self.bits[word] &= !mask;
            slot = (slot + width) % WINDOW;
            left -= width;
        }
    }

    fn is_set(&self, id: u64) -> bool {
        let slot = id % WINDOW;
        self.bits[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }

    /// Marks `id` seen; `true` if it was not seen before (or is too old to tell).
    fn first_sight(&mut self, id: u64) -> bool {
        if id > self.highest {
            if id - self.highest >= WINDOW {
                self.bits.fill(0);
            } else {
                // The slots the window slides onto held ids a whole window older.
                self.clear(self.highest + 1, id - self.highest - 1);
            }
            self.highest = id;
            self.flip(id, true);
            return true;
        }
        if self.highest - id >= WINDOW {
            return true;
        }
        let new = !self.is_set(id);
        self.flip(id, true);
        new
    }
}

/// A record with an id unique within its listener instance.
pub trait RecordId {
    fn record_id(&self) -> u64;
}

impl RecordId for proto::RequestRecord {
    fn record_id(&self) -> u64 {
        self.id
    }
}

impl RecordId for tapwire_shared::RequestRecord {
    fn record_id(&self) -> u64 {
        self.id
    }
}

/// Recently seen record ids per (listener id, listener instance).
#[derive(Debug, Default)]
pub struct Deduplicator {
    seen: Mutex<Instances>,
}

#[derive(Debug, Default)]
struct Instances {
    windows: HashMap<(String, u64), SeenWindow>,
    clock: u64,
}

impl Deduplicator {
    /// Keeps the records not seen before and marks them seen; returns them and how many were
    /// copies. Checking and marking happen under one lock, so a resend racing the original on
    /// another stream cannot pass twice.
    pub fn fresh<R: RecordId>(
        &self,
        listener_id: &str,
        instance: u64,
        records: Vec<R>,
    ) -> (Vec<R>, u64) {
        let mut guard = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let instances = &mut *guard;
        instances.clock += 1;
        let now = instances.clock;
        let key = (listener_id.to_owned(), instance);
        if !instances.windows.contains_key(&key) && instances.windows.len() >= MAX_INSTANCES {
            let oldest = instances
                .windows
                .iter()
                .min_by_key(|(_, window)| window.last_used)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                instances.windows.remove(&oldest);
            }
        }
        let before = records.len();
        let mut window: Option<&mut SeenWindow> = instances.windows.get_mut(&key);
        let mut created = None;
        let fresh: Vec<_> = records
            .into_iter()
            .filter(|record| match window.as_deref_mut().or(created.as_mut()) {
                Some(window) => window.first_sight(record.record_id()),
                None => {
                    created = Some(SeenWindow::new(record.record_id()));
                    true
                }
            })
            .collect();
        if let Some(window) = window {
            window.last_used = now;
        }
        if let Some(mut window) = created {
            window.last_used = now;
            instances.windows.insert(key, window);
        }
        let copies = (before - fresh.len()) as u64;
        (fresh, copies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(ids: std::ops::RangeInclusive<u64>) -> Vec<proto::RequestRecord> {
        ids.map(|id| proto::RequestRecord {
            id,
            ..Default::default()
        })
        .collect()
    }

    fn ids(records: &[proto::RequestRecord]) -> Vec<u64> {
        records.iter().map(|r| r.id).collect()
    }

    #[test]
    fn a_resent_batch_passes_only_its_new_records() {
        let dedup = Deduplicator::default();
        let (fresh, copies) = dedup.fresh("host-a", 7, records(1..=10));
        assert_eq!((ids(&fresh).len(), copies), (10, 0));
        // The listener resends 6..=10 (unacknowledged) followed by new records.
        let (fresh, copies) = dedup.fresh("host-a", 7, records(6..=15));
        assert_eq!(ids(&fresh), (11..=15).collect::<Vec<_>>());
        assert_eq!(copies, 5);
    }

    #[test]
    fn the_first_record_of_an_instance_is_new_whatever_its_id() {
        let dedup = Deduplicator::default();
        let (fresh, copies) = dedup.fresh("host-a", 3, records(0..=2));
        assert_eq!((ids(&fresh), copies), (vec![0, 1, 2], 0));
        let (_, copies) = dedup.fresh("host-a", 3, records(0..=0));
        assert_eq!(copies, 1);
    }

    #[test]
    fn records_out_of_id_order_pass_once_each() {
        // Two replayers each saw half; one goes down and its half arrives here late.
        let dedup = Deduplicator::default();
        let evens: Vec<_> = (0..100u64).step_by(2).collect();
        let odds: Vec<_> = (1..100u64).step_by(2).collect();
        let pick = |ids: &[u64]| {
            ids.iter()
                .map(|&id| proto::RequestRecord {
                    id,
                    ..Default::default()
                })
                .collect::<Vec<_>>()
        };
        let (fresh, _) = dedup.fresh("host-a", 1, pick(&evens));
        assert_eq!(fresh.len(), 50);
        let (fresh, copies) = dedup.fresh("host-a", 1, pick(&odds));
        assert_eq!((fresh.len(), copies), (50, 0));
        let (fresh, copies) = dedup.fresh("host-a", 1, pick(&odds[..10]));
        assert_eq!((fresh.len(), copies), (0, 10));
    }

    #[test]
    fn ids_older_than_the_window_pass_rather_than_being_lost() {
        let dedup = Deduplicator::default();
        dedup.fresh("host-a", 1, records(WINDOW * 3..=WINDOW * 3 + 5));
        let (fresh, copies) = dedup.fresh("host-a", 1, records(10..=12));
        assert_eq!((ids(&fresh), copies), (vec![10, 11, 12], 0));
        // Within the window the slots slid onto are clean, not leftovers of older ids.
        let (fresh, _) = dedup.fresh("host-a", 1, records(WINDOW * 3 + 6..=WINDOW * 3 + 8));
        assert_eq!(fresh.len(), 3);
    }

    #[test]
    fn any_ids_are_judged_as_a_plain_set_would() {
        // Large jumps forward and back, against a model that remembers every id.
        let dedup = Deduplicator::default();
        let mut seen = std::collections::HashSet::new();
        let mut highest = None::<u64>;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut id = WINDOW;
        for _ in 0..20_000 {
            id = match next() % 4 {
                0 => id + next() % WINDOW,
                1 => id.saturating_sub(next() % (WINDOW + 100)),
                2 => id + next() % 70,
                _ => id.saturating_sub(next() % 70),
            };
            let expected = match highest {
                Some(top) if id + WINDOW <= top => true,
                _ => !seen.contains(&id),
            };
            if highest.is_none_or(|top| id + WINDOW > top) {
                seen.insert(id);
            }
            highest = Some(highest.map_or(id, |top| top.max(id)));
            let (fresh, _) = dedup.fresh("host-a", 1, records(id..=id));
            assert_eq!(fresh.len() == 1, expected, "id {id}");
        }
    }

    #[test]
    fn a_restarted_listener_is_a_new_instance_and_starts_over() {
        let dedup = Deduplicator::default();
        dedup.fresh("host-a", 1, records(1..=100));
        let (fresh, copies) = dedup.fresh("host-a", 2, records(1..=3));
        assert_eq!((ids(&fresh), copies), (vec![1, 2, 3], 0));
        let (fresh, _) = dedup.fresh("host-b", 1, records(1..=3));
        assert_eq!(ids(&fresh), vec![1, 2, 3], "listeners are independent");
    }
}
