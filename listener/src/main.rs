//! The `tapwire-listener` binary: parse flags, set up logging, run until SIGTERM or Ctrl-C.

use clap::Parser;
use tapwire_listener::ListenerConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = ListenerConfig::parse();
    tapwire_telemetry::init_logging();
    match tapwire_listener::run(config, tapwire_telemetry::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
