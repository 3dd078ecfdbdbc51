//! The `tapwire-listener` binary: read the flags (or the --config file), validate, set up
//! logging, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use tapwire_listener::{ListenerConfig, ListenerPlan};
use tapwire_runtime::Shutdown;
use tapwire_shared::config;

#[tokio::main]
async fn main() -> ExitCode {
    // A configuration that cannot run is a usage error, like a bad flag: exit code 2.
    let compiled = config::load::<ListenerConfig, _, _>(std::env::args_os())
        .and_then(|loaded| Ok((ListenerPlan::compile(&loaded.config)?, loaded)));
    let (plan, loaded) = match compiled {
        Ok(compiled) => compiled,
        Err(error) => {
            eprintln!("error: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    if loaded.check_only {
        print!("{}", config::to_toml(&loaded.config));
        eprintln!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    tapwire_runtime::init_logging();
    match tapwire_listener::run(plan, Shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
