//! The bearer token that authenticates a listener to a replayer, read from a file on both
//! sides. The token itself is never logged or printed.

use std::path::Path;

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
