//! A load run's results: the summary table, its JSON form (schema `quring-load/1`), the
//! HdrHistogram interval log, and the merge of several runs' results (`quring report merge`),
//! which is how load from several machines becomes one report.
//!
//! The JSON carries each histogram whole (HdrHistogram V2, deflated, base64), so merged
//! percentiles are exact, not averages of percentiles.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{histogram, ErrorKind, LoadConfig, LoadSnapshot, Mode};

/// The `schema` field of the JSON summary; it changes only when a field changes meaning or
/// goes away.
pub const SCHEMA: &str = "quring-load/1";

/// The interval log's tag for request latencies.
pub const LATENCY_TAG: &str = "latency";
/// The interval log's tag for handshake durations.
pub const HANDSHAKE_TAG: &str = "handshake";

/// A load run's results (or several runs' merged).
#[derive(Debug, Clone)]
pub struct Summary {
    pub target: String,
    pub protocol: String,
    pub mode: String,
    pub threads: u64,
    pub conns: u64,
    pub streams: u64,
    pub request_size: u64,
    pub response_size: u64,
    pub rate: Option<f64>,
    /// The measured time (merged: the longest of the runs, which ran side by side).
    pub duration: Duration,
    pub requests: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub conns_opened: u64,
    pub handshakes: u64,
    pub resumed: u64,
    pub zero_rtt: u64,
    pub datagrams_lost: u64,
    /// Errors by kind name; kinds that did not occur are absent.
    pub errors: BTreeMap<String, u64>,
    /// Request latencies, nanoseconds.
    pub latency: Histogram<u64>,
    /// Handshake durations, nanoseconds.
    pub handshake: Histogram<u64>,
}

impl Summary {
    /// The summary of a finished run.
    pub fn new(
        config: &LoadConfig,
        threads: usize,
        duration: Duration,
        totals: &LoadSnapshot,
        latency: Histogram<u64>,
        handshake: Histogram<u64>,
    ) -> Summary {
        let errors = ErrorKind::ALL
            .iter()
            .zip(totals.errors)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.name().to_string(), n))
            .collect();
        Summary {
            target: config.target.to_string(),
            protocol: config.protocol.name().into(),
            mode: config.mode.name().into(),
            threads: threads as u64,
            conns: config.conns as u64,
            streams: config.streams as u64,
            request_size: config.request_size,
            response_size: match config.mode {
                Mode::Datagrams => config.request_size,
                _ => config.response_size,
            },
            rate: config.rate,
            duration,
            requests: totals.requests,
            bytes_sent: totals.bytes_sent,
            bytes_received: totals.bytes_received,
            conns_opened: totals.conns_opened,
            handshakes: totals.handshakes,
            resumed: totals.resumed,
            zero_rtt: totals.zero_rtt,
            datagrams_lost: totals.datagrams_lost,
            errors,
            latency,
            handshake,
        }
    }

    /// Errors of every kind together.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn secs(&self) -> f64 {
        self.duration.as_secs_f64().max(1e-9)
    }

    /// Requests per second over the measured time.
    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.secs()
    }

    /// Application bytes (both directions) in Gbit/s.
    pub fn gbit_per_s(&self) -> f64 {
        (self.bytes_sent + self.bytes_received) as f64 * 8.0 / self.secs() / 1e9
    }

    fn pct(&self, n: u64) -> f64 {
        if self.handshakes == 0 {
            0.0
        } else {
            n as f64 * 100.0 / self.handshakes as f64
        }
    }

    /// The JSON summary (schema [`SCHEMA`]).
    pub fn to_json(&self) -> Value {
        let mut errors = serde_json::Map::new();
        errors.insert("total".into(), json!(self.errors_total()));
        for (kind, n) in &self.errors {
            errors.insert(kind.clone(), json!(n));
        }
        json!({
            "schema": SCHEMA,
            "target": self.target,
            "protocol": self.protocol,
            "mode": self.mode,
            "threads": self.threads,
            "conns": self.conns,
            "streams": self.streams,
            "request_size": self.request_size,
            "response_size": self.response_size,
            "rate": self.rate,
            "duration_s": self.duration.as_secs_f64(),
            "requests": self.requests,
            "requests_per_s": self.requests_per_s(),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "gbit_per_s": self.gbit_per_s(),
            "datagrams_lost": self.datagrams_lost,
            "connections": {
                "opened": self.conns_opened,
                "handshakes": self.handshakes,
                "resumed": self.resumed,
                "zero_rtt": self.zero_rtt,
                "resumed_pct": self.pct(self.resumed),
                "zero_rtt_pct": self.pct(self.zero_rtt),
                "per_s": self.handshakes as f64 / self.secs(),
            },
            "latency_us": percentiles(&self.latency),
            "handshake_us": percentiles(&self.handshake),
            "errors": errors,
            "latency_hist": encode(&self.latency),
            "handshake_hist": encode(&self.handshake),
        })
    }

    /// Reads a JSON summary back (for merging).
    pub fn from_json(v: &Value) -> Result<Summary, String> {
        if v["schema"] != SCHEMA {
            return Err(format!("not a {SCHEMA} summary (schema {})", v["schema"]));
        }
        let u = |key: &str| -> Result<u64, String> {
            let mut node = v;
            for part in key.split('.') {
                node = &node[part];
            }
            node.as_u64()
                .ok_or_else(|| format!("field {key} is missing or not a count"))
        };
        let s = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        let hist = |key: &str| -> Result<Histogram<u64>, String> {
            decode(
                v[key]
                    .as_str()
                    .ok_or_else(|| format!("field {key} is missing"))?,
            )
        };
        let mut errors = BTreeMap::new();
        if let Some(map) = v["errors"].as_object() {
            for (kind, n) in map {
                if kind != "total" {
                    errors.insert(
                        kind.clone(),
                        n.as_u64().ok_or("an error count is not a count")?,
                    );
                }
            }
        }
        let duration = v["duration_s"]
            .as_f64()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .ok_or("field duration_s is missing or negative")?;
        Ok(Summary {
            target: s("target"),
            protocol: s("protocol"),
            mode: s("mode"),
            threads: u("threads")?,
            conns: u("conns")?,
            streams: u("streams")?,
            request_size: u("request_size")?,
            response_size: u("response_size")?,
            rate: v["rate"].as_f64(),
            duration: Duration::from_secs_f64(duration),
            requests: u("requests")?,
            bytes_sent: u("bytes_sent")?,
            bytes_received: u("bytes_received")?,
            conns_opened: u("connections.opened")?,
            handshakes: u("connections.handshakes")?,
            resumed: u("connections.resumed")?,
            zero_rtt: u("connections.zero_rtt")?,
            datagrams_lost: u("datagrams_lost")?,
            errors,
            latency: hist("latency_hist")?,
            handshake: hist("handshake_hist")?,
        })
    }

    /// Combines runs that loaded one server side by side (from several machines): counts
    /// and histograms add up, the duration is the longest, the settings are the first run's
    /// with connections, threads and rates summed.
    pub fn merge(parts: &[Summary]) -> Result<Summary, String> {
        let (first, rest) = parts.split_first().ok_or("nothing to merge")?;
        let mut total = first.clone();
        for p in rest {
            total.threads += p.threads;
            total.conns += p.conns;
            total.rate = match (total.rate, p.rate) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
            total.duration = total.duration.max(p.duration);
            total.requests += p.requests;
            total.bytes_sent += p.bytes_sent;
            total.bytes_received += p.bytes_received;
            total.conns_opened += p.conns_opened;
            total.handshakes += p.handshakes;
            total.resumed += p.resumed;
            total.zero_rtt += p.zero_rtt;
            total.datagrams_lost += p.datagrams_lost;
            for (kind, n) in &p.errors {
                *total.errors.entry(kind.clone()).or_default() += n;
            }
            total
                .latency
                .add(&p.latency)
                .map_err(|e| format!("merging latencies: {e:?}"))?;
            total
                .handshake
                .add(&p.handshake)
                .map_err(|e| format!("merging handshakes: {e:?}"))?;
        }
        Ok(total)
    }
}

/// Percentiles in microseconds, as the JSON and the table give them.
fn percentiles(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| ns as f64 / 1000.0;
    json!({
        "count": h.len(),
        "min": us(if h.is_empty() { 0 } else { h.min() }),
        "mean": h.mean() / 1000.0,
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
    })
}

/// A histogram as base64 of its deflated V2 encoding.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Writing into a Vec does not fail, and the histogram is a valid one.
    let _ = V2DeflateSerializer::new().serialize(h, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reads a histogram [`encode`] wrote (or an interval log's entry).
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram does not decode: {e:?}"))?;
    // Re-home in our bounds so that histograms from anywhere add up.
    let mut out = histogram();
    out.add(&h)
        .map_err(|e| format!("histogram out of range: {e:?}"))?;
    Ok(out)
}

/// One interval of an interval log.
#[derive(Debug, Clone)]
pub struct LogInterval {
    /// Since the log's start time.
    pub start: Duration,
    pub duration: Duration,
    pub tag: Option<String>,
    pub histogram: Histogram<u64>,
}

/// Writes an HdrHistogram interval log (values in nanoseconds); `started` is the wall-clock
/// time its timestamps count from, if known.
pub fn write_interval_log<W: std::io::Write>(
    out: &mut W,
    started: Option<SystemTime>,
    intervals: &[LogInterval],
) -> Result<(), String> {
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment("quring load interval log; values in nanoseconds")
        .with_max_value_divisor(1000.0);
    if let Some(started) = started {
        builder.with_start_time(started).with_base_time(started);
    }
    let mut log = builder
        .begin_log_with(out, &mut serializer)
        .map_err(|e| e.to_string())?;
    for i in intervals {
        log.write_histogram(
            &i.histogram,
            i.start,
            i.duration,
            i.tag.as_deref().and_then(Tag::new),
        )
        .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// Combines interval logs of runs that went side by side: the intervals of each tag that
/// start in the same second (counted from each log's start) become one.
pub fn merge_interval_logs(logs: Vec<Vec<LogInterval>>) -> Result<Vec<LogInterval>, String> {
    let mut merged: BTreeMap<(u64, Option<String>), LogInterval> = BTreeMap::new();
    for i in logs.into_iter().flatten() {
        match merged.entry((i.start.as_secs(), i.tag.clone())) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(i);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let m = slot.get_mut();
                let end = (m.start + m.duration).max(i.start + i.duration);
                m.start = m.start.min(i.start);
                m.duration = end - m.start;
                m.histogram
                    .add(&i.histogram)
                    .map_err(|e| format!("merging histograms: {e:?}"))?;
            }
        }
    }
    Ok(merged.into_values().collect())
}

/// Each tag's intervals added up, in tag order (untagged as `-`).
pub fn totals_by_tag(intervals: &[LogInterval]) -> Vec<(String, Histogram<u64>)> {
    let mut totals: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for i in intervals {
        let total = totals
            .entry(i.tag.clone().unwrap_or_else(|| "-".into()))
            .or_insert_with(histogram);
        // Every histogram here has our bounds (decode re-homes them): adding cannot fail.
        let _ = total.add(&i.histogram);
    }
    totals.into_iter().collect()
}

/// Reads an HdrHistogram interval log.
pub fn read_interval_log(text: &[u8]) -> Result<Vec<LogInterval>, String> {
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(text) {
        match entry.map_err(|e| format!("not an interval log: {e:?}"))? {
            LogEntry::Interval(i) => out.push(LogInterval {
                start: i.start_timestamp(),
                duration: i.duration(),
                tag: i.tag().map(|t| t.as_str().to_string()),
                histogram: decode(i.encoded_histogram())?,
            }),
            LogEntry::StartTime(_) | LogEntry::BaseTime(_) => {}
        }
    }
    Ok(out)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

fn micros(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

/// `p50 .. p90 .. p99 .. p99.9 .. max ..` of a histogram in nanoseconds.
pub fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        micros(h.value_at_quantile(0.5)),
        micros(h.value_at_quantile(0.9)),
        micros(h.value_at_quantile(0.99)),
        micros(h.value_at_quantile(0.999)),
        micros(h.max())
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.secs();
        writeln!(
            f,
            "target        {} ({} over {}, {} threads, {} conns x {} streams, request {}, response {}{})",
            self.target,
            self.protocol,
            self.mode,
            self.threads,
            self.conns,
            self.streams,
            bytes(self.request_size),
            bytes(self.response_size),
            self.rate.map_or(String::new(), |r| format!(", rate {r}/s"))
        )?;
        writeln!(f, "duration      {secs:.2} s")?;
        writeln!(
            f,
            "requests      {} ({:.1}/s)",
            self.requests,
            self.requests_per_s()
        )?;
        writeln!(
            f,
            "throughput    {:.3} Gbit/s (sent {}, received {})",
            self.gbit_per_s(),
            bytes(self.bytes_sent),
            bytes(self.bytes_received)
        )?;
        writeln!(f, "latency       {}", latency_line(&self.latency))?;
        writeln!(
            f,
            "handshakes    {} ({:.1}/s), resumed {:.1} %, 0-RTT {:.1} %, {} connections opened",
            self.handshakes,
            self.handshakes as f64 / secs,
            self.pct(self.resumed),
            self.pct(self.zero_rtt),
            self.conns_opened
        )?;
        writeln!(f, "handshake     {}", latency_line(&self.handshake))?;
        if self.mode == Mode::Datagrams.name() {
            writeln!(f, "lost          {} datagrams", self.datagrams_lost)?;
        }
        write!(f, "errors        {}", self.errors_total())?;
        for (kind, n) in &self.errors {
            write!(f, ", {kind} {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(values: &[u64]) -> Histogram<u64> {
        let mut h = histogram();
        for v in values {
            h.record(*v).unwrap();
        }
        h
    }

    fn summary(latencies: &[u64], requests: u64) -> Summary {
        Summary {
            target: "127.0.0.1:4433".into(),
            protocol: "perf".into(),
            mode: "streams".into(),
            threads: 1,
            conns: 2,
            streams: 3,
            request_size: 4,
            response_size: 5,
            rate: None,
            duration: Duration::from_millis(1500),
            requests,
            bytes_sent: 10,
            bytes_received: 20,
            conns_opened: 2,
            handshakes: 2,
            resumed: 1,
            zero_rtt: 0,
            datagrams_lost: 0,
            errors: BTreeMap::from([("mismatch".to_string(), 1)]),
            latency: sample(latencies),
            handshake: sample(&[1_000_000]),
        }
    }

    #[test]
    fn json_round_trips() {
        let s = summary(&[1000, 2000, 3_000_000], 3);
        let v = s.to_json();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["errors"]["total"], 1);
        assert_eq!(v["connections"]["resumed_pct"], 50.0);
        let back = Summary::from_json(&v).unwrap();
        assert_eq!(back.latency, s.latency);
        assert_eq!(back.requests, 3);
        assert_eq!(back.errors, s.errors);
        assert_eq!(back.duration, s.duration);
        assert!(Summary::from_json(&json!({"schema": "other"})).is_err());
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let a = summary(&[1000, 2000], 2);
        let b = summary(&[5_000_000], 1);
        let m = Summary::merge(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(m.requests, 3);
        assert_eq!(m.conns, 4);
        assert_eq!(m.latency.len(), 3);
        assert_eq!(m.errors["mismatch"], 2);
        let mut both = a.latency.clone();
        both.add(&b.latency).unwrap();
        assert_eq!(m.latency, both);
    }

    fn interval(start_ms: u64, len_ms: u64, tag: &str, values: &[u64]) -> LogInterval {
        LogInterval {
            start: Duration::from_millis(start_ms),
            duration: Duration::from_millis(len_ms),
            tag: Some(tag.into()),
            histogram: sample(values),
        }
    }

    #[test]
    fn interval_log_round_trips() {
        let intervals = vec![
            interval(0, 1000, LATENCY_TAG, &[1000]),
            interval(0, 1000, HANDSHAKE_TAG, &[]),
            interval(1000, 700, LATENCY_TAG, &[2000, 3000]),
            interval(1000, 700, HANDSHAKE_TAG, &[9_000_000]),
        ];
        let mut out = Vec::new();
        write_interval_log(&mut out, Some(SystemTime::now()), &intervals).unwrap();
        let read = read_interval_log(&out).unwrap();
        assert_eq!(read.len(), 4);
        assert_eq!(read[2].tag.as_deref(), Some(LATENCY_TAG));
        assert_eq!(read[2].histogram, intervals[2].histogram);
        assert_eq!(read[3].histogram.len(), 1);
        assert!(read_interval_log(b"garbage\n").map_or(true, |v| v.is_empty()));
    }

    #[test]
    fn merged_logs_add_up_per_second_and_tag() {
        let a = vec![
            interval(0, 1000, LATENCY_TAG, &[1000]),
            interval(1000, 1000, LATENCY_TAG, &[2000]),
        ];
        let b = vec![
            interval(20, 990, LATENCY_TAG, &[5000, 6000]),
            interval(20, 990, HANDSHAKE_TAG, &[7000]),
        ];
        let merged = merge_interval_logs(vec![a, b]).unwrap();
        // Ordered by second, then tag.
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0].tag.as_deref(), Some(HANDSHAKE_TAG));
        assert_eq!(merged[1].histogram.len(), 3);
        assert_eq!(merged[1].duration, Duration::from_millis(1010));
        assert_eq!(merged[2].start, Duration::from_secs(1));
        let totals = totals_by_tag(&merged);
        assert_eq!(totals[0].0, HANDSHAKE_TAG);
        assert_eq!(totals[1].1.len(), 4);
    }
}
