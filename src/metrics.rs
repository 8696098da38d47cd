//! Prometheus metrics over HTTP: `GET /metrics` answers with every shard's counters and the
//! session ticket cache's, in the OpenMetrics text format.
//!
//! A scrape reads what the shards already count ([`crate::stats::ShardStats`], relaxed atomic
//! loads) and the ticket cache's counters, and encodes them with `prometheus-client`; the
//! shards do nothing more per packet for it. [`serve`] answers one request per connection,
//! one connection at a time, on its own thread; a request head that does not end within
//! [`MAX_REQUEST_BYTES`] gets `400`, and a client that stalls for [`IO_TIMEOUT`] is
//! dropped, so no client can hold it for long.
//!
//! Every metric of a shard carries a `shard="i"` label. The metrics (counters end in
//! `_total`):
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `quring_rx_datagrams_total` | counter | UDP datagrams received (each GRO segment counts) |
//! | `quring_rx_bytes_total` | counter | UDP payload bytes received |
//! | `quring_rx_gro_batches_total` | counter | receives that carried several datagrams (GRO) |
//! | `quring_rx_ecn_datagrams_total{codepoint}` | counter | datagrams received marked `ect0`, `ect1` or `ce` |
//! | `quring_tx_datagrams_total` | counter | UDP datagrams sent (each GSO segment counts) |
//! | `quring_tx_bytes_total` | counter | UDP payload bytes sent |
//! | `quring_tx_gso_batches_total` | counter | sends that carried several datagrams (GSO) |
//! | `quring_tx_errors_total` | counter | sends the kernel failed |
//! | `quring_rx_buffer_exhausted_total` | counter | receives re-armed after the kernel ran out of buffers |
//! | `quring_datagrams_processed_total` | counter | datagrams the shard's QUIC endpoint processed |
//! | `quring_drops_total{reason}` | counter | datagrams dropped: `ctrunc`, `truncated`, `bad_address`, `invalid`, `bad_initial`, `no_send_slot`, `accept_queue_full` |
//! | `quring_retry_sent_total` | counter | Retry packets sent while `--max-handshakes` handshakes were in flight |
//! | `quring_stateless_responses_total` | counter | datagrams answered without a connection (version negotiation, stateless reset) |
//! | `quring_app_panics_total` | counter | app callbacks that panicked (the connection was closed, the shard went on) |
//! | `quring_qlog_failed_total` | counter | qlog files (`--qlog-dir`) not created, or cut short by a failed write |
//! | `quring_handoff_out_total` | counter | datagrams handed to the shard that owns their connection |
//! | `quring_handoff_in_total` | counter | datagrams received from other shards |
//! | `quring_handoff_dropped_total` | counter | hand-offs dropped because the owner's inbox was full |
//! | `quring_connections_accepted_total` | counter | connections whose handshake completed |
//! | `quring_connections_open` | gauge | connections in the shard's table |
//! | `quring_connections_closed_total` | counter | connections removed from the table |
//! | `quring_connections_refused_total` | counter | connections refused during the handshake |
//! | `quring_connections_refused_per_source_total` | counter | new connections refused because their source address had `--max-conns-per-source` open |
//! | `quring_handshakes_on_worker_total` | counter | connections accepted with the first flight the shard's handshake worker computed |
//! | `quring_handshakes_full_total` | counter | handshakes completed with the certificate |
//! | `quring_handshakes_resumed_total` | counter | handshakes completed by resuming a session |
//! | `quring_handshakes_0rtt_accepted_total` | counter | resumed handshakes whose 0-RTT data was accepted |
//! | `quring_handshakes_0rtt_rejected_total` | counter | resumed handshakes whose offered 0-RTT data was not accepted |
//! | `quring_handshakes_failed_total` | counter | connections removed before their handshake completed |
//! | `quring_handshake_duration_seconds` | histogram | time from the first packet to handshake completion |
//! | `quring_ticket_cache_entries` | gauge | session tickets held (all shards, no `shard` label) |
//! | `quring_ticket_cache_bytes` | gauge | bytes the held tickets take |
//! | `quring_ticket_cache_stored_total` | counter | tickets stored |
//! | `quring_ticket_cache_rejected_total` | counter | tickets refused (too large, duplicate, no capacity) |
//! | `quring_ticket_cache_hits_total` | counter | lookups that found their ticket |
//! | `quring_ticket_cache_misses_total` | counter | lookups that found nothing |
//! | `quring_ticket_cache_evictions_total` | counter | tickets evicted to stay within the limits |

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::error::Error;
use crate::server::Server;
use crate::stats::{StatsSnapshot, DURATION_BUCKETS_US};
use crate::tls::TicketStats;

/// The `Content-Type` of a `/metrics` answer (the OpenMetrics text format).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The most bytes a request (request line and headers) may take.
pub const MAX_REQUEST_BYTES: usize = 8192;

/// How long a client may take to send its request, or to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A running metrics endpoint; dropping it stops the thread that serves it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address served (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // The thread waits in accept(); a connection of our own wakes it to see the flag.
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let woken = TcpStream::connect_timeout(&SocketAddr::new(ip, self.addr.port()), IO_TIMEOUT);
        if let (Ok(_), Some(thread)) = (woken, self.thread.take()) {
            let _ = thread.join();
        }
    }
}

/// Serves `server`'s metrics on `http://addr/metrics` from a new thread, until the returned
/// [`MetricsServer`] is dropped. Port 0 picks a free port ([`MetricsServer::local_addr`]).
/// Fails with [`Error::AddressInUse`] when another socket holds `addr`, and
/// [`Error::Socket`] when it cannot be bound otherwise.
pub fn serve(addr: SocketAddr, server: Arc<Server>) -> Result<MetricsServer, Error> {
    let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => Error::AddressInUse(addr),
        _ => Error::Socket(addr, e),
    })?;
    let local = listener.local_addr().map_err(|e| Error::Socket(addr, e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("quring-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Acquire) {
                    break;
                }
                // A failed accept or a client gone mid-answer concerns that client only.
                if let Ok(stream) = stream {
                    let _ = answer(stream, &server);
                }
            }
        })
        .map_err(|e| Error::Config(format!("starting the metrics thread: {e}")))?;
    Ok(MetricsServer {
        addr: local,
        stop,
        thread: Some(thread),
    })
}

/// Reads one request from `stream` and answers it.
fn answer(mut stream: TcpStream, server: &Server) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    let head = loop {
        if let Some(end) = find(&buf[..len], b"\r\n\r\n") {
            break Some(&buf[..end]);
        }
        if len == buf.len() {
            break None;
        }
        match stream.read(&mut buf[len..])? {
            0 => return Ok(()),
            n => len += n,
        }
    };
    let (status, content_type, body) = match head.map(route) {
        Some(Route::Metrics) => match encode(&server.stats(), &server.ticket_cache().stats()) {
            Ok(text) => ("200 OK", CONTENT_TYPE, text),
            Err(fmt::Error) => error("500 Internal Server Error"),
        },
        Some(Route::NotFound) => error("404 Not Found"),
        Some(Route::MethodNotAllowed) => error("405 Method Not Allowed"),
        Some(Route::BadRequest) | None => error("400 Bad Request"),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn error(status: &'static str) -> (&'static str, &'static str, String) {
    (status, "text/plain; charset=utf-8", format!("{status}\n"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request by its request line (`head` is the request without its final blank line).
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        _ => Route::NotFound,
    }
}

/// Encodes shard counters (one [`StatsSnapshot`] per shard, in shard order) and the ticket
/// cache's counters in the OpenMetrics text format, ending with `# EOF`.
pub fn encode(shards: &[StatsSnapshot], tickets: &TicketStats) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        shards: shards.to_vec(),
        tickets: *tickets,
    }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The values of one scrape, encoded by [`Collector::encode`].
#[derive(Debug)]
struct Scrape {
    shards: Vec<StatsSnapshot>,
    tickets: TicketStats,
}

/// Reads one value from a shard's counters.
type ReadValue = fn(&StatsSnapshot) -> u64;

/// A metric with a value per shard, and per value of `label` when it has members.
struct ShardMetric {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    /// The label that tells `members` apart (unused with one unnamed member).
    label: &'static str,
    members: &'static [(&'static str, ReadValue)],
}

/// A per-shard counter with no label of its own (`read` holds one member named `""`).
const fn counter(
    name: &'static str,
    help: &'static str,
    read: &'static [(&'static str, ReadValue)],
) -> ShardMetric {
    ShardMetric {
        name,
        help,
        kind: MetricType::Counter,
        label: "",
        members: read,
    }
}

const SHARD_METRICS: &[ShardMetric] = &[
    counter(
        "quring_rx_datagrams",
        "UDP datagrams received (each GRO segment counts).",
        &[("", |s| s.rx_datagrams)],
    ),
    counter(
        "quring_rx_bytes",
        "UDP payload bytes received.",
        &[("", |s| s.rx_bytes)],
    ),
    counter(
        "quring_rx_gro_batches",
        "Receives that carried more than one datagram coalesced by GRO.",
        &[("", |s| s.rx_gro_batches)],
    ),
    ShardMetric {
        name: "quring_rx_ecn_datagrams",
        help: "UDP datagrams received with an ECN mark, by codepoint.",
        kind: MetricType::Counter,
        label: "codepoint",
        members: &[
            ("ect0", |s| s.rx_ecn_ect0),
            ("ect1", |s| s.rx_ecn_ect1),
            ("ce", |s| s.rx_ecn_ce),
        ],
    },
    counter(
        "quring_tx_datagrams",
        "UDP datagrams sent (each GSO segment counts).",
        &[("", |s| s.tx_datagrams)],
    ),
    counter(
        "quring_tx_bytes",
        "UDP payload bytes sent.",
        &[("", |s| s.tx_bytes)],
    ),
    counter(
        "quring_tx_gso_batches",
        "Sends that carried more than one datagram for GSO to split.",
        &[("", |s| s.tx_gso_batches)],
    ),
    counter(
        "quring_tx_errors",
        "Sends the kernel failed.",
        &[("", |s| s.tx_errors)],
    ),
    counter(
        "quring_rx_buffer_exhausted",
        "Receives re-armed after the kernel ran out of provided buffers.",
        &[("", |s| s.rx_buffer_exhausted)],
    ),
    counter(
        "quring_datagrams_processed",
        "Datagrams this shard's QUIC endpoint processed (its own and those handed to it).",
        &[("", |s| s.processed_local)],
    ),
    ShardMetric {
        name: "quring_drops",
        help: "Datagrams dropped, by reason.",
        kind: MetricType::Counter,
        label: "reason",
        members: &[
            ("ctrunc", |s| s.drop_ctrunc),
            ("truncated", |s| s.drop_truncated),
            ("bad_address", |s| s.drop_bad_address),
            ("invalid", |s| s.drop_invalid),
            ("bad_initial", |s| s.drop_bad_initial),
            ("accept_queue_full", |s| s.drop_accept_queue_full),
            ("no_send_slot", |s| s.drop_no_send_slot),
        ],
    },
    counter(
        "quring_retry_sent",
        "Retry packets sent while --max-handshakes handshakes were in flight.",
        &[("", |s| s.retry_sent)],
    ),
    counter(
        "quring_stateless_responses",
        "Datagrams answered without a connection (version negotiation, stateless reset).",
        &[("", |s| s.stateless_responses)],
    ),
    counter(
        "quring_handoff_out",
        "Datagrams handed to the shard that owns their connection.",
        &[("", |s| s.handoff_out)],
    ),
    counter(
        "quring_handoff_in",
        "Datagrams received from other shards.",
        &[("", |s| s.handoff_in)],
    ),
    counter(
        "quring_handoff_dropped",
        "Hand-offs dropped because the owner's inbox was full.",
        &[("", |s| s.handoff_dropped)],
    ),
    counter(
        "quring_connections_accepted",
        "Connections whose handshake completed.",
        &[("", |s| s.conns_accepted)],
    ),
    ShardMetric {
        name: "quring_connections_open",
        help: "Connections currently in the shard's table.",
        kind: MetricType::Gauge,
        label: "",
        members: &[("", |s| s.conns_open)],
    },
    counter(
        "quring_connections_closed",
        "Connections removed from the table.",
        &[("", |s| s.conns_closed)],
    ),
    counter(
        "quring_connections_refused",
        "Connections refused during the handshake.",
        &[("", |s| s.conns_refused)],
    ),
    counter(
        "quring_connections_refused_per_source",
        "New connections refused because their source address had --max-conns-per-source open.",
        &[("", |s| s.conns_refused_per_source)],
    ),
    counter(
        "quring_handshakes_on_worker",
        "Connections accepted with the first flight the shard's handshake worker computed.",
        &[("", |s| s.handshakes_on_worker)],
    ),
    counter(
        "quring_handshakes_full",
        "Handshakes completed with the certificate (no session resumed).",
        &[("", |s| s.handshakes_full)],
    ),
    counter(
        "quring_handshakes_resumed",
        "Handshakes completed by resuming a session with a ticket.",
        &[("", |s| s.handshakes_resumed)],
    ),
    counter(
        "quring_handshakes_0rtt_accepted",
        "Resumed handshakes whose 0-RTT data was accepted.",
        &[("", |s| s.handshakes_0rtt)],
    ),
    counter(
        "quring_handshakes_0rtt_rejected",
        "Resumed handshakes whose client offered 0-RTT data that was not accepted.",
        &[("", |s| s.handshakes_0rtt_rejected)],
    ),
    counter(
        "quring_app_panics",
        "App callbacks that panicked (each closed its connection with APP_PANIC_CODE).",
        &[("", |s| s.app_panics)],
    ),
    counter(
        "quring_handshakes_failed",
        "Connections removed before their handshake completed.",
        &[("", |s| s.handshakes_failed)],
    ),
    counter(
        "quring_qlog_failed",
        "qlog files (--qlog-dir) not created, or cut short by a failed write.",
        &[("", |s| s.qlog_failed)],
    ),
];

/// The ticket cache's metrics: name, help, whether a gauge, value.
type TicketMetric = (&'static str, &'static str, bool, fn(&TicketStats) -> u64);

const TICKET_METRICS: &[TicketMetric] = &[
    (
        "quring_ticket_cache_entries",
        "Session tickets held.",
        true,
        |t| t.entries,
    ),
    (
        "quring_ticket_cache_bytes",
        "Bytes the held session tickets take.",
        true,
        |t| t.bytes,
    ),
    (
        "quring_ticket_cache_stored",
        "Session tickets stored.",
        false,
        |t| t.puts,
    ),
    (
        "quring_ticket_cache_rejected",
        "Session tickets refused: too large, a duplicate id, or no capacity.",
        false,
        |t| t.rejected_puts,
    ),
    (
        "quring_ticket_cache_hits",
        "Ticket lookups that found their ticket.",
        false,
        |t| t.hits,
    ),
    (
        "quring_ticket_cache_misses",
        "Ticket lookups that found nothing.",
        false,
        |t| t.misses,
    ),
    (
        "quring_ticket_cache_evictions",
        "Session tickets evicted to stay within the limits.",
        false,
        |t| t.evictions,
    ),
];

fn encode_value(
    kind: MetricType,
    value: u64,
    encoder: prometheus_client::encoding::MetricEncoder,
) -> fmt::Result {
    match kind {
        MetricType::Gauge => ConstGauge::new(value).encode(encoder),
        _ => ConstCounter::new(value).encode(encoder),
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for metric in SHARD_METRICS {
            let mut family =
                encoder.encode_descriptor(metric.name, metric.help, None, metric.kind)?;
            for (shard, stats) in self.shards.iter().enumerate() {
                for (member, read) in metric.members {
                    let value = read(stats);
                    if metric.label.is_empty() {
                        let labels = [("shard", shard)];
                        encode_value(metric.kind, value, family.encode_family(&labels)?)?;
                    } else {
                        let labels = ([("shard", shard)], [(metric.label, *member)]);
                        encode_value(metric.kind, value, family.encode_family(&labels)?)?;
                    }
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "quring_handshake_duration",
            "Time from a connection's first packet to its handshake's completion.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (shard, stats) in self.shards.iter().enumerate() {
            let h = &stats.handshake_duration;
            let bounds = DURATION_BUCKETS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(h.buckets).collect();
            family
                .encode_family(&[("shard", shard)])?
                .encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count(), &buckets, None)?;
        }

        for (name, help, gauge, read) in TICKET_METRICS {
            let kind = if *gauge {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let value = read(&self.tickets);
            encode_value(
                kind,
                value,
                encoder.encode_descriptor(name, help, None, kind)?,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::stats::ShardStats;

    #[test]
    fn routes_by_request_line() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0"), Route::Metrics);
        assert_eq!(route(b"GET /nope HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET /metrics"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3"), Route::BadRequest);
        assert_eq!(route(b"GET  /metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe GET"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }

    #[test]
    fn encodes_every_shard_and_the_histogram() {
        let a = ShardStats::default();
        a.rx_bytes.add(1200);
        a.drop_invalid.add(2);
        a.conns_open.set(3);
        a.handshake_duration.record(Duration::from_micros(1500));
        let b = ShardStats::default();
        b.rx_ecn_ce.add(4);
        b.handshake_duration.record(Duration::from_secs(5));
        let tickets = TicketStats {
            entries: 6,
            hits: 7,
            ..TicketStats::default()
        };
        let text = encode(&[a.snapshot(), b.snapshot()], &tickets).expect("encode");
        for line in [
            "# TYPE quring_rx_bytes counter",
            "quring_rx_bytes_total{shard=\"0\"} 1200",
            "quring_rx_bytes_total{shard=\"1\"} 0",
            "quring_drops_total{shard=\"0\",reason=\"invalid\"} 2",
            "quring_rx_ecn_datagrams_total{shard=\"1\",codepoint=\"ce\"} 4",
            "# TYPE quring_connections_open gauge",
            "quring_connections_open{shard=\"0\"} 3",
            "# TYPE quring_handshake_duration_seconds histogram",
            "quring_handshake_duration_seconds_count{shard=\"0\"} 1",
            "quring_handshake_duration_seconds_sum{shard=\"0\"} 0.0015",
            "quring_handshake_duration_seconds_bucket{le=\"0.001\",shard=\"0\"} 0",
            "quring_handshake_duration_seconds_bucket{le=\"0.002\",shard=\"0\"} 1",
            "quring_handshake_duration_seconds_bucket{le=\"1.0\",shard=\"1\"} 0",
            "quring_handshake_duration_seconds_bucket{le=\"+Inf\",shard=\"1\"} 1",
            "# TYPE quring_ticket_cache_entries gauge",
            "quring_ticket_cache_entries 6",
            "quring_ticket_cache_hits_total 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
