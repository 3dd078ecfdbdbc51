//! Comparing how targets answered the same request (issue 14's comparison, built up in parts):
//! [`json`] finds the differences between two JSON bodies by field path, [`endpoint`] groups
//! requests by method and normalised path so that differences are counted per endpoint.

pub mod endpoint;
pub mod json;
