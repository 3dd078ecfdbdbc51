//! The outputs' contract: a [`RecordSink`] is anything the capture thread hands records to (the
//! replayer links' [`queue`](crate::queue), and beside it any other output), and [`Captured`]
//! is what it hands over. A sink never makes capture wait: what it cannot take now, it drops
//! and counts under a reason of its own.

use tapwire_shared::{RequestRecord, ResponseRecord};

/// A record as the capture thread hands it to the outputs.
#[derive(Debug, Clone)]
pub enum Captured {
    Request(RequestRecord),
    Response(ResponseRecord),
}

impl Captured {
    /// Message bytes.
    pub fn len(&self) -> usize {
        match self {
            Captured::Request(record) => record.request.len(),
            Captured::Response(record) => record.response.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An output of captured records. Called on the capture thread, once per record: it must
/// return at once.
pub trait RecordSink: Send {
    /// Takes a record; `shard` is its client connection's (a response's is its request's).
    /// Whoever consumes it may not be woken before the next [`flush`](RecordSink::flush).
    fn take(&self, record: Captured, shard: u32);

    /// The capture thread has handed over all it has for now (the packets the kernel had
    /// ready): wake the consumer. A burst of records then costs one wakeup, not one each.
    fn flush(&self) {}
}
