//! A `quring` binary run as a child process, as a user runs it.
//!
//! [`Quring`] owns the child and kills and reaps it on any exit path. Nothing sleeps to
//! synchronise: start-up is the `listening on` line arriving on stdout, and exit is the
//! process's pidfd becoming readable, both waited for with deadlines.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the binary may take to print its listening line.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a process that should exit by itself (bad input) may take.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(20);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("quring-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// What a finished `quring` left behind.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        self.stdout.join("\n")
    }
}

/// A running `quring` child, killed and reaped when dropped.
pub struct Quring {
    args: Vec<String>,
    child: Child,
    /// Each stdout line, as it is printed.
    lines: mpsc::Receiver<String>,
    /// All stdout lines, once stdout closes.
    stdout: Option<JoinHandle<Vec<String>>>,
    /// All of stderr, once it closes.
    stderr: Option<JoinHandle<String>>,
    reaped: bool,
}

impl Quring {
    pub fn spawn(args: &[&str]) -> Quring {
        Quring::spawn_with(args, |_| {})
    }

    /// Like [`Quring::spawn`], in the working directory `cwd`.
    pub fn spawn_in(cwd: &Path, args: &[&str]) -> Quring {
        Quring::spawn_with(args, |cmd| {
            cmd.current_dir(cwd);
        })
    }

    /// As [`Quring::spawn`], with `setup` adjusting the command first (environment, a
    /// `pre_exec` hook).
    pub fn spawn_with(args: &[&str], setup: impl FnOnce(&mut Command)) -> Quring {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quring"));
        cmd.args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("spawn quring");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        let stdout = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line.clone());
                all.push(line);
            }
            all
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = err.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        Quring {
            args: args.iter().map(|s| s.to_string()).collect(),
            child,
            lines,
            stdout: Some(stdout),
            stderr: Some(stderr),
            reaped: false,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t")
    }

    /// Waits for the next stdout line containing `needle` (earlier lines are skipped).
    pub fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "quring {:?}: no stdout line containing {needle:?} within {within:?}",
                    self.args
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let done = self.wait_exit(EXIT_DEADLINE);
                    panic!(
                        "quring {:?} closed stdout ({}) before printing {needle:?}\n\
                         stdout:\n{}\nstderr:\n{}",
                        self.args,
                        done.status,
                        done.stdout_text(),
                        done.stderr
                    );
                }
            }
        }
    }

    /// Waits for the `listening on` line and returns it with the addresses it names.
    pub fn wait_listening(&mut self) -> (String, Vec<SocketAddr>) {
        let line = self.wait_line("quring: listening on ", START_DEADLINE);
        let addrs = listen_addrs(&line);
        (line, addrs)
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with the pid of our own unreaped child (it cannot be recycled until
        // we wait for it) and a valid signal number.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(
            rc,
            0,
            "kill({}, {signal}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// Waits at most `within` for the process to exit, then collects its output.
    pub fn wait_exit(&mut self, within: Duration) -> Finished {
        let status = wait_with_deadline(&mut self.child, within).unwrap_or_else(|| {
            panic!(
                "quring {:?} still running {within:?} after it should have ended",
                self.args
            )
        });
        self.reaped = true;
        // The process is gone, so both pipes are at end of file.
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Quring {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `child` to exit, at most `within`. The wait is an event: the child's pidfd
/// becomes readable when it exits (Linux 5.3+, which io_uring needs anyway); only where
/// `pidfd_open` is missing does it fall back to re-checking every 10 ms.
fn wait_with_deadline(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the child
    // is not reaped yet, so the pid is still ours.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = (raw >= 0).then(|| {
        // SAFETY: a successful pidfd_open returned a fresh descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(raw as i32) }
    });
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match &pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
                // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            None => std::thread::sleep(left.min(Duration::from_millis(10))),
        }
    }
}

/// The addresses of a `quring: listening on A, B | ...` line.
pub fn listen_addrs(line: &str) -> Vec<SocketAddr> {
    let (_, rest) = line
        .split_once("listening on ")
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
    let list = rest.split(" |").next().unwrap_or_default();
    list.split(", ")
        .map(|a| {
            a.parse()
                .unwrap_or_else(|e| panic!("bad address {a:?} in {line:?}: {e}"))
        })
        .collect()
}

/// The metrics endpoint's address, from the start-up line's `| metrics http://ADDR/metrics`.
pub fn metrics_addr(line: &str) -> SocketAddr {
    line.split(" | ")
        .find_map(|part| part.strip_prefix("metrics http://"))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
}
