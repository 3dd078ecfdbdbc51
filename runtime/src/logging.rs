//! Log set-up: lines on stderr, filtered by `RUST_LOG`, as text or as JSON (`--log-format`).
//! Set up once the configuration is read, so that a configuration error is printed plainly.

use std::io::IsTerminal;

use tapwire_shared::config::LogFormat;

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`): human-readable lines, or one
/// JSON object per line with `timestamp`, `level`, `message` and the event's fields at the top
/// level (what log collectors index without parsing). The module path is left out: it would
/// collide with the replayer's `target` field.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
