//! Comparing how targets with roles answered the same request, Diffy-style, and reporting it.
//!
//! - [`stage`]: the live comparison, off the send path: target workers and the intake hand
//!   responses over, [`pending`] gathers each request's until every compared role has
//!   answered, and a thread of its own compares them ([`comparer`]).
//! - [`comparer`]: one request's responses [`decode`]d (framing and content codings undone),
//!   the candidate against its reference and the two baselines against each other: status,
//!   [`headers`] (volatile ones ignored), bodies by [`body`] (JSON by field path with
//!   [`json`], text by lines, binary by hash).
//! - [`tally`]: the counts per role, per [`endpoint`] and field path, with [`noise`] deciding
//!   which differences are the candidate's; a few examples; bounded. [`summary`] is what it
//!   found, as one serialisable value.
//! - [`diff_log`]: `--diff-log`, JSON Lines; [`report`] renders a summary as one HTML page,
//!   served live at `/report` and written by [`report_command`] (`tapwire-replayer report`)
//!   from a diff log or from `.gor` files ([`offline`]).

pub mod body;
pub mod comparer;
pub mod decode;
pub mod diff_log;
pub mod endpoint;
pub mod headers;
pub mod json;
pub mod noise;
pub mod offline;
pub mod pending;
pub mod report;
pub mod report_command;
pub mod stage;
pub mod summary;
pub mod tally;
