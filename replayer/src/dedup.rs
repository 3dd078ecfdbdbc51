//! De-duplication of resent records. A listener sends its unacknowledged batches again after a
//! reconnect (at-least-once), so some records may arrive twice. Within one listener instance,
//! record ids increase and batches arrive in order, so the highest id seen per instance is all
//! there is to remember: anything at or below it is a copy.

use std::collections::HashMap;
use std::sync::Mutex;

use tapwire_shared::proto;

/// Highest record id seen per (listener id, listener instance).
#[derive(Debug, Default)]
pub struct Deduplicator {
    highest: Mutex<HashMap<(String, u64), Option<u64>>>,
}

impl Deduplicator {
    /// Keeps the records not seen before and marks them seen; returns them and how many were
    /// copies. Checking and marking happen under one lock, so a resend racing the original on
    /// another stream cannot pass twice.
    pub fn fresh(
        &self,
        listener_id: &str,
        instance: u64,
        records: Vec<proto::RequestRecord>,
    ) -> (Vec<proto::RequestRecord>, u64) {
        let mut highest_by_instance = self.highest.lock().expect("dedup lock");
        // None until the instance's first record: any id, 0 included, is new then.
        let highest = highest_by_instance
            .entry((listener_id.to_owned(), instance))
            .or_insert(None);
        let before = records.len();
        let fresh: Vec<_> = records
            .into_iter()
            .filter(|record| {
                let new = highest.is_none_or(|seen| record.id > seen);
                if new {
                    *highest = Some(record.id);
                }
                new
            })
            .collect();
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
    fn a_restarted_listener_is_a_new_instance_and_starts_over() {
        let dedup = Deduplicator::default();
        dedup.fresh("host-a", 1, records(1..=100));
        let (fresh, copies) = dedup.fresh("host-a", 2, records(1..=3));
        assert_eq!((ids(&fresh), copies), (vec![1, 2, 3], 0));
        let (fresh, _) = dedup.fresh("host-b", 1, records(1..=3));
        assert_eq!(ids(&fresh), vec![1, 2, 3], "listeners are independent");
    }
}
