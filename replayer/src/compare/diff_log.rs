//! `--diff-log PATH`: the comparison's findings as JSON Lines for tooling, bounded on disk.
//! Each line is an object with a `type`: `difference` (one request where the candidate
//! differed: its id, endpoint, statuses and the differing paths, each marked signal or noise
//! by the counts so far) or `summary` (`{"type":"summary","summary":{...}}`, everything the
//! report shows; the last one is the run's). At `--diff-log-size` the file is renamed to
//! `PATH.1` (replacing the one before) and a new one begun, which opens with the latest summary
//! so that every file can be reported on alone.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::summary::Summary;

/// One request where the candidate differed.
#[derive(Debug, Serialize)]
pub struct DifferenceLine<'a> {
    pub id: &'a str,
    pub endpoint: &'a str,
    /// `GET /users/42?x=1`.
    pub request: String,
    /// The candidate's reference: `baseline` or `production`.
    pub reference: &'a str,
    pub candidate_status: u16,
    pub reference_status: u16,
    pub differences: Vec<PathLine<'a>>,
}

#[derive(Debug, Serialize)]
pub struct PathLine<'a> {
    pub path: &'a str,
    pub kind: &'a str,
    /// Beyond the noise, by the counts so far.
    pub signal: bool,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line<'a> {
    Difference(&'a DifferenceLine<'a>),
    Summary { summary: &'a Summary },
}

/// The open diff log.
pub struct DiffLog {
    path: PathBuf,
    max_size: u64,
    file: BufWriter<File>,
    written: u64,
    line: Vec<u8>,
    /// Written at the top of each new file after a rotation.
    latest_summary: Option<Vec<u8>>,
}

impl DiffLog {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path, max_size: u64) -> std::io::Result<DiffLog> {
        Ok(DiffLog {
            file: BufWriter::new(File::create(path)?),
            path: path.to_owned(),
            max_size,
            written: 0,
            line: Vec::new(),
            latest_summary: None,
        })
    }

    pub fn difference(&mut self, line: &DifferenceLine<'_>) -> std::io::Result<()> {
        self.write(&Line::Difference(line))
    }

    /// Writes a summary line and flushes: readers see every line up to it.
    pub fn summary(&mut self, summary: &Summary) -> std::io::Result<()> {
        self.write(&Line::Summary { summary })?;
        self.latest_summary = Some(self.line.clone());
        self.file.flush()
    }

    fn write(&mut self, line: &Line<'_>) -> std::io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, line)?;
        self.line.push(b'\n');
        if self.written > 0 && self.written + self.line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&self.line)?;
        self.written += self.line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let mut older = self.path.clone().into_os_string();
        older.push(".1");
        std::fs::rename(&self.path, older)?;
        self.file = BufWriter::new(File::create(&self.path)?);
        // The summary a new file starts with does not count toward its size: one larger than
        // the size would otherwise rotate the log at every line that follows.
        self.written = 0;
        if let Some(summary) = &self.latest_summary {
            self.file.write_all(summary)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_typed_json_and_the_log_rotates_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diff.jsonl");
        let mut log = DiffLog::create(&path, 2_000).unwrap();
        let summary = Summary {
            compared: 7,
            ..Summary::default()
        };
        log.summary(&summary).unwrap();
        for n in 0..40 {
            let id = format!("{n:024x}");
            log.difference(&DifferenceLine {
                id: &id,
                endpoint: "GET /a",
                request: "GET /a?x=1".into(),
                reference: "baseline",
                candidate_status: 200,
                reference_status: 200,
                differences: vec![PathLine {
                    path: "$.price",
                    kind: "changed_value",
                    signal: true,
                }],
            })
            .unwrap();
        }
        log.summary(&summary).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        let older = std::fs::read_to_string(dir.path().join("diff.jsonl.1")).unwrap();
        // Each file: the summary it opened with, then at most the size.
        let opening = current.lines().next().unwrap().len() + 1;
        assert!(current.len() <= 2_000 + opening && older.len() <= 2_000 + opening);
        let first: serde_json::Value =
            serde_json::from_str(current.lines().next().unwrap()).unwrap();
        assert_eq!(
            first["type"], "summary",
            "a new file opens with the summary"
        );
        assert_eq!(first["summary"]["compared"], 7);
        let line: serde_json::Value = serde_json::from_str(older.lines().nth(1).unwrap()).unwrap();
        assert_eq!(line["type"], "difference");
        assert_eq!(line["differences"][0]["path"], "$.price");
        assert_eq!(
            current.lines().last().map(|l| l.contains("\"summary\"")),
            Some(true)
        );
    }

    #[test]
    fn a_summary_larger_than_the_size_does_not_rotate_at_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diff.jsonl");
        let mut log = DiffLog::create(&path, 1_000).unwrap();
        let mut summary = Summary::default();
        summary.not_compared.insert("x".repeat(2_000), 1);
        log.summary(&summary).unwrap();
        for n in 0..20 {
            let id = format!("{n:024x}");
            log.difference(&DifferenceLine {
                id: &id,
                endpoint: "GET /a",
                request: "GET /a".into(),
                reference: "baseline",
                candidate_status: 200,
                reference_status: 500,
                differences: vec![],
            })
            .unwrap();
        }
        let lines = |name: &str| {
            std::fs::read_to_string(dir.path().join(name))
                .unwrap()
                .lines()
                .count()
        };
        // Lines of about 200 bytes: the older file holds its summary and the lines that fit
        // 1,000 bytes, not a single one.
        assert!(lines("diff.jsonl.1") > 3, "{} lines", lines("diff.jsonl.1"));
    }
}
