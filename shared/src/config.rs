//! What both sides' configurations share: the error that names the setting at fault, and how
//! flags and a TOML file become one configuration (each setting declared once, on a struct that
//! derives both its flag and its file key).

/// A configuration that cannot run, naming the field at fault (`target[1].filters.allow_url[0]`,
/// `max_request_bytes`) so that one message tells the user what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        ConfigError {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

/// A configuration as the command line gave it: from its flags, or from the TOML file named by
/// `--config` (then no other flag may be given: one source of truth).
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub config: T,
    /// `--check-config`: validate, print the effective settings and exit.
    pub check_only: bool,
}

/// Parses `args` (the program name first) into `T`, whose flags must include `--config` and
/// `--check-config`. Flag errors (and `--help`, `--version`) exit as clap does, with code 2 for
/// errors; a file that cannot be read or parsed is a [`ConfigError`] naming it.
pub fn load<T, I, S>(args: I) -> Result<Loaded<T>, ConfigError>
where
    T: clap::Parser + serde::de::DeserializeOwned,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let command = T::command();
    let matches = command.clone().get_matches_from(args);
    let check_only = matches.get_flag("check_config");
    let Some(path) = matches.get_one::<std::path::PathBuf>("config") else {
        let config = T::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
        return Ok(Loaded { config, check_only });
    };
    let given_too = command.get_arguments().find(|arg| {
        let id = arg.get_id().as_str();
        !matches!(id, "config" | "check_config")
            && matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    });
    if let Some(flag) = given_too {
        return Err(ConfigError::new(
            format!("--{}", flag.get_long().unwrap_or(flag.get_id().as_str())),
            format!(
                "cannot be combined with --config {}: set it in the file",
                path.display()
            ),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::new("--config", format!("{}: {error}", path.display())))?;
    let config = toml::from_str(&text).map_err(|error| {
        ConfigError::new(path.display().to_string(), error.to_string().trim_end())
    })?;
    Ok(Loaded { config, check_only })
}

/// The defaults of a set of flags, for the file format: a setting's default is declared once,
/// on its flag, and a file that leaves the setting out gets the same.
pub fn flag_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    // Required flags are left out here; the file's own checks (or the flags') catch them.
    let command = T::augment_args(clap::Command::new("defaults")).ignore_errors(true);
    let matches = command.get_matches_from(["defaults"]);
    T::from_arg_matches(&matches).expect("every flag without a default may be absent")
}

/// The effective configuration, as TOML.
pub fn to_toml<T: serde::Serialize>(config: &T) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|error| format!("# cannot print: {error}\n"))
}
