//! The `tapwire-replayer` binary: parse flags, set up logging, run until SIGTERM or Ctrl-C.

use clap::Parser;
use tapwire_replayer::ReplayerConfig;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = ReplayerConfig::parse();
    tapwire_telemetry::init_logging();
    match tapwire_replayer::run(config, tapwire_telemetry::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
