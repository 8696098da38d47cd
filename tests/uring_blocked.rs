//! With io_uring blocked the way container runtimes block it (a seccomp filter that makes
//! `io_uring_setup` fail with EPERM), `quring serve` exits 2 with one line naming the cause.
//!
//! This is the one place outside `src/datapath/` with `unsafe`: installing a real seccomp
//! filter in the child between fork and exec. It only affects that child.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `io_uring_setup` has number 425 in the unified syscall table (x86-64 and arm64 alike).
const SYS_IO_URING_SETUP: u32 = 425;

fn deny_io_uring_setup() -> std::io::Result<()> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ERRNO: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO
    const RET_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: SYS_IO_URING_SETUP,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: runs in the forked child before exec; prctl only reads `prog` (and the filter
    // it points to, both alive on this stack frame) during the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn seccomp_blocked_io_uring_is_named_and_exits_2() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quring"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"]);
    // SAFETY: the closure only calls async-signal-safe prctl(2) in the child.
    unsafe {
        cmd.pre_exec(deny_io_uring_setup);
    }
    let out = cmd.output().expect("run quring");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains("io_uring") && lines[0].contains("EPERM") && lines[0].contains("seccomp"),
        "names the cause: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "must not claim to serve"
    );
}
