//! Why a request was not replayed, as enums: every rule that can filter it, every reason a
//! received record is rejected or a target drops a request. The counters are indexed by them
//! (so the hot path never looks a label up), and the compiler checks every case.

/// Why a request did not get a response from a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetDropReason {
    /// Over the target's `--rate`.
    RateLimited,
    /// The target's queue was full when a request came that could not wait for room: one the
    /// middleware wrote back (sources wait for room, see [`ShedSlowTarget`](Self::ShedSlowTarget)).
    TargetQueueFull,
    /// No TCP connection to the target could be made (its name did not resolve, or the
    /// connect failed).
    ConnectError,
    /// No complete response within `--timeout`.
    Timeout,
    /// The response was not valid HTTP (or its head was over 64 KiB).
    HttpError,
    /// The target closed or reset the connection before its response was complete.
    ConnectionClosed,
    /// The target's queue stayed full for longer than `--shed-after`: it is slower than the
    /// traffic, so it no longer holds the other targets and the listeners back, and what does
    /// not fit its queue is shed until it has caught up (its queue empty).
    ShedSlowTarget,
    /// The TLS handshake with an `https://` target failed (an untrusted or misnamed
    /// certificate, a port that does not speak TLS), or TLS broke mid-response.
    Tls,
}

impl TargetDropReason {
    /// Whether a request dropped for this reason never left the replayer (over its rate, its
    /// queue full or shed): it was not sent, so no response can be expected.
    pub fn is_before_sending(self) -> bool {
        matches!(
            self,
            TargetDropReason::RateLimited
                | TargetDropReason::TargetQueueFull
                | TargetDropReason::ShedSlowTarget
        )
    }

    pub const ALL: [TargetDropReason; 8] = [
        TargetDropReason::RateLimited,
        TargetDropReason::TargetQueueFull,
        TargetDropReason::ConnectError,
        TargetDropReason::Timeout,
        TargetDropReason::HttpError,
        TargetDropReason::ConnectionClosed,
        TargetDropReason::ShedSlowTarget,
        TargetDropReason::Tls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetDropReason::RateLimited => "rate_limited",
            TargetDropReason::TargetQueueFull => "target_queue_full",
            TargetDropReason::ConnectError => "connect_error",
            TargetDropReason::Timeout => "timeout",
            TargetDropReason::HttpError => "http_error",
            TargetDropReason::ConnectionClosed => "connection_closed",
            TargetDropReason::ShedSlowTarget => "shed_slow_target",
            TargetDropReason::Tls => "tls",
        }
    }
}

/// Why a received record was not replayed to any target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The gRPC record itself was invalid (bad addresses).
    InvalidRecord,
    /// The captured bytes are not a complete HTTP/1.x request.
    MalformedHttp,
    /// The request-target cannot be replayed to another host (e.g. `CONNECT host:443`).
    UnreplayableTarget,
    /// Over `global_rate`.
    GlobalRateLimited,
    /// A recorded file held something that is not a well-formed message here.
    MalformedRecord,
    /// Lost with the middleware: it died or hung holding it, or its queue was full.
    Middleware,
}

impl RejectReason {
    pub const ALL: [RejectReason; 6] = [
        RejectReason::InvalidRecord,
        RejectReason::MalformedHttp,
        RejectReason::UnreplayableTarget,
        RejectReason::GlobalRateLimited,
        RejectReason::MalformedRecord,
        RejectReason::Middleware,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidRecord => "invalid_record",
            RejectReason::MalformedHttp => "malformed_http",
            RejectReason::UnreplayableTarget => "unreplayable_target",
            RejectReason::GlobalRateLimited => "global_rate_limited",
            RejectReason::MalformedRecord => "malformed_record",
            RejectReason::Middleware => "middleware",
        }
    }
}

/// Why a listener connection or stream was refused before any of its records were taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkRefusal {
    /// `--max-connections` were already open: closed at once.
    ConnectionLimit,
    /// No TLS handshake and HTTP/2 preface within `--handshake-timeout`.
    HandshakeTimeout,
    /// The TLS handshake failed (plaintext, no certificate or an untrusted one).
    TlsHandshake,
    /// The connection did not open with the HTTP/2 preface.
    NotHttp2,
    /// The stream's listener id is longer than allowed or holds control characters.
    InvalidListenerId,
    /// The connection opened no stream that passed the token check within
    /// `--handshake-timeout` of its preface: closed, so idle connections cannot keep slots.
    NoAuthenticatedStream,
}

impl LinkRefusal {
    pub const ALL: [LinkRefusal; 6] = [
        LinkRefusal::ConnectionLimit,
        LinkRefusal::HandshakeTimeout,
        LinkRefusal::TlsHandshake,
        LinkRefusal::NotHttp2,
        LinkRefusal::InvalidListenerId,
        LinkRefusal::NoAuthenticatedStream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkRefusal::ConnectionLimit => "connection_limit",
            LinkRefusal::HandshakeTimeout => "handshake_timeout",
            LinkRefusal::TlsHandshake => "tls_handshake",
            LinkRefusal::NotHttp2 => "not_http2",
            LinkRefusal::InvalidListenerId => "invalid_listener_id",
            LinkRefusal::NoAuthenticatedStream => "no_authenticated_stream",
        }
    }
}

/// A rule that can refuse a request before it is sent: the filter rules, and sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterRule {
    AllowMethods,
    AllowUrl,
    DenyUrl,
    AllowHost,
    DenyHost,
    AllowHeader,
    DenyHeader,
    BasicAuth,
    Sample,
    /// The middleware did not write the request back.
    Middleware,
}

impl FilterRule {
    pub const ALL: [FilterRule; 10] = [
        FilterRule::AllowMethods,
        FilterRule::AllowUrl,
        FilterRule::DenyUrl,
        FilterRule::AllowHost,
        FilterRule::DenyHost,
        FilterRule::AllowHeader,
        FilterRule::DenyHeader,
        FilterRule::BasicAuth,
        FilterRule::Sample,
        FilterRule::Middleware,
    ];

    /// The rule's name in metrics and logs: its key in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            FilterRule::AllowMethods => "allow_methods",
            FilterRule::AllowUrl => "allow_url",
            FilterRule::DenyUrl => "deny_url",
            FilterRule::AllowHost => "allow_host",
            FilterRule::DenyHost => "deny_host",
            FilterRule::AllowHeader => "allow_header",
            FilterRule::DenyHeader => "deny_header",
            FilterRule::BasicAuth => "basic_auth",
            FilterRule::Sample => "sample",
            FilterRule::Middleware => "middleware",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_indexes_its_own_counter() {
        for (index, rule) in FilterRule::ALL.into_iter().enumerate() {
            assert_eq!(rule as usize, index, "{rule:?}");
        }
        for (index, reason) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{reason:?}");
        }
        for (index, reason) in TargetDropReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{reason:?}");
        }
        for (index, reason) in LinkRefusal::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{reason:?}");
        }
    }
}
