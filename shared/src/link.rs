//! The link contract between listener and replayer, beyond the message types of [`crate::proto`]:
//! the limits both ends must agree on, and the bearer token that authenticates a listener (read
//! from a file on both sides, never logged or printed).

use std::path::Path;

/// Largest gRPC message a replayer accepts (inflated, when gzipped): a batch, or one large
/// request alone. A listener's records and spool frames must fit in it.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// HTTP/2 flow-control window, per stream and per connection, on both ends. One long-lived
/// stream carries all of a listener's traffic: h2's 64 KiB default would cap it at one window
/// per round trip.
pub const WINDOW_BYTES: u32 = 8 << 20;

/// The gRPC metadata key carrying the token.
pub const AUTHORIZATION: &str = "authorization";

/// The value a listener presents, and the replayer expects, for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path} must hold one token of printable ASCII characters")]
    Invalid { path: String },
}

/// The file's content without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let token = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid {
            path: path.display().to_string(),
        });
    }
    Ok(token.to_owned())
}
