//! The `tapwire-listener` binary: read the flags (or the --config file), validate, set up
//! logging, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use tapwire_listener::{ListenerConfig, ListenerPlan};
use tapwire_runtime::Shutdown;
use tapwire_shared::config;

#[tokio::main]
async fn main() -> ExitCode {
    let loaded = config::load::<ListenerConfig, _, _>(std::env::args_os());
    let plan = match config::plan_or_exit(loaded, ListenerPlan::compile) {
        Ok(plan) => plan,
        Err(exit) => return exit,
    };
    tapwire_runtime::init_logging();
    match tapwire_listener::run(plan, Shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
