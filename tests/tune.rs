//! `quring tune` and `quring serve`'s buffer warning, checked against what `/proc/sys` says on
//! the machine running the tests (so the expectations hold on any machine).

mod common;

use common::process::{Quring, EXIT_DEADLINE};
use quring::datapath::socket::SOCKET_BUFFER;
use quring::tune::{Bound, PROFILE};

/// A sysctl's fields as this test reads them from `/proc/sys`, `None` if missing or not
/// numbers.
fn proc_fields(name: &str) -> Option<Vec<u64>> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let text = std::fs::read_to_string(path).ok()?;
    text.split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<Vec<u64>>>()
}

/// Whether `fields` are on the wrong side of `value` for `bound` (fields compared in order).
fn off_profile(fields: &[u64], value: &[u64], bound: Bound) -> bool {
    fields.len() == value.len()
        && fields.iter().zip(value).any(|(have, want)| match bound {
            Bound::AtLeast => have < want,
            Bound::AtMost => have > want,
        })
}

#[test]
fn tune_reports_every_setting_and_fails_exactly_when_proc_says_drops() {
    let done = Quring::spawn(&["tune"]).wait_exit(EXIT_DEADLINE);
    let stdout = done.stdout_text();
    let mut expect_drops = false;
    for setting in PROFILE {
        let line = done
            .stdout
            .iter()
            .find(|l| l.split_whitespace().next() == Some(setting.name))
            .unwrap_or_else(|| panic!("no line for {}:\n{stdout}", setting.name));
        let current = proc_fields(setting.name);
        let (shown, status) = match &current {
            Some(fields) if fields.len() == setting.value.len() => {
                let off = off_profile(fields, setting.value, setting.bound);
                expect_drops |= off && setting.costs_drops;
                let word = match (off, setting.bound) {
                    (false, _) => "OK",
                    (true, Bound::AtLeast) => "LOW",
                    (true, Bound::AtMost) => "HIGH",
                };
                let text: Vec<String> = fields.iter().map(u64::to_string).collect();
                (text.join(" "), word)
            }
            _ => ("unknown".to_string(), "UNKNOWN"),
        };
        assert!(
            line.contains(&format!(" {shown} ")) && line.contains(&format!(" {status}")),
            "{}: expected current {shown:?} and status {status}, got:\n{line}",
            setting.name
        );
        assert_eq!(
            line.contains(&format!("sysctl -w {}=", setting.name)),
            status == "LOW" || status == "HIGH",
            "{}: a fix command belongs on exactly the lines that differ:\n{line}",
            setting.name
        );
    }
    assert_eq!(
        done.status.code(),
        Some(if expect_drops { 1 } else { 0 }),
        "exit status disagrees with /proc/sys:\n{stdout}\nstderr:\n{}",
        done.stderr
    );
    assert!(done.stderr.is_empty(), "stderr:\n{}", done.stderr);
}

#[test]
fn tune_json_agrees_with_the_exit_status() {
    let done = Quring::spawn(&["tune", "--json"]).wait_exit(EXIT_DEADLINE);
    let json: serde_json::Value =
        serde_json::from_str(&done.stdout_text()).expect("quring tune --json prints JSON");
    assert_eq!(json["schema"], "quring-tune/1");
    let settings = json["settings"].as_array().expect("settings array");
    let names: Vec<&str> = settings.iter().filter_map(|s| s["name"].as_str()).collect();
    let profile: Vec<&str> = PROFILE.iter().map(|s| s.name).collect();
    assert_eq!(names, profile);
    let drops = json["costs_drops"]
        .as_bool()
        .expect("costs_drops is a bool");
    assert_eq!(
        drops,
        settings.iter().any(|s| s["costs_drops"] == true),
        "{json}"
    );
    assert_eq!(done.status.code(), Some(if drops { 1 } else { 0 }));
}

#[test]
fn serve_warns_once_iff_the_kernel_capped_the_buffers() {
    let capped = ["net.core.rmem_max", "net.core.wmem_max"].map(|name| {
        proc_fields(name)
            .and_then(|f| f.first().copied())
            .map(|max| max < SOCKET_BUFFER as u64)
    });
    let mut q = Quring::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
    ]);
    q.wait_listening();
    q.signal(libc::SIGTERM);
    let done = q.wait_exit(EXIT_DEADLINE);
    assert!(done.status.success(), "stderr:\n{}", done.stderr);
    let warnings: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(" UDP ") && l.contains(" buffers are "))
        .collect();
    match capped {
        [Some(rmem), Some(wmem)] => {
            assert_eq!(
                warnings.len(),
                usize::from(rmem || wmem),
                "rmem_max capped: {rmem}, wmem_max capped: {wmem}; stderr:\n{}",
                done.stderr
            );
            if let Some(line) = warnings.first() {
                assert_eq!(line.contains("net.core.rmem_max"), rmem, "{line}");
                assert_eq!(line.contains("net.core.wmem_max"), wmem, "{line}");
            }
        }
        // Without /proc/sys the caps are unknown; still never more than one line.
        _ => assert!(warnings.len() <= 1, "stderr:\n{}", done.stderr),
    }
}
