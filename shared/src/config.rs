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

/// The flags every configuration has, flattened into it: read it from a file, only check it,
/// or print its documentation. Not part of the file format.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Configuration")]
pub struct ConfigFileFlags {
    /// Read the whole configuration from a TOML file whose keys are the flags' names with
    /// underscores (see README); other flags are then refused: one source of truth.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Validate the configuration, print the effective settings as TOML, and exit.
    #[arg(long)]
    pub check_config: bool,

    /// Print this program's man page or a completion script for a shell, and exit (the
    /// packages install them; e.g. `--generate bash > /etc/bash_completion.d/NAME`).
    #[arg(long, value_name = "WHAT", exclusive = true)]
    pub generate: Option<Generated>,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generated {
    /// The man page (roff), from the same text as `--help`.
    Man,
    Bash,
    Zsh,
    Fish,
}

/// Writes what `--generate` asked for about `command` to `out`.
pub fn generate(
    what: Generated,
    mut command: clap::Command,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let name = command.get_name().to_owned();
    let shell = match what {
        Generated::Man => return clap_mangen::Man::new(command).render(out),
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command, name, out);
    Ok(())
}

/// A configuration as the command line gave it: from its flags, or from the TOML file named by
/// `--config` (then no other flag may be given: one source of truth).
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub config: T,
    /// `--check-config`: validate, print the effective settings and exit.
    pub check_only: bool,
}

/// Parses `args` (the program name first) into `T`, whose flags must include
/// [`ConfigFileFlags`]. Flag errors (and `--help`, `--version`) exit as clap does, with code 2 for
/// errors; a file that cannot be read or parsed is a [`ConfigError`] naming it.
pub fn load<T, I, S>(args: I) -> Result<Loaded<T>, ConfigError>
where
    T: clap::Parser + serde::de::DeserializeOwned,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let command = T::command();
    let matches = command.clone().get_matches_from(args);
    if let Some(&what) = matches.get_one::<Generated>("generate") {
        // Like --help: print and exit, whatever else was given.
        let written = generate(what, command, &mut std::io::stdout().lock());
        std::process::exit(if written.is_ok() { 0 } else { 1 });
    }
    let check_only = matches.get_flag("check_config");
    let Some(path) = matches.get_one::<std::path::PathBuf>("config") else {
        let config = T::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
        return Ok(Loaded { config, check_only });
    };
    let given_too = command.get_arguments().find(|arg| {
        let id = arg.get_id().as_str();
        !matches!(id, "config" | "check_config" | "generate")
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

/// The plan a command line asks to run, or how the process must exit without running: an
/// invalid configuration is a usage error like a bad flag (its message on stderr, exit code 2),
/// and `--check-config` prints the effective settings as TOML and exits 0. Both binaries start
/// this way.
pub fn plan_or_exit<C: serde::Serialize, P>(
    loaded: Result<Loaded<C>, ConfigError>,
    compile: impl FnOnce(&C) -> Result<P, ConfigError>,
) -> Result<P, std::process::ExitCode> {
    let compiled = loaded.and_then(|loaded| Ok((compile(&loaded.config)?, loaded)));
    match compiled {
        Err(error) => {
            eprintln!("error: invalid configuration: {error}");
            Err(std::process::ExitCode::from(2))
        }
        Ok((_, loaded)) if loaded.check_only => {
            print!("{}", to_toml(&loaded.config));
            eprintln!("configuration is valid");
            Err(std::process::ExitCode::SUCCESS)
        }
        Ok((plan, _)) => Ok(plan),
    }
}

/// The effective configuration, as TOML.
pub fn to_toml<T: serde::Serialize>(config: &T) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|error| format!("# cannot print: {error}\n"))
}

/// A size in bytes, written as a plain number or with a unit: `32mb`, `16MiB`, `1GiB`, `512k`
/// (units are powers of 1024, case-insensitive, as GoReplay's `32mb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let digits = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size like 32mb, 16MiB or 1048576"))?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use kb, mb, gb, tb)"
                ));
            }
        };
        number
            .checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl std::fmt::Display for ByteSize {
    /// The largest unit that divides the size exactly: `32MiB`, `1GiB`, `1500`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    /// A number of bytes, or a string with a unit.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(ByteSize(bytes)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_goreplay_and_binary_units_and_print_back() {
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("32mb", 32 << 20),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
            ("512k", 512 << 10),
            ("1500", 1500),
        ] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.get(), bytes, "{text}");
            assert_eq!(size.to_string().parse::<ByteSize>().unwrap(), size);
        }
        assert_eq!(ByteSize(32 << 20).to_string(), "32MiB");
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("mb".parse::<ByteSize>().is_err());
    }
}

/// How a running process reports on itself, the same on both sides: its log lines' format and
/// how often it logs its accounting. Flattened into both configurations (file keys `log_format`,
/// `stats_interval`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OperatorFlags {
    /// Log lines as text, or as one JSON object per line (`timestamp`, `level`, `message` and
    /// the event's fields), for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, help_heading = "Observability")]
    pub log_format: LogFormat,

    /// How often to log the accounting (totals, and per target on the replayer: received,
    /// answered by status class, dropped by reason, rate and latency over the interval);
    /// 0 turns it off.
    #[arg(long, default_value = "10s", value_name = "DURATION", help_heading = "Observability",
          value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub stats_interval: std::time::Duration,
}

impl Default for OperatorFlags {
    fn default() -> Self {
        flag_defaults()
    }
}

impl OperatorFlags {
    /// The accounting interval, or `None` when turned off (`0`).
    pub fn stats_every(&self) -> Option<std::time::Duration> {
        (!self.stats_interval.is_zero()).then_some(self.stats_interval)
    }
}

/// The format of log lines (`--log-format`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The exit code of a run that ended by itself (its input file done, or `--exit-after`) having
/// delivered nothing of what it received: every request dropped. The others: 0 done, 1 an
/// error (or, on the replayer, requests neither answered nor counted), 2 a usage or
/// configuration error (README, "Exit codes").
pub const EXIT_NOTHING_DELIVERED: u8 = 3;

#[cfg(test)]
mod operator_flags_tests {
    use super::*;

    #[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Side {
        #[serde(flatten)]
        operator: OperatorFlags,
    }

    #[test]
    fn operator_keys_sit_at_the_top_level_of_a_file_and_zero_turns_stats_off() {
        let side: Side =
            toml::from_str("log_format = \"json\"\nstats_interval = \"0s\"\n").unwrap();
        assert_eq!(side.operator.log_format, LogFormat::Json);
        assert_eq!(side.operator.stats_every(), None);
        assert_eq!(
            to_toml(&Side::default()),
            "log_format = \"text\"\nstats_interval = \"10s\"\n"
        );
        assert!(toml::from_str::<Side>("stats_intervall = \"1s\"\n").is_err());
    }
}
