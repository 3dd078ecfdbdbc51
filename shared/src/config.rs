//! What both sides' configurations share: the error that names the setting at fault, and how
//! flags and a TOML file become one configuration (each setting declared once, on a struct that
//! derives both its flag and its file key; the deployment flags, listed once per program in
//! [`Configuration::DEPLOYMENT_FLAGS`], override the file).

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
    /// Read the configuration from a TOML file whose keys are the flags' names with underscores
    /// (see README). Besides it only deployment flags may be given (addresses, credentials, log
    /// options: see README), and they override the file; the others are refused.
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

/// A program's configuration: one struct whose fields are its flags and the keys of its
/// `--config` file.
pub trait Configuration: clap::Parser + serde::Serialize + serde::de::DeserializeOwned {
    /// The flags that may accompany `--config` and then override the file: where the program
    /// runs and how it connects (addresses, credentials, log options), never what it does.
    /// Every other flag given with `--config` is refused. The one list of them, checked by
    /// [`check_deployment_flags`] in each binary's tests.
    const DEPLOYMENT_FLAGS: &'static [DeploymentFlag];

    /// Every key of the file, as dotted paths (`tls.cert`, `target.rate` for a key of every
    /// `[[target]]`), so that `--check-config` can list the ones left unset.
    fn file_keys() -> Vec<String>;
}

/// A deployment flag: its clap id, and where its value goes in the file (a dotted path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeploymentFlag {
    pub id: &'static str,
    pub key: &'static str,
}

impl DeploymentFlag {
    /// A flag whose file key is its id, as for most.
    pub const fn same_key(id: &'static str) -> Self {
        DeploymentFlag { id, key: id }
    }
}

/// Checks `T::DEPLOYMENT_FLAGS` against `T`'s flags: every id is a flag, and giving
/// the flag with `value` puts it at its key in the printed configuration. `values` gives a valid
/// value for each flag, by id; `required` is what the command line needs besides.
pub fn check_deployment_flags<T: Configuration>(values: &[(&str, &str)], required: &[&str]) {
    let command = T::command();
    for flag in T::DEPLOYMENT_FLAGS {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == flag.id)
            .unwrap_or_else(|| {
                panic!(
                    "deployment flag {:?} is not a flag of {}",
                    flag.id,
                    command.get_name()
                )
            });
        let value = values
            .iter()
            .find(|(id, _)| *id == flag.id)
            .unwrap_or_else(|| panic!("no test value for deployment flag {:?}", flag.id))
            .1;
        let long = format!(
            "--{}",
            arg.get_long().expect("deployment flags are long flags")
        );
        let args = [command.get_name(), &long, value]
            .into_iter()
            .chain(required.iter().copied());
        let config =
            T::try_parse_from(args).unwrap_or_else(|error| panic!("{long} {value}: {error}"));
        let printed = toml::Table::try_from(&config).expect("a configuration prints as a table");
        assert!(
            lookup(&printed, flag.key).is_some(),
            "{long} does not set the file key {:?}: {printed}",
            flag.key
        );
    }
}

/// A configuration as the command line gave it: from its flags, or from the TOML file named by
/// `--config` with the deployment flags given besides overriding it.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub config: T,
    /// `--check-config`: validate, print the effective settings and exit.
    pub check_only: bool,
}

/// Parses `args` (the program name first) into `T`, whose flags must include
/// [`ConfigFileFlags`]. Flag errors (and `--help`, `--version`) exit as clap does, with code 2 for
/// errors; a file that cannot be read or parsed, or an engine flag given with `--config`, is a
/// [`ConfigError`] naming it.
pub fn load<T, I, S>(args: I) -> Result<Loaded<T>, ConfigError>
where
    T: Configuration,
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
    let from_flags = T::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let Some(path) = matches.get_one::<std::path::PathBuf>("config") else {
        return Ok(Loaded {
            config: from_flags,
            check_only,
        });
    };
    let mut overrides = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "config" | "check_config" | "generate")
            || matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine)
        {
            continue;
        }
        match T::DEPLOYMENT_FLAGS.iter().find(|flag| flag.id == id) {
            Some(flag) => overrides.push(flag),
            None => {
                return Err(ConfigError::new(
                    format!("--{}", arg.get_long().unwrap_or(id)),
                    format!(
                        "cannot be combined with --config {}: set it in the file (only \
                         deployment flags, such as --metrics-listen, override the file)",
                        path.display()
                    ),
                ));
            }
        }
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::new("--config", format!("{}: {error}", path.display())))?;
    // Parsed from the text first, so that a mistake in the file is reported with its line.
    let from_file: T = toml::from_str(&text).map_err(|error| {
        ConfigError::new(path.display().to_string(), error.to_string().trim_end())
    })?;
    if overrides.is_empty() {
        return Ok(Loaded {
            config: from_file,
            check_only,
        });
    }
    let unprintable = |error: toml::ser::Error| ConfigError::new("--config", error);
    let given = toml::Table::try_from(&from_flags).map_err(unprintable)?;
    let mut merged = toml::Table::try_from(&from_file).map_err(unprintable)?;
    for flag in overrides {
        place(&mut merged, flag.key, lookup(&given, flag.key).cloned());
    }
    let config = merged.try_into().map_err(|error: toml::de::Error| {
        ConfigError::new("--config", error.to_string().trim_end())
    })?;
    Ok(Loaded { config, check_only })
}

/// The value at a dotted `key` (`tls.cert`) of `table`.
fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let (table, last) = match key.rsplit_once('.') {
        None => (table, key),
        Some((parent, last)) => (lookup(table, parent)?.as_table()?, last),
    };
    table.get(last)
}

/// Sets (or with `None`, removes) the value at a dotted `key` of `table`, making the tables on
/// the way.
fn place(table: &mut toml::Table, key: &str, value: Option<toml::Value>) {
    let (table, last) = match key.split_once('.') {
        None => (table, key),
        Some((first, rest)) => {
            let inner = table
                .entry(first)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = inner {
                return place(inner, rest, value);
            }
            return;
        }
    };
    match value {
        Some(value) => table.insert(last.to_owned(), value),
        None => table.remove(last),
    };
}

/// The field names of the struct `T` deserializes from, as its file writes them (after
/// renames), for [`Configuration::file_keys`]; each prefixed with `prefix`.
pub fn struct_keys<T: serde::de::DeserializeOwned>(prefix: &str) -> Vec<String> {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
        .iter()
        .map(|field| format!("{prefix}{field}"))
        .collect()
}

/// A deserializer that only notes the field names a struct asks for, then stops.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("only the field names were wanted"))
    }

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
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
pub fn plan_or_exit<C: Configuration, P>(
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
            print!("{}", to_toml_with_unset(&loaded.config));
            eprintln!("configuration is valid");
            Err(std::process::ExitCode::SUCCESS)
        }
        Ok((plan, _)) => Ok(plan),
    }
}

/// The effective configuration as TOML, opening with a comment that lists the keys left unset
/// (settings that are off, or derived from others), so that it names every key there is.
pub fn to_toml_with_unset<C: Configuration>(config: &C) -> String {
    let printed = to_toml(config);
    let Ok(table) = toml::Table::try_from(config) else {
        return printed;
    };
    let unset: Vec<String> = C::file_keys()
        .into_iter()
        .filter(|key| !is_set(&table, key))
        .collect();
    if unset.is_empty() {
        return printed;
    }
    let mut comment = String::from("# Not set (off, or derived from other settings):\n#");
    let mut width = 1;
    for key in unset {
        if width + key.len() > 98 {
            comment.push_str("\n#");
            width = 1;
        }
        comment.push(' ');
        comment.push_str(&key);
        width += key.len() + 1;
    }
    format!("{comment}\n{printed}")
}

/// Whether a dotted `key` has a value in `table`; a key of an array of tables (`target.rate`)
/// counts as set when any of them sets it.
fn is_set(table: &toml::Table, key: &str) -> bool {
    let (first, rest) = match key.split_once('.') {
        None => return table.contains_key(key),
        Some(split) => split,
    };
    match table.get(first) {
        Some(toml::Value::Table(inner)) => is_set(inner, rest),
        Some(toml::Value::Array(items)) => items
            .iter()
            .any(|item| item.as_table().is_some_and(|inner| is_set(inner, rest))),
        _ => false,
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
    fn a_zero_stats_interval_turns_the_lines_off() {
        assert_eq!(stats_every(std::time::Duration::ZERO), None);
        let interval = std::time::Duration::from_millis(250);
        assert_eq!(stats_every(interval), Some(interval));
    }

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

/// The accounting interval `--stats-interval` asks for, or `None` when turned off (`0`). Both
/// binaries declare the flag themselves (its help says what each logs), at the top level of
/// their file: a struct flattened into a file's keys would hide them from [`struct_keys`].
pub fn stats_every(interval: std::time::Duration) -> Option<std::time::Duration> {
    (!interval.is_zero()).then_some(interval)
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
