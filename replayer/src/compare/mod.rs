//! Comparing how targets answered the same request (issue 14's comparison, built up in parts):
//! [`json`] finds the differences between two JSON bodies by field path, [`headers`] between
//! two responses' headers (volatile ones ignored), [`endpoint`] groups requests by method and
//! normalised path so that differences are counted per endpoint, and [`noise`] decides from
//! those counts which differences are the candidate's and which any two builds show;
//! [`summary`] is what a comparison found, as the report shows it; [`report`] renders it as
//! a self-contained HTML page, and [`report_command`] is `tapwire-replayer report`, which
//! writes that page from a diff log or from `.gor` files ([`offline`]).

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
