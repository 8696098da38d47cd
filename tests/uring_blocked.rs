//! With io_uring blocked the way container runtimes block it (a seccomp filter that makes
//! `io_uring_setup` fail with EPERM), `quring serve` falls back to the portable datapath, says
//! so in one warning line naming the cause and the fix, and serves.
//!
//! This is the one place outside `src/datapath/` with `unsafe`: installing a real seccomp
//! filter in the child between fork and exec. It only affects that child.

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::process::{path_str, Quring, TempDir};
use common::{
    client_config_trusting, connect, echo_stream, endpoint_with, pattern, runtime, DEADLINE,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

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
fn seccomp_blocked_io_uring_falls_back_to_portable_and_serves() {
    let dir = TempDir::new("uring-blocked");
    let cert = dir.file("cert.pem");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
        "--cert-out",
        path_str(&cert),
    ];
    let mut q = Quring::spawn_with(&args, |cmd| {
        // The default datapath (io_uring), whichever datapath the suite runs on.
        cmd.env_remove("QURING_DATAPATH");
        // SAFETY: the closure only calls async-signal-safe prctl(2) in the child.
        unsafe {
            cmd.pre_exec(deny_io_uring_setup);
        }
    });
    let (line, addrs) = q.wait_listening();
    assert!(
        line.contains("datapath portable: recvmmsg"),
        "the start-up line names the datapath in use: {line}"
    );

    // It really serves: a 100 kB echo round trip with a quinn client.
    let data = pattern(9, 100_000);
    let rt = runtime();
    let echoed = rt.block_on(async {
        let certs = CertificateDer::pem_file_iter(&cert)
            .expect("read --cert-out file")
            .map(|c| c.expect("--cert-out holds PEM certificates"));
        let endpoint = endpoint_with(client_config_trusting(certs, b"echo"), addrs[0]);
        let conn = connect(&endpoint, addrs[0]).await;
        let echoed = tokio::time::timeout(DEADLINE, echo_stream(&conn, &data))
            .await
            .expect("echo within the deadline");
        conn.close(0u32.into(), b"done");
        echoed
    });
    assert!(echoed == data, "echo differs ({} bytes back)", echoed.len());

    q.signal(libc::SIGTERM);
    let done = q.wait_exit(Duration::from_secs(10));
    let stderr = &done.stderr;
    assert!(done.status.success(), "{}\nstderr:\n{stderr}", done.status);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("io_uring")).collect();
    assert_eq!(warnings.len(), 1, "one warning line: {stderr}");
    for part in [
        "WARN",
        "EPERM",
        "seccomp",
        "portable datapath",
        "--datapath portable",
    ] {
        assert!(
            warnings[0].contains(part),
            "the warning lacks {part:?}: {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}
