//! The contract between tapwire's two sides. It owns data and formats, not machinery (the one
//! piece of code beyond them is turning flags or a TOML file into a configuration):
//!
//! - [`proto`]: the gRPC types and service stubs generated from `proto/tapwire/v1`.
//! - [`record`]: the [`RequestRecord`] and [`ResponseRecord`] models and their conversions to
//!   and from the wire.
//! - [`link`]: the link contract beyond the message types: size limits, flow-control window,
//!   the bearer token that authenticates listeners to replayers.
//! - [`http1`]: the HTTP/1.x grammar: where a request ends (for the listener's cutter) and what it
//!   says (for the replayer's rebuild). The one place tapwire parses HTTP.
//! - [`gor`]: GoReplay's `.gor` file format, read and written byte for byte.
//! - [`config`]: how flags or a file become a configuration, and the error both sides report,
//!   naming the setting at fault.
//! - [`prettify`]: messages decoded for display (chunked, gzip, deflate).
//! - [`redact`]: what a listener blanks out of a captured message (headers, JSON body fields)
//!   before the message leaves the host.

pub mod config;
pub mod gor;
pub mod http1;
pub mod link;
pub mod prettify;
pub mod record;
pub mod redact;

/// Generated gRPC types for package `tapwire.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tapwire.v1");
}

pub use record::{RecordError, RequestRecord, ResponseRecord};
