//! `--qlog-dir`: each connection writes its own qlog file (JSON-SEQ records holding the
//! connection's packets), on the server and on `quring load`'s client; without the option
//! nothing is written; a file that cannot be created is counted and its connection goes on.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::process::{path_str, Quring, TempDir, EXIT_DEADLINE};
use common::{
    client_endpoint, connect, echo_stream, pattern, runtime, total, wait_stats, DEADLINE,
};
use quring::Server;
use serde_json::Value;

/// An unpinned one-shard echo server on loopback writing qlogs into `dir`.
fn server_with_qlog(dir: &Path) -> Server {
    Server::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .shards(1)
        .pin(false)
        .app(Arc::new(quring::apps::EchoFactory))
        .qlog_dir(dir)
        .start()
        .expect("server starts")
}

/// Opens `n` connections one after the other, echoes a stream on each and closes it.
fn echo_connections(server: &Server, n: usize) {
    let addr = server.local_addrs()[0];
    runtime().block_on(async {
        let endpoint = client_endpoint(server, addr);
        for i in 0..n {
            let conn = connect(&endpoint, addr).await;
            let data = pattern(i as u64, 3000);
            assert_eq!(echo_stream(&conn, &data).await, data);
            conn.close(0u32.into(), b"done");
        }
        tokio::time::timeout(DEADLINE, endpoint.wait_idle())
            .await
            .expect("client closes within the deadline");
    });
}

/// The file names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read qlog dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// A qlog file parsed as JSON-SEQ (RFC 7464): every record starts with RS (0x1e) and holds
/// one JSON text. Returns the header and the events.
fn read_qlog(path: &Path) -> (Value, Vec<Value>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes.first(),
        Some(&0x1e),
        "{}: starts with RS",
        path.display()
    );
    let mut records = bytes[1..].split(|&b| b == 0x1e).map(|record| {
        assert!(
            record.ends_with(b"\n"),
            "{}: a record ends with LF",
            path.display()
        );
        serde_json::from_slice::<Value>(record)
            .unwrap_or_else(|e| panic!("{}: a record is not JSON: {e}", path.display()))
    });
    let header = records.next().expect("a header record");
    assert_eq!(header["qlog_format"], "JSON-SEQ", "{header}");
    (header, records.collect())
}

/// `(name, packet_type)` of every event (`packet_type` empty for events without a header).
fn kinds(events: &[Value]) -> BTreeSet<(String, String)> {
    events
        .iter()
        .map(|e| {
            let name = e["name"]
                .as_str()
                .unwrap_or_else(|| panic!("unnamed event {e}"));
            let packet = e["data"]["header"]["packet_type"].as_str().unwrap_or("");
            (name.to_string(), packet.to_string())
        })
        .collect()
}

fn has(kinds: &BTreeSet<(String, String)>, name: &str, packet: &str) -> bool {
    kinds.contains(&(name.to_string(), packet.to_string()))
}

/// Asserts what every complete connection's qlog holds: packets of every packet space each
/// way, recovery metrics, and one `group_id` for all events (which it returns).
fn assert_connection_events(path: &Path, events: &[Value]) -> String {
    let kinds = kinds(events);
    for (name, packet) in [
        ("transport:packet_sent", "initial"),
        ("transport:packet_sent", "handshake"),
        ("transport:packet_sent", "1RTT"),
        ("transport:packet_received", "initial"),
        ("transport:packet_received", "handshake"),
        ("transport:packet_received", "1RTT"),
        ("recovery:metrics_updated", ""),
    ] {
        assert!(
            has(&kinds, name, packet),
            "{}: no {name} {packet} among {kinds:?}",
            path.display()
        );
    }
    let times: Vec<f64> = events.iter().filter_map(|e| e["time"].as_f64()).collect();
    assert_eq!(times.len(), events.len(), "every event has a time");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "events in time order"
    );
    events[events.len() - 1]["group_id"]
        .as_str()
        .expect("events carry a group_id")
        .to_string()
}

#[test]
fn each_server_connection_writes_its_own_complete_qlog() {
    let dir = TempDir::new("qlog-server");
    let qlogs = dir.file("qlogs"); // created by the server
    let server = server_with_qlog(&qlogs);
    assert_eq!(server.qlog_dir(), Some(qlogs.as_path()));
    echo_connections(&server, 2);
    // A file is complete once its connection has left the shard's table.
    wait_stats(&server, DEADLINE, "both connections closed", |s| {
        s.conns_closed == 2
    });

    let pid = std::process::id();
    let expected: Vec<String> = (0..2)
        .map(|seq| format!("server-{pid}-0.{seq}.sqlog"))
        .collect();
    assert_eq!(names(&qlogs), expected);
    let mut groups = BTreeSet::new();
    for (seq, name) in expected.iter().enumerate() {
        let path = qlogs.join(name);
        let (header, events) = read_qlog(&path);
        let title = header["title"].as_str().unwrap_or_default();
        assert_eq!(
            title,
            format!("quring server connection 0.{seq}"),
            "{header}"
        );
        let description = header["description"].as_str().unwrap_or_default();
        assert!(description.starts_with("client 127.0.0.1:"), "{header}");
        let group = assert_connection_events(&path, &events);
        assert!(
            events.iter().all(|e| e["group_id"] == group.as_str()),
            "{name}: one connection, one group_id"
        );
        groups.insert(group);
    }
    assert_eq!(
        groups.len(),
        2,
        "two connections, two group ids: {groups:?}"
    );
    assert_eq!(total(&server).qlog_failed, 0);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_qlog_that_cannot_be_created_is_counted_and_its_connection_goes_on() {
    let dir = TempDir::new("qlog-taken");
    let server = server_with_qlog(dir.path());
    // The first connection's file name is taken: quring never overwrites a file.
    let taken = dir.file(&format!("server-{}-0.0.sqlog", std::process::id()));
    std::fs::write(&taken, b"not ours").expect("write the squatter");

    echo_connections(&server, 2);
    wait_stats(&server, DEADLINE, "both connections closed", |s| {
        s.conns_closed == 2
    });
    assert_eq!(total(&server).qlog_failed, 1);
    assert_eq!(
        std::fs::read(&taken).expect("read the squatter"),
        b"not ours"
    );
    let second = dir.file(&format!("server-{}-0.1.sqlog", std::process::id()));
    let (_, events) = read_qlog(&second);
    assert_connection_events(&second, &events);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn load_writes_client_qlogs_and_serve_writes_none_without_the_option() {
    // The server runs in an empty directory without --qlog-dir: it must leave it empty.
    let cwd = TempDir::new("qlog-off");
    let mut serve = Quring::spawn_in(
        cwd.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--no-pin",
        ],
    );
    let (line, addrs) = serve.wait_listening();
    assert!(!line.contains("qlog"), "{line}");

    let out = TempDir::new("qlog-load");
    let qlogs: PathBuf = out.file("client");
    let target = addrs[0].to_string();
    let mut load = Quring::spawn(&[
        "load",
        &target,
        "--insecure",
        "--threads",
        "1",
        "--no-pin",
        "--conns",
        "2",
        // Requests for a second rather than a count: a count can be used up on the first
        // connection before the second one's handshake completes.
        "--rate",
        "100",
        "--duration",
        "1",
        "--qlog-dir",
        path_str(&qlogs),
    ]);
    let pid = load.pid();
    let done = load.wait_exit(Duration::from_secs(60));
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
    let expected: Vec<String> = (0..2)
        .map(|seq| format!("client-{pid}-0.{seq}.sqlog"))
        .collect();
    assert_eq!(names(&qlogs), expected);
    for name in &expected {
        let path = qlogs.join(name);
        let (header, events) = read_qlog(&path);
        let description = header["description"].as_str().unwrap_or_default();
        assert!(
            description.starts_with(&format!("server {target}")),
            "{header}"
        );
        assert_connection_events(&path, &events);
    }

    serve.signal(libc::SIGTERM);
    let done = serve.wait_exit(EXIT_DEADLINE);
    assert!(done.status.success(), "{}\n{}", done.status, done.stderr);
    assert_eq!(names(cwd.path()), Vec::<String>::new());
}

#[test]
fn an_unusable_qlog_dir_is_one_error_line_at_start() {
    let dir = TempDir::new("qlog-bad");
    let file = dir.file("a-file");
    std::fs::write(&file, b"").expect("create a file");
    for args in [
        vec!["serve", "--listen", "127.0.0.1:0", "--no-pin"],
        vec!["load", "127.0.0.1:9", "--insecure", "--no-pin"],
    ] {
        let mut args = args;
        args.extend(["--qlog-dir", path_str(&file)]);
        let done = Quring::spawn(&args).wait_exit(EXIT_DEADLINE);
        assert_eq!(done.status.code(), Some(2), "{args:?}: {}", done.stderr);
        let lines: Vec<&str> = done.stderr.lines().collect();
        assert!(
            lines.len() == 1
                && lines[0].starts_with("quring: error: --qlog-dir ")
                && lines[0].contains(path_str(&file)),
            "{args:?}: {}",
            done.stderr
        );
        assert!(!done.stdout_text().contains("listening on"), "{args:?}");
    }
}
