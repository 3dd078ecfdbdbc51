//! Comparing how targets answered the same request (issue 14's comparison, built up in parts):
//! [`json`] finds the differences between two JSON bodies by field path, [`headers`] between
//! two responses' headers (volatile ones ignored), [`endpoint`] groups requests by method and
//! normalised path so that differences are counted per endpoint, and [`noise`] decides from
//! those counts which differences are the candidate's and which any two builds show;
//! [`summary`] is what a comparison found, as the report shows it. [`decode`] makes a response
//! as received ready to compare (framing and content codings undone, bounded), and [`body`]
//! compares two decoded bodies as JSON, text or binary, with ignored paths left out.

pub mod body;
pub mod decode;
pub mod endpoint;
pub mod headers;
pub mod json;
pub mod noise;
pub mod summary;
