//! The `tapwire-replayer` binary: read the flags (or the --config file), validate, set up
//! logging, run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use tapwire_replayer::{EnginePlan, ReplayerConfig};
use tapwire_runtime::Shutdown;

// Measured: glibc's malloc cost replaying a file about 12% of the replayer's CPU, some of it
// threads waiting on its arena locks; mimalloc replays the same file in less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // A configuration that cannot run is a usage error, like a bad flag: exit code 2.
    let compiled = ReplayerConfig::load(std::env::args_os())
        .and_then(|loaded| Ok((EnginePlan::compile(&loaded.config)?, loaded)));
    let (plan, loaded) = match compiled {
        Ok(compiled) => compiled,
        Err(error) => {
            eprintln!("error: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    if loaded.check_only {
        print!("{}", loaded.config.to_toml());
        eprintln!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    tapwire_runtime::init_logging();
    match tapwire_replayer::run(plan, Shutdown::on_signals()).await {
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
