//! Sources of records: where replayed requests come from. A source runs until it is exhausted
//! or shut down, handing each ordered stream of records it receives to the
//! [`Intake`](crate::intake::Intake) and acknowledging what the intake reports delivered.
//!
//! - [`grpc`]: the listeners' streams ([`connections`] caps who may connect and for how long
//!   before speaking HTTP/2, [`tls`] guards the link).
//! - [`file`]: recorded GoReplay `.gor` files.

pub mod connections;
pub mod file;
pub mod grpc;
pub mod tls;

use tapwire_runtime::Shutdown;

use crate::intake::Intake;

/// A configured source.
pub enum Source {
    /// Listeners streaming over gRPC.
    Grpc(grpc::GrpcSource),
    /// Recorded files.
    File(file::FileSource),
}

impl Source {
    /// Runs until the source is exhausted or `shutdown` is requested and it has wound down.
    pub async fn run(self, intake: Intake, shutdown: Shutdown) -> anyhow::Result<()> {
        match self {
            Source::Grpc(grpc) => grpc.run(intake, shutdown).await,
            Source::File(files) => files.run(intake, shutdown).await,
        }
    }
}
