//! The `tapwire-listener` binary: read the flags (or the --config file), validate, set up
//! logging, run until SIGTERM or Ctrl-C (or the end of --input-pcap, or --exit-after); the exit
//! code says how the run ended (README, "Exit codes").

use std::process::ExitCode;

use tapwire_listener::{ListenerConfig, ListenerPlan};
use tapwire_runtime::Shutdown;
use tapwire_shared::config;

#[tokio::main]
async fn main() -> ExitCode {
    let loaded = config::load::<ListenerConfig, _, _>(std::env::args_os());
    let (plan, log_format) = match config::plan_or_exit(loaded, |config| {
        Ok((ListenerPlan::compile(config)?, config.log_format))
    }) {
        Ok(compiled) => compiled,
        Err(exit) => return exit,
    };
    tapwire_runtime::init_logging(log_format);
    match tapwire_listener::run(plan, Shutdown::on_signals()).await {
        Ok(outcome) if outcome.nothing_delivered => {
            tracing::error!(
                "every request seen was dropped, none reached an output (see the reasons in the \
                 accounting above)"
            );
            ExitCode::from(config::EXIT_NOTHING_DELIVERED)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
