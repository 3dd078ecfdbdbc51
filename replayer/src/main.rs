//! The `tapwire-replayer` binary: parse flags (or the --config file), validate, set up logging,
//! run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use tapwire_replayer::config::ReplayerArgs;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ReplayerArgs::parse();
    let check_only = args.check_config;
    // A configuration that cannot run is a usage error, like a bad flag: exit code 2.
    let config = match args.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = config.compile() {
        eprintln!("error: invalid configuration: {error}");
        return ExitCode::from(2);
    }
    if check_only {
        print!("{}", config.to_toml());
        eprintln!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    tapwire_telemetry::init_logging();
    match tapwire_replayer::run(config, tapwire_telemetry::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
