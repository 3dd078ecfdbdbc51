//! The `tapwire-replayer` binary: `tapwire-replayer report` writes the comparison report
//! ([`tapwire_replayer::compare::report_command`]); otherwise read the flags (or the --config
//! file), validate, set up logging, run until SIGTERM or Ctrl-C (or the files are done); the
//! exit code says how the run ended (README, "Exit codes").

use std::ffi::OsString;
use std::process::ExitCode;

use tapwire_replayer::{EnginePlan, ReplayerConfig};
use tapwire_runtime::Shutdown;
use tapwire_shared::config;

// Measured: glibc's malloc cost replaying a file about 12% of the replayer's CPU, some of it
// threads waiting on its arena locks; mimalloc replays the same file in less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // `report` writes the comparison report and replays nothing: no runtime, no replay flags.
    if args.get(1).is_some_and(|first| first == "report") {
        return tapwire_replayer::compare::report_command::main(args);
    }
    replay(args)
}

#[tokio::main]
async fn replay(args: Vec<OsString>) -> ExitCode {
    let loaded = ReplayerConfig::load(args);
    let (plan, log_format) = match config::plan_or_exit(loaded, |config| {
        Ok((EnginePlan::compile(config)?, config.log_format))
    }) {
        Ok(compiled) => compiled,
        Err(exit) => return exit,
    };
    tapwire_runtime::init_logging(log_format);
    match tapwire_replayer::run(plan, Shutdown::on_signals()).await {
        Ok(outcome) if outcome.nothing_answered => {
            tracing::error!(
                "no target answered any request: every request was dropped (see the target \
                 totals above for the reasons)"
            );
            ExitCode::from(config::EXIT_NOTHING_DELIVERED)
        }
        Ok(outcome) if outcome.complete => ExitCode::SUCCESS,
        Ok(_) => {
            tracing::error!("some requests were neither answered nor counted (see above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
