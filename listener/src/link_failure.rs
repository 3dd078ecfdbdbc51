//! Why a replayer link failed, said so that a person can act on it, and logged without
//! flooding. [`LinkError`] names the cause found deep in the error chain (tonic's "transport
//! error" wraps hyper's, which wraps the socket's or rustls's): connection refused, DNS lookup
//! failed, TLS handshake failed (unknown CA, wrong name), token refused, timed out.
//! [`FailureLog`] decides which failures of a link that keeps retrying are worth a log line.

use std::error::Error;
use std::time::Duration;

use tokio::time::Instant;
use tokio_rustls::rustls;

/// A link that keeps failing for the same reason logs it at most this often.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to {replayer}: {cause}")]
    Connect { replayer: String, cause: String },
    #[error(
        "the replayer refused this listener's token (Unauthenticated: {}): check --token-file",
        .0.message()
    )]
    TokenRefused(tonic::Status),
    #[error("stream failed: {}: {}", .0.code(), .0.message())]
    Stream(tonic::Status),
    #[error("replayer closed the stream")]
    Closed,
}

impl From<tonic::Status> for LinkError {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unauthenticated => LinkError::TokenRefused(status),
            _ => LinkError::Stream(status),
        }
    }
}

impl LinkError {
    pub fn connect(replayer: &str, error: &tonic::transport::Error) -> LinkError {
        LinkError::Connect {
            replayer: replayer.to_owned(),
            cause: connect_cause(error),
        }
    }

    /// Whether the replayer refused the batch itself, rather than going away (a connect
    /// error, UNAVAILABLE) or refusing this listener (which says nothing about the batch).
    pub fn refused_the_batch(&self) -> bool {
        match self {
            LinkError::Connect { .. } | LinkError::TokenRefused(_) => false,
            LinkError::Stream(status) => status.code() != tonic::Code::Unavailable,
            LinkError::Closed => true,
        }
    }
}

/// The chain of causes under `error`, outermost first. An `io::Error` wrapping another error
/// reports that error's source, not the error itself, so it is unwrapped by hand.
fn causes<'a>(error: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
    let mut chain = Vec::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        chain.push(cause);
        next = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
            None => cause.source(),
        };
    }
    chain
}

/// The reason a connection attempt failed, in one line.
fn connect_cause(error: &tonic::transport::Error) -> String {
    let chain = causes(error);
    let innermost = chain.last().map_or_else(String::new, ToString::to_string);
    for cause in &chain {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return format!("TLS handshake failed: {}", tls_cause(tls));
        }
        if cause.is::<tonic::TimeoutExpired>() {
            return "timed out".into();
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return "connection refused (is the replayer running, on this port?)".into();
                }
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                _ => {}
            }
        }
        if cause.to_string().starts_with("dns error") {
            return format!("DNS lookup failed: {innermost}");
        }
    }
    innermost
}

fn tls_cause(error: &rustls::Error) -> String {
    use rustls::CertificateError;
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the replayer's certificate is not signed by the CA in --tls-ca (unknown issuer)".into()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("the replayer's certificate is not valid for the name in the URL ({error})"),
        rustls::Error::AlertReceived(alert) => format!(
            "the replayer refused the handshake ({alert:?}): check --tls-cert and --tls-key"
        ),
        other => other.to_string(),
    }
}

/// Which failures of one link are logged: the first of an outage, one with a new cause at
/// once, the same cause again after [`FAILURE_LOG_INTERVAL`] (with how many attempts failed
/// unlogged in between).
#[derive(Debug, Default)]
pub struct FailureLog {
    /// The cause last logged, and when.
    logged: Option<(String, Instant)>,
    unlogged: u64,
}

/// What to log for a failure.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureLine {
    /// The first failure of an outage, or a new cause.
    Down,
    /// The same cause as the last line, after this many unlogged failures.
    StillDown { unlogged_failures: u64 },
}

impl FailureLog {
    /// A failure with `cause`, at `now`: what to log, if anything.
    pub fn failed(&mut self, cause: &str, now: Instant) -> Option<FailureLine> {
        let line = match &self.logged {
            Some((logged, at)) if logged == cause => {
                if now.duration_since(*at) < FAILURE_LOG_INTERVAL {
                    self.unlogged += 1;
                    return None;
                }
                FailureLine::StillDown {
                    unlogged_failures: self.unlogged,
                }
            }
            _ => FailureLine::Down,
        };
        self.logged = Some((cause.to_owned(), now));
        self.unlogged = 0;
        Some(line)
    }

    /// The link is up: the next failure starts a new outage.
    pub fn connected(&mut self) {
        *self = FailureLog::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_cause_is_logged_once_per_interval_and_a_new_one_at_once() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        assert_eq!(log.failed("refused", start), Some(FailureLine::Down));
        for second in 1..10 {
            let at = start + Duration::from_secs(second);
            assert_eq!(log.failed("refused", at), None);
        }
        assert_eq!(
            log.failed("refused", start + FAILURE_LOG_INTERVAL),
            Some(FailureLine::StillDown {
                unlogged_failures: 9
            })
        );
        let later = start + FAILURE_LOG_INTERVAL + Duration::from_secs(1);
        assert_eq!(log.failed("timed out", later), Some(FailureLine::Down));
        log.connected();
        assert_eq!(log.failed("timed out", later), Some(FailureLine::Down));
    }
}
