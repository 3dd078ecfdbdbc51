//! `tapwire-replayer report FILE... [-o report.html]`: the HTML report ([`super::report`]) of a
//! finished or running comparison, from its diff log (`--diff-log`: the last `summary` line is
//! the run's report) or from `.gor` files holding requests with original and replayed
//! responses ([`super::offline`]). A file is a diff log when its first non-empty line is a JSON
//! object with a `"type"` key; anything else is read as `.gor`. Gzipped files are read
//! either way.
//!
//! Exit codes: 0 written, 1 an input that cannot be read or is not what it seems (the message
//! names the file and line), 2 a usage error.

use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use serde::Deserialize;

use super::offline::open;
use super::summary::Summary;
use crate::config::{CompareSettings, ReplayerConfig};

/// A diff log's line at most: a summary holds a few KiB of example per endpoint, for at most
/// the tracked endpoints; anything longer is not a diff log tapwire wrote.
const MAX_LINE_BYTES: u64 = 256 << 20;
/// Bytes read to tell a diff log from a `.gor` file at most.
const PROBE_BYTES: u64 = 1 << 20;
const EXIT_INPUT: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Writes the comparison report, a self-contained HTML page, from a diff log or .gor files.
#[derive(Debug, Parser)]
#[command(
    name = "tapwire-replayer report",
    bin_name = "tapwire-replayer report",
    version = env!("TAPWIRE_VERSION"),
    max_term_width = 100,
    long_about = "Writes the comparison report, a single self-contained HTML page (no scripts, \
                  nothing fetched from the network), from one diff log written with --diff-log \
                  (its last summary line is the run's report; pass the current file, not a \
                  rotated one) or from .gor files holding requests (type 1) with production's \
                  (type 2) and the targets' (type 3) responses, compared offline. Gzipped files \
                  are read too.\n\nExit codes: 0 written; 1 an input could not be read or is \
                  not valid (the message names the file and line); 2 a usage error."
)]
struct ReportArgs {
    /// A diff log, or .gor files (plain or gzipped).
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// Where to write the page; `-` or absent: standard output.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// The replayer's configuration file: .gor files are compared by its `[compare]` table
    /// (ignored headers and paths, endpoint patterns, noise thresholds, body limit) instead of
    /// the defaults, as the live run was.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Why the command failed: the user's arguments, or an input.
enum Failure {
    Usage(String),
    Input(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Input(error)
    }
}

/// Runs the command; `args` are the process's, starting with the program and `report`.
pub fn main<I, S>(args: I) -> ExitCode
where
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let args = match ReportArgs::try_parse_from(args.into_iter().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}\n\nFor more information, try '--help'.");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Input(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_INPUT)
        }
    }
}

/// The `[compare]` table of `--config`, or the defaults.
fn compare_settings(args: &ReportArgs) -> anyhow::Result<CompareSettings> {
    let Some(path) = &args.config else {
        return Ok(CompareSettings::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: ReplayerConfig =
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    Ok(config.compare)
}

fn run(args: &ReportArgs) -> Result<(), Failure> {
    let mut diff_logs = Vec::new();
    for path in &args.files {
        let reader = open(path)?;
        if is_diff_log(reader).with_context(|| format!("{}: cannot read", path.display()))? {
            diff_logs.push(path);
        }
    }
    if let (Some(config), [log, ..]) = (&args.config, diff_logs.as_slice()) {
        return Err(Failure::Usage(format!(
            "--config {} applies to .gor files; {} is a diff log, compared as its run was",
            config.display(),
            log.display()
        )));
    }
    let summary = match diff_logs.as_slice() {
        [] => super::offline::summarise_gor(&args.files, &compare_settings(args)?)?,
        [log] if args.files.len() == 1 => last_summary(open(log)?, log)?,
        [log, ..] => {
            return Err(Failure::Usage(format!(
                "{} is a diff log: pass it alone (its last summary line is the run's report), \
                 not with other files",
                log.display()
            )));
        }
    };
    let page = super::report::render(&summary);
    match args.output.as_deref() {
        None => write_stdout(&page),
        Some(path) if path == Path::new("-") => write_stdout(&page),
        Some(path) => std::fs::write(path, page)
            .with_context(|| format!("{}: cannot write the report", path.display()))
            .map_err(Failure::Input),
    }
}

fn write_stdout(page: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(page.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write the report to standard output")
        .map_err(Failure::Input)
}

/// Whether the first non-empty line is a JSON object with a `"type"` key, as every line of a
/// diff log is. `.gor` files open with a text header line (`1 ID TIMESTAMP`).
fn is_diff_log(reader: impl BufRead) -> std::io::Result<bool> {
    let mut reader = reader.take(PROBE_BYTES);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(false);
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        return Ok(
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(text)
                .is_ok_and(|object| object.contains_key("type")),
        );
    }
}

/// What every diff log line says first.
#[derive(Deserialize)]
struct LineType {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct SummaryLine {
    summary: Summary,
}

/// The last `summary` line's summary. A last line cut short (the log still being written, or
/// its writer killed) is skipped with a note; any other line that is not JSON is an error
/// naming it.
fn last_summary(mut reader: impl BufRead, path: &Path) -> anyhow::Result<Summary> {
    let name = path.display();
    let mut last: Option<(u64, Vec<u8>)> = None;
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        let read = (&mut reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("{name}:{number}: cannot read"))?;
        if read == 0 {
            break;
        }
        let complete = line.ends_with(b"\n");
        if !complete && line.len() as u64 > MAX_LINE_BYTES {
            bail!("{name}:{number}: a line longer than {MAX_LINE_BYTES} bytes: not a diff log");
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<LineType>(text) {
            Ok(kind) if kind.kind == "summary" => {
                last = Some((number, text.to_vec()));
            }
            Ok(_) => {}
            Err(_) if !complete => {
                eprintln!(
                    "note: {name}:{number}: the last line is incomplete (the log is still being \
                     written, or its writer stopped): skipped"
                );
            }
            Err(error) => {
                bail!(
                    "{name}:{number}: not a diff log line (a JSON object with a \"type\"): {error}"
                )
            }
        }
    }
    let (number, text) = last.ok_or_else(|| {
        anyhow!(
            "{name}: a diff log without a summary line: the replayer writes one every \
             --stats-interval and at the end; wait for one, or report on the .gor files"
        )
    })?;
    let line: SummaryLine = serde_json::from_slice(&text)
        .with_context(|| format!("{name}:{number}: the summary line holds no valid summary"))?;
    Ok(line.summary)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn summary_line(source: &str) -> String {
        let summary = Summary {
            source: source.into(),
            compared: 3,
            ..Summary::default()
        };
        serde_json::json!({"type": "summary", "summary": summary}).to_string()
    }

    #[test]
    fn a_diff_log_is_told_from_a_gor_file() {
        let log = format!("\n{}\n", summary_line("x"));
        assert!(is_diff_log(Cursor::new(log)).unwrap());
        assert!(is_diff_log(Cursor::new("{\"type\":\"difference\"}\n")).unwrap());
        let gor =
            "1 8f3a 1700000000000000000 0\nGET / HTTP/1.1\r\n\r\n\n\u{1f435}\u{1f648}\u{1f649}\n";
        assert!(!is_diff_log(Cursor::new(gor)).unwrap());
        assert!(!is_diff_log(Cursor::new("{\"kind\":\"x\"}\n")).unwrap());
        assert!(!is_diff_log(Cursor::new("[1, 2]\n")).unwrap());
        assert!(!is_diff_log(Cursor::new("")).unwrap());
    }

    #[test]
    fn the_last_summary_line_is_the_report() {
        let log = format!(
            "{}\n{{\"type\":\"difference\",\"id\":\"a\"}}\n{}\n{{\"type\":\"difference\"}}\n",
            summary_line("first"),
            summary_line("last")
        );
        let summary = last_summary(Cursor::new(log), Path::new("diff.jsonl")).unwrap();
        assert_eq!(summary.source, "last");
        assert_eq!(summary.compared, 3);
    }

    #[test]
    fn a_line_cut_short_at_the_end_is_skipped() {
        let log = format!("{}\n{{\"type\":\"summ", summary_line("whole"));
        let summary = last_summary(Cursor::new(log), Path::new("diff.jsonl")).unwrap();
        assert_eq!(summary.source, "whole");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let log = format!("{}\nnot json\n", summary_line("x"));
        let error = last_summary(Cursor::new(log), Path::new("diff.jsonl")).unwrap_err();
        assert!(
            format!("{error:#}").starts_with("diff.jsonl:2: not a diff log line"),
            "{error:#}"
        );

        let log =
            "{\"type\":\"difference\"}\n{\"type\":\"summary\",\"summary\":{\"compared\":-1}}\n";
        let error = last_summary(Cursor::new(log), Path::new("diff.jsonl")).unwrap_err();
        assert!(
            format!("{error:#}")
                .starts_with("diff.jsonl:2: the summary line holds no valid summary"),
            "{error:#}"
        );

        let log = "{\"type\":\"difference\"}\n";
        let error = last_summary(Cursor::new(log), Path::new("diff.jsonl")).unwrap_err();
        assert!(
            format!("{error:#}").contains("diff.jsonl: a diff log without a summary line"),
            "{error:#}"
        );
    }

    #[test]
    fn config_gives_the_compare_table_and_is_refused_with_a_diff_log() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("replayer.toml");
        std::fs::write(&config, "[compare]\nignore_paths = [\"$.meta.at\"]\n").unwrap();
        let log = dir.path().join("diff.jsonl");
        std::fs::write(&log, format!("{}\n", summary_line("x"))).unwrap();
        let args = |file: &Path| {
            ReportArgs::try_parse_from([
                "report".as_ref(),
                file.as_os_str(),
                "--config".as_ref(),
                config.as_os_str(),
            ])
            .unwrap()
        };
        let settings = compare_settings(&args(&log)).unwrap();
        assert_eq!(settings.ignore_paths, ["$.meta.at"]);
        assert!(matches!(run(&args(&log)), Err(Failure::Usage(_))));
    }
}
