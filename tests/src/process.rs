//! Running tapwire's binaries as child processes: finding them, waiting for the log line that
//! says they are ready (never a sleep), stopping them with SIGTERM, and reading their CPU time
//! and peak memory from /proc.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Where `cargo build` put the workspace binaries: `$TAPWIRE_BIN_DIR`, or the directory of the
/// running executable (or its parent, for test executables under `deps/`).
pub fn binary_path(name: &str) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("TAPWIRE_BIN_DIR") {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::current_exe()?.parent() {
        candidates.push(dir.to_path_buf());
        if let Some(parent) = dir.parent() {
            candidates.push(parent.to_path_buf());
        }
    }
    candidates
        .iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| {
            format!("binary {name} not found in {candidates:?}: build it first (`make test` runs `cargo build --bins`)")
        })
}

/// Runs `binary --check-config ARGS` to its end: its exit code and what it printed (stdout,
/// then stderr).
pub fn check_config(binary: &str, args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(binary_path(binary).unwrap())
        .arg("--check-config")
        .args(args)
        .output()
        .unwrap();
    let printed = [output.stdout, output.stderr].concat();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&printed).into_owned(),
    )
}

/// The `addr=IP:PORT` field of a log line.
pub fn addr_in(line: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .and_then(|addr| addr.parse().ok())
}

/// CPU time and peak memory of a process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ResourceUsage {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

struct Log {
    lines: Mutex<Vec<String>>,
    /// Lines seen so far, and whether stderr has closed (the process is exiting).
    progress: watch::Sender<(usize, bool)>,
}

/// A tapwire binary running as a child process, its stderr collected line by line.
pub struct Process {
    name: String,
    child: Child,
    log: Arc<Log>,
}

impl Process {
    pub fn spawn(binary: &str, args: &[String]) -> anyhow::Result<Process> {
        let path = binary_path(binary)?;
        Process::start(binary, Command::new(&path).args(args))
    }

    /// Runs a tapwire binary with at most `open_files` file descriptors (RLIMIT_NOFILE, soft
    /// and hard), as under systemd's default of 1024.
    pub fn spawn_with_open_files(
        binary: &str,
        args: &[String],
        open_files: u64,
    ) -> anyhow::Result<Process> {
        let path = binary_path(binary)?;
        let mut command = Command::new(&path);
        command.args(args);
        let limit = libc::rlimit {
            rlim_cur: open_files,
            rlim_max: open_files,
        };
        // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing else.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Process::start(binary, &mut command)
    }

    /// Runs a tapwire binary inside a network namespace (`ip netns exec`, which becomes it).
    pub fn spawn_in_namespace(
        namespace: &str,
        binary: &str,
        args: &[String],
    ) -> anyhow::Result<Process> {
        let path = binary_path(binary)?;
        Process::start(
            binary,
            Command::new("ip")
                .args(["netns", "exec", namespace])
                .arg(&path)
                .args(args),
        )
    }

    fn start(binary: &str, command: &mut Command) -> anyhow::Result<Process> {
        let mut child = command
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Never leave a capture running behind a failed test.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let (progress, _) = watch::channel((0, false));
        let log = Arc::new(Log {
            lines: Mutex::new(Vec::new()),
            progress,
        });
        let reader_log = Arc::clone(&log);
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                let mut lines = reader_log.lines.lock().expect("log lock");
                lines.push(line);
                let count = lines.len();
                drop(lines);
                reader_log.progress.send_replace((count, false));
            }
            reader_log
                .progress
                .send_modify(|(_, closed)| *closed = true);
        });
        Ok(Process {
            name: binary.to_owned(),
            child,
            log,
        })
    }

    /// The process id, while the process runs.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} has exited", self.name))
    }

    /// How the process exited, or None while it runs.
    pub fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lines.lock().expect("log lock").join("\n")
    }

    /// Waits for a log line containing `needle`; fails if the process exits or time runs out.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let mut progress = self.log.progress.subscribe();
        let mut checked = 0;
        let wait = async {
            loop {
                let (count, closed) = *progress.borrow_and_update();
                {
                    let lines = self.log.lines.lock().expect("log lock");
                    if let Some(line) = lines[checked..count].iter().find(|l| l.contains(needle)) {
                        return Ok(line.clone());
                    }
                }
                checked = count;
                if closed {
                    bail!("{} exited before logging {needle:?}", self.name);
                }
                if progress.changed().await.is_err() {
                    bail!("{} log reader stopped", self.name);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result.with_context(|| format!("{} log:\n{}", self.name, self.log())),
            Err(_) => bail!(
                "{} did not log {needle:?} within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// Reads /proc while the process runs. CPU time is in clock ticks of 1/100 s (USER_HZ).
    pub fn resource_usage(&self) -> anyhow::Result<ResourceUsage> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let after_name = stat.rsplit_once(')').context("malformed /proc stat")?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let peak_kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .context("no VmHWM in /proc status")?;
        Ok(ResourceUsage {
            cpu_seconds: ticks as f64 / 100.0,
            peak_rss_bytes: peak_kib * 1024,
        })
    }

    /// Waits for the process to exit by itself (a file replay, a pcap conversion); kills it
    /// and fails if it has not within `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "{} did not exit within {timeout:?}; killed. log:\n{}",
                    self.name,
                    self.log()
                )
            }
        }
    }

    /// Sends SIGTERM and waits for a graceful exit (SIGKILL after `grace`).
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        kill(Pid::from_raw(self.pid()? as i32), Signal::SIGTERM)?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "{} ignored SIGTERM for {grace:?}; killed. log:\n{}",
                    self.name,
                    self.log()
                )
            }
        }
    }

    /// SIGKILL: the process gets no chance to drain or acknowledge anything.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Seconds since midnight of a log line's timestamp (`2026-11-30T17:21:32.707792Z ...`): for
/// timing a run by a process's own log lines (start-up and exit left out).
pub fn log_seconds(line: &str) -> anyhow::Result<f64> {
    let time = line
        .split_whitespace()
        .next()
        .and_then(|stamp| stamp.split_once('T'))
        .map(|(_, time)| time.trim_end_matches('Z'))
        .context("no timestamp")?;
    let mut parts = time.split(':');
    let mut seconds = 0.0;
    for unit in [3600.0, 60.0, 1.0] {
        let part: f64 = parts.next().context("short timestamp")?.parse()?;
        seconds += part * unit;
    }
    Ok(seconds)
}
