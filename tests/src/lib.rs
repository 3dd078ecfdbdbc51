//! Test kit for tapwire's demo, end-to-end tests and benchmarks. Everything here is real: HTTP
//! servers on loopback sockets, real HTTP clients, the real binaries as child processes.
//!
//! - [`builds`]: builds of one API that differ on purpose (baseline, candidate, production),
//!   random where real services are, for response comparison.
//! - [`servers`]: a recording HTTP server, used as "production" and as staging targets, and a
//!   raw target that records the exact bytes it receives.
//! - [`traffic`]: request mixes (keep-alive, fresh connections, bodies, chunked) and fixed-rate load.
//! - [`process`]: spawning tapwire binaries and waiting on their readiness log lines.
//! - [`scrape`]: reading a Prometheus `/metrics` endpoint.
//! - [`oha`]: the reference load generator, for benchmarks side by side.
//! - [`feed`]: a synthetic listener streaming generated records to a replayer over gRPC.
//! - [`pcap_fixture`]: pcap files of crafted TCP segments, for exact capture scenarios.
//! - [`pipeline`]: production + listener + replayer + targets, wired together on loopback.
//! - [`tls_server`]: the raw target behind TLS, an HTTPS staging target.

pub mod builds;
pub mod certs;
pub mod feed;
pub mod oha;
pub mod pcap_fixture;
pub mod pipeline;
pub mod process;
pub mod scrape;
pub mod servers;
pub mod tls_server;
pub mod traffic;
