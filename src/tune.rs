//! The kernel settings quring is tuned for, and a read-only check of a machine against them.
//!
//! [`PROFILE`] is the sysctl profile: one [`Setting`] per sysctl, with the value quring wants,
//! whether the value is a floor or a ceiling, why, and whether falling short of it costs
//! dropped datagrams. `tuning/99-quring.conf` holds the same values for `sysctl --system`
//! (a unit test keeps the two equal).
//!
//! [`check`] reads each setting through a function you give it (for the running machine,
//! [`read_sysctl`], which reads `/proc/sys`) and rates it; it never writes anything.
//! `quring tune` prints the result with [`render`] (or [`to_json`]) and exits 1 when
//! [`costs_drops`] says a setting would lose datagrams under load.
//!
//! ```
//! use quring::tune::{self, Status};
//! // A machine with the kernel's usual 208 KiB buffer maxima; every other setting unreadable.
//! let readings = tune::check(|name| {
//!     name.ends_with("mem_max").then(|| "212992".to_string())
//! });
//! assert_eq!(readings[0].status, Status::Low);
//! assert!(tune::costs_drops(&readings));
//! ```

use std::fmt::Write as _;

use crate::datapath::socket::{SocketBuffers, SOCKET_BUFFER};

/// Whether a setting's value is a floor or a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Every field of the current value should be at least the profile's.
    AtLeast,
    /// Every field of the current value should be at most the profile's.
    AtMost,
}

/// One sysctl of the profile.
#[derive(Debug)]
pub struct Setting {
    /// The sysctl's name, as `sysctl` takes it (`net.core.rmem_max`).
    pub name: &'static str,
    /// The profile's value: one number, or several for a multi-field sysctl (`udp_mem`).
    pub value: &'static [u64],
    /// Whether [`Setting::value`] is a floor or a ceiling.
    pub bound: Bound,
    /// Why quring wants this value.
    pub why: &'static str,
    /// Whether a current value on the wrong side of the profile's loses datagrams under load
    /// (as opposed to costing CPU time).
    pub costs_drops: bool,
}

impl Setting {
    /// The profile's value as `sysctl` prints it: fields separated by one space.
    pub fn value_text(&self) -> String {
        join(self.value)
    }

    /// The command that sets this setting to the profile's value (quoted where the value
    /// has several fields).
    pub fn fix_command(&self) -> String {
        if self.value.len() > 1 {
            format!("sysctl -w {}=\"{}\"", self.name, self.value_text())
        } else {
            format!("sysctl -w {}={}", self.name, self.value_text())
        }
    }
}

/// The cap on `SO_RCVBUF`.
const RMEM_MAX: Setting = Setting {
    name: "net.core.rmem_max",
    value: &[SOCKET_BUFFER as u64],
    bound: Bound::AtLeast,
    why: "each shard socket asks for this receive buffer (SO_RCVBUF); the kernel caps the \
          request here, and a smaller buffer overflows under bursts",
    costs_drops: true,
};

/// The cap on `SO_SNDBUF`.
const WMEM_MAX: Setting = Setting {
    name: "net.core.wmem_max",
    value: &[SOCKET_BUFFER as u64],
    bound: Bound::AtLeast,
    why: "each shard socket asks for this send buffer (SO_SNDBUF); the kernel caps the \
          request here, and a smaller buffer throttles sending (batches wait for room)",
    costs_drops: false,
};

/// The profile. `tuning/99-quring.conf` must hold the same names and values, and the
/// explanations there and in `tuning/README.md` say more than [`Setting::why`] does.
pub const PROFILE: &[Setting] = &[
    RMEM_MAX,
    WMEM_MAX,
    Setting {
        name: "net.core.netdev_max_backlog",
        value: &[16384],
        bound: Bound::AtLeast,
        why: "packets queued per CPU before the stack processes them (RPS, loopback, veth); \
              beyond it they are dropped",
        costs_drops: true,
    },
    Setting {
        name: "net.ipv4.udp_mem",
        value: &[65536, 131072, 262144],
        bound: Bound::AtLeast,
        why: "pages the receive queues of all UDP sockets together may hold; above the third \
              field every UDP socket drops what it receives",
        costs_drops: true,
    },
    Setting {
        name: "net.core.busy_read",
        value: &[0],
        bound: Bound::AtMost,
        why: "microseconds a blocking read spins on the NIC queue; io_uring does not use it, so \
              for quring it only burns CPU in other processes",
        costs_drops: false,
    },
    Setting {
        name: "net.core.busy_poll",
        value: &[0],
        bound: Bound::AtMost,
        why: "microseconds poll/select spin on the NIC queue; io_uring does not use it, so for \
              quring it only burns CPU in other processes",
        costs_drops: false,
    },
    Setting {
        name: "net.core.skb_defer_max",
        value: &[0],
        bound: Bound::AtMost,
        why: "packet buffers freed on another CPU are sent back to the CPU that received them, \
              an interrupt per batch; 0 frees them where the shard runs",
        costs_drops: false,
    },
];

/// How a setting's current value compares with the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// On the right side of the profile's value.
    Ok,
    /// Below a floor ([`Bound::AtLeast`]).
    Low,
    /// Above a ceiling ([`Bound::AtMost`]).
    High,
    /// Missing or not numbers (no such sysctl on this kernel, or no `/proc/sys`).
    Unknown,
}

impl Status {
    /// The word `quring tune` prints: `OK`, `LOW`, `HIGH` or `UNKNOWN`.
    pub fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Low => "LOW",
            Status::High => "HIGH",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// One setting of the profile as found on a machine.
#[derive(Debug)]
pub struct Reading {
    /// The profile's setting.
    pub setting: &'static Setting,
    /// The current value's fields, `None` when it could not be read or parsed.
    pub current: Option<Vec<u64>>,
    /// How the current value compares with the profile.
    pub status: Status,
}

impl Reading {
    /// Whether this setting, as it is, loses datagrams under load.
    pub fn costs_drops(&self) -> bool {
        self.setting.costs_drops && matches!(self.status, Status::Low | Status::High)
    }

    /// The command that sets the profile's value, for a setting that differs from it.
    pub fn fix(&self) -> Option<String> {
        matches!(self.status, Status::Low | Status::High).then(|| self.setting.fix_command())
    }

    /// The current value as `sysctl` prints it, or `unknown`.
    pub fn current_text(&self) -> String {
        self.current
            .as_deref()
            .map_or_else(|| "unknown".to_string(), join)
    }
}

/// Reads every setting of [`PROFILE`] with `read` (given a sysctl's name, its value as text,
/// or `None` when it cannot be read) and rates it. Values are whitespace-separated unsigned
/// numbers; anything else, or a different number of fields than the profile's, is
/// [`Status::Unknown`].
pub fn check(read: impl Fn(&str) -> Option<String>) -> Vec<Reading> {
    PROFILE
        .iter()
        .map(|setting| {
            let current = read(setting.name).and_then(|text| parse_fields(&text, setting));
            let status = match &current {
                None => Status::Unknown,
                Some(fields) => rate(setting, fields),
            };
            Reading {
                setting,
                current,
                status,
            }
        })
        .collect()
}

fn parse_fields(text: &str, setting: &Setting) -> Option<Vec<u64>> {
    let fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    (fields.len() == setting.value.len()).then_some(fields)
}

fn rate(setting: &Setting, current: &[u64]) -> Status {
    let mut pairs = current.iter().zip(setting.value);
    match setting.bound {
        Bound::AtLeast if pairs.all(|(have, want)| have >= want) => Status::Ok,
        Bound::AtLeast => Status::Low,
        Bound::AtMost if pairs.all(|(have, want)| have <= want) => Status::Ok,
        Bound::AtMost => Status::High,
    }
}

/// Whether any reading loses datagrams under load (`quring tune` then exits 1). A setting
/// that could not be read does not count.
pub fn costs_drops(readings: &[Reading]) -> bool {
    readings.iter().any(Reading::costs_drops)
}

/// A sysctl's value from `/proc/sys` on this machine (trailing newline removed), or `None`
/// when the file is missing or unreadable.
pub fn read_sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim_end().to_string())
}

/// `quring tune`'s text: a header, one line per reading (name, current value, the profile's
/// bound and value, status, and the fix command where it differs), then a closing line that
/// says whether anything costs drops.
pub fn render(readings: &[Reading]) -> String {
    let mut out = format!(
        "{:<28} {:<24} {:<27} {}\n",
        "setting", "current", "profile", "status"
    );
    for r in readings {
        let bound = match r.setting.bound {
            Bound::AtLeast => ">=",
            Bound::AtMost => "<=",
        };
        let line = format!(
            "{:<28} {:<24} {:<27} {:<7} {}",
            r.setting.name,
            r.current_text(),
            format!("{bound} {}", r.setting.value_text()),
            r.status.word(),
            r.fix().unwrap_or_default()
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let dropping: Vec<&str> = readings
        .iter()
        .filter(|r| r.costs_drops())
        .map(|r| r.setting.name)
        .collect();
    let unknown = readings
        .iter()
        .filter(|r| r.status == Status::Unknown)
        .count();
    if dropping.is_empty() {
        out.push_str("quring: no setting drops datagrams");
    } else {
        let _ = write!(
            out,
            "quring: drops datagrams under load: {}; run the commands above, or install \
             tuning/99-quring.conf",
            dropping.join(", ")
        );
    }
    if unknown > 0 {
        let _ = write!(out, " ({unknown} could not be read)");
    }
    out.push('\n');
    out
}

/// `quring tune --json`: schema `quring-tune/1`, with every reading's name, current value
/// (fields as numbers, `null` when unknown), profile value, bound (`at_least`/`at_most`),
/// status word, whether it costs drops, the fix command (or `null`) and the reason; and
/// `costs_drops` for the whole machine.
pub fn to_json(readings: &[Reading]) -> serde_json::Value {
    let settings: Vec<serde_json::Value> = readings
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.setting.name,
                "current": r.current,
                "profile": r.setting.value,
                "bound": match r.setting.bound {
                    Bound::AtLeast => "at_least",
                    Bound::AtMost => "at_most",
                },
                "status": r.status.word(),
                "costs_drops": r.costs_drops(),
                "fix": r.fix(),
                "why": r.setting.why,
            })
        })
        .collect();
    serde_json::json!({
        "schema": "quring-tune/1",
        "settings": settings,
        "costs_drops": costs_drops(readings),
    })
}

/// The one warning `quring serve` logs once it serves (`tracing`, level warn) when the kernel granted
/// smaller socket buffers than quring asks for ([`SOCKET_BUFFER`]), naming the sysctl that
/// capped them (its value read with `read`) and the fix; `None` when both buffers are as asked.
pub fn buffer_warning(
    granted: SocketBuffers,
    read: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let short: Vec<(&str, usize, &Setting)> = [
        ("receive", granted.recv, &RMEM_MAX),
        ("send", granted.send, &WMEM_MAX),
    ]
    .into_iter()
    .filter(|(_, size, _)| *size < SOCKET_BUFFER)
    .collect();
    if short.is_empty() {
        return None;
    }
    let kinds: Vec<&str> = short.iter().map(|(kind, _, _)| *kind).collect();
    let sizes: Vec<String> = short.iter().map(|(_, size, _)| kib(*size)).collect();
    let causes: Vec<String> = short
        .iter()
        .map(|(_, _, s)| match read(s.name) {
            Some(value) => format!("{} is {}", s.name, value.trim()),
            None => format!("{} caps them", s.name),
        })
        .collect();
    let fixes: Vec<String> = short
        .iter()
        .map(|(_, _, s)| format!("{}={}", s.name, s.value_text()))
        .collect();
    Some(format!(
        "UDP {} buffers are {}, not the {} asked for: {}; raise {} \
         (sysctl -w {}, or see tuning/ and `quring tune`)",
        kinds.join(" and "),
        sizes.join(" and "),
        kib(SOCKET_BUFFER),
        causes.join(" and "),
        if short.len() == 1 { "it" } else { "them" },
        fixes.join(" ")
    ))
}

/// A byte count as `N MiB` when it is whole mebibytes, else `N KiB` (rounded down).
fn kib(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn join(fields: &[u64]) -> String {
    fields
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that knows exactly `values` (name, text).
    fn machine(values: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let values: Vec<(String, String)> = values
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        move |name| {
            values
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        }
    }

    /// Every setting at exactly the profile's value, as /proc prints it (tabs in udp_mem).
    fn profile_machine() -> Vec<(&'static str, String)> {
        PROFILE
            .iter()
            .map(|s| (s.name, s.value_text().replace(' ', "\t") + "\n"))
            .collect()
    }

    fn with(overrides: &[(&'static str, &str)]) -> Vec<Reading> {
        let mut values = profile_machine();
        for (name, value) in overrides {
            match values.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = value.to_string(),
                None => panic!("{name} is not in the profile"),
            }
        }
        let borrowed: Vec<(&str, &str)> = values.iter().map(|(n, v)| (*n, v.as_str())).collect();
        check(machine(&borrowed))
    }

    fn status_of(readings: &[Reading], name: &str) -> Status {
        match readings.iter().find(|r| r.setting.name == name) {
            Some(r) => r.status,
            None => panic!("no reading for {name}"),
        }
    }

    #[test]
    fn the_profile_itself_is_all_ok_and_costs_nothing() {
        let readings = with(&[]);
        assert_eq!(readings.len(), PROFILE.len());
        for r in &readings {
            assert_eq!(r.status, Status::Ok, "{}", r.setting.name);
            assert_eq!(r.fix(), None);
        }
        assert!(!costs_drops(&readings));
    }

    #[test]
    fn floors_rate_below_as_low_and_above_as_ok() {
        let readings = with(&[
            ("net.core.rmem_max", "212992"),
            ("net.core.wmem_max", "67108864"),
            ("net.core.netdev_max_backlog", "1000"),
        ]);
        assert_eq!(status_of(&readings, "net.core.rmem_max"), Status::Low);
        assert_eq!(status_of(&readings, "net.core.wmem_max"), Status::Ok);
        assert_eq!(
            status_of(&readings, "net.core.netdev_max_backlog"),
            Status::Low
        );
        assert!(costs_drops(&readings));
        let rmem = &readings[0];
        assert_eq!(
            rmem.fix().as_deref(),
            Some("sysctl -w net.core.rmem_max=4194304")
        );
    }

    #[test]
    fn each_drop_setting_alone_fails_the_check() {
        for setting in PROFILE.iter().filter(|s| s.costs_drops) {
            let low = vec!["1"; setting.value.len()].join(" ");
            let readings = with(&[(setting.name, &low)]);
            assert_eq!(status_of(&readings, setting.name), Status::Low);
            assert!(
                costs_drops(&readings),
                "{} low should cost drops",
                setting.name
            );
        }
    }

    #[test]
    fn udp_mem_is_compared_field_by_field() {
        let readings = with(&[("net.ipv4.udp_mem", "575802\t767738\t1151604")]);
        assert_eq!(status_of(&readings, "net.ipv4.udp_mem"), Status::Ok);
        let readings = with(&[("net.ipv4.udp_mem", "575802 767738 1000")]);
        assert_eq!(status_of(&readings, "net.ipv4.udp_mem"), Status::Low);
        assert!(costs_drops(&readings));
        assert_eq!(
            readings[3].fix().as_deref(),
            Some("sysctl -w net.ipv4.udp_mem=\"65536 131072 262144\"")
        );
    }

    #[test]
    fn ceilings_rate_above_as_high_without_failing() {
        let readings = with(&[
            ("net.core.busy_read", "50"),
            ("net.core.busy_poll", "50"),
            ("net.core.skb_defer_max", "64"),
        ]);
        for name in [
            "net.core.busy_read",
            "net.core.busy_poll",
            "net.core.skb_defer_max",
        ] {
            assert_eq!(status_of(&readings, name), Status::High, "{name}");
        }
        assert!(!costs_drops(&readings));
        assert_eq!(
            readings[6].fix().as_deref(),
            Some("sysctl -w net.core.skb_defer_max=0")
        );
    }

    #[test]
    fn missing_or_garbage_values_are_unknown_and_do_not_fail() {
        let readings = with(&[
            ("net.core.rmem_max", "lots"),
            ("net.core.wmem_max", ""),
            ("net.ipv4.udp_mem", "1 2"),
            ("net.core.netdev_max_backlog", "-5"),
        ]);
        for name in [
            "net.core.rmem_max",
            "net.core.wmem_max",
            "net.ipv4.udp_mem",
            "net.core.netdev_max_backlog",
        ] {
            assert_eq!(status_of(&readings, name), Status::Unknown, "{name}");
        }
        assert!(!costs_drops(&readings));
        let nothing = check(|_| None);
        assert!(nothing.iter().all(|r| r.status == Status::Unknown));
        assert!(!costs_drops(&nothing));
        let text = render(&nothing);
        assert!(text.contains(&format!("({} could not be read)", PROFILE.len())));
    }

    #[test]
    fn render_prints_one_line_per_setting_with_its_fix() {
        let readings = with(&[
            ("net.core.rmem_max", "212992"),
            ("net.core.busy_poll", "50"),
        ]);
        let text = render(&readings);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), PROFILE.len() + 2, "{text}");
        for (line, setting) in lines[1..].iter().zip(PROFILE) {
            assert!(line.starts_with(setting.name), "{line}");
        }
        assert!(lines[1].contains(" LOW ") && lines[1].ends_with("net.core.rmem_max=4194304"));
        assert!(lines[6].contains(" HIGH ") && lines[6].ends_with("net.core.busy_poll=0"));
        assert!(lines[2].ends_with("OK"), "{}", lines[2]);
        assert!(
            lines[PROFILE.len() + 1].contains("drops datagrams under load: net.core.rmem_max;"),
            "{text}"
        );
        let json = to_json(&readings);
        assert_eq!(json["costs_drops"], true);
        assert_eq!(json["settings"][0]["current"][0], 212992);
        assert_eq!(json["settings"][5]["status"], "HIGH");
        assert_eq!(json["settings"][5]["costs_drops"], false);
    }

    #[test]
    fn the_conf_file_holds_exactly_the_profile() {
        let conf = include_str!("../tuning/99-quring.conf");
        let mut entries = Vec::new();
        for line in conf.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                panic!("not a `name = value` line in 99-quring.conf: {line:?}");
            };
            entries.push((name.trim().to_string(), value.trim().to_string()));
        }
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        let profile_names: Vec<&str> = PROFILE.iter().map(|s| s.name).collect();
        assert_eq!(
            names, profile_names,
            "99-quring.conf and PROFILE list different settings"
        );
        for ((name, value), setting) in entries.iter().zip(PROFILE) {
            assert_eq!(
                value.split_whitespace().collect::<Vec<_>>().join(" "),
                setting.value_text(),
                "{name}: 99-quring.conf and PROFILE disagree"
            );
        }
    }

    #[test]
    fn buffer_maxima_cover_what_sockets_ask_for() {
        for setting in [&RMEM_MAX, &WMEM_MAX] {
            assert!(PROFILE.iter().any(|s| s.name == setting.name));
            assert_eq!(setting.value, &[SOCKET_BUFFER as u64]);
        }
    }

    #[test]
    fn no_warning_when_buffers_are_as_asked() {
        let granted = SocketBuffers {
            recv: SOCKET_BUFFER,
            send: SOCKET_BUFFER,
        };
        assert_eq!(buffer_warning(granted, |_| None), None);
    }

    #[test]
    fn warning_names_the_capping_sysctl_and_the_fix() {
        let read = machine(&[
            ("net.core.rmem_max", "212992\n"),
            ("net.core.wmem_max", "212992\n"),
        ]);
        let recv_only = SocketBuffers {
            recv: 212992,
            send: SOCKET_BUFFER,
        };
        assert_eq!(
            buffer_warning(recv_only, &read).as_deref(),
            Some(
                "UDP receive buffers are 208 KiB, not the 4 MiB asked for: \
                 net.core.rmem_max is 212992; raise it (sysctl -w net.core.rmem_max=4194304, \
                 or see tuning/ and `quring tune`)"
            )
        );
        let both = SocketBuffers {
            recv: 212992,
            send: 1 << 20,
        };
        let line = buffer_warning(both, |_| None).unwrap_or_default();
        assert!(
            line.contains("UDP receive and send buffers are 208 KiB and 1 MiB")
                && line.contains("net.core.rmem_max caps them and net.core.wmem_max caps them")
                && line.contains(
                    "raise them (sysctl -w net.core.rmem_max=4194304 net.core.wmem_max=4194304"
                )
                && !line.contains('\n'),
            "{line}"
        );
    }
}
