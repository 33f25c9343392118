//! Prometheus metrics, aggregated over every worker by construction.
//!
//! HTTP counters and histograms live in 64-bit atomic words that the binary allocates in shared memory
//! before the first worker is forked ([`Metrics::shared`]), in one shard per worker slot: each worker adds
//! into its own shard, any worker renders the sums, and totals never go backwards when a worker is replaced
//! (its successor in the slot adds on to the same shard). There is no lock on the request path: recording a
//! request is three atomic additions to words no other worker writes.
//!
//! Cardinality is bounded by construction: label values come from fixed lists (methods, route templates,
//! status codes; anything else is `other`), so the number of series is known in advance.

use std::fmt::Write as _;
use std::time::Duration;

use hyper::Method;
use supervisor::stats::{ServerStats, ShardedCounters};

const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"];
const STATUSES: [u16; 20] =
    [200, 201, 204, 304, 400, 401, 403, 404, 405, 408, 413, 414, 415, 422, 429, 431, 500, 502, 503, 504];
/// Index of the `other` status.
const OTHER_STATUS: usize = STATUSES.len();
/// Upper bounds of the duration buckets, seconds; `+Inf` is implicit.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Route labels the counter memory has room for (the route table plus `unmatched`).
pub(crate) const MAX_ROUTES: usize = 32;
const ROUTES: usize = MAX_ROUTES;
const REQUEST_WORDS: usize = ROUTES * METHODS.len() * (STATUSES.len() + 1);
/// Per route: one word per bucket (not cumulative) plus `+Inf`, then the sum in microseconds.
const HISTOGRAM_STRIDE: usize = BUCKETS.len() + 2;

/// Worker gauges published through the supervisor and summed over workers.
pub(crate) const GAUGE_POOL_SIZE: usize = 0;
pub(crate) const GAUGE_POOL_AVAILABLE: usize = 1;
pub(crate) const GAUGE_POOL_WAITING: usize = 2;
pub(crate) const GAUGE_READY: usize = 3;

/// The HTTP metrics of the whole server.
#[derive(Clone, Copy)]
pub struct Metrics {
    counters: ShardedCounters,
}

impl Metrics {
    /// Words of counter memory the metrics need.
    pub const WORDS: usize = REQUEST_WORDS + ROUTES * HISTOGRAM_STRIDE;

    /// Metrics in memory shared with every worker forked later. Call once, before the server starts.
    pub fn shared() -> std::io::Result<Metrics> {
        Ok(Metrics { counters: ShardedCounters::shared(Self::WORDS)? })
    }

    /// Metrics private to this process (tests, tools).
    pub fn private() -> Metrics {
        Metrics { counters: ShardedCounters::private(Self::WORDS) }
    }

    /// Counts one finished request.
    pub(crate) fn record(&self, method: &Method, route: usize, status: u16, elapsed: Duration) {
        let m = METHODS.iter().position(|m| *m == method.as_str()).unwrap_or(METHODS.len() - 1);
        let s = STATUSES.iter().position(|s| *s == status).unwrap_or(OTHER_STATUS);
        self.counters.add((route * METHODS.len() + m) * (STATUSES.len() + 1) + s, 1);
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        let base = REQUEST_WORDS + route * HISTOGRAM_STRIDE;
        self.counters.add(base + bucket, 1);
        self.counters.add(base + BUCKETS.len() + 1, elapsed.as_micros() as u64);
    }

    /// The Prometheus text exposition (format 0.0.4) of the HTTP metrics and the server's statistics.
    /// `routes` are the route labels by index, as [`Metrics::record`] was given them.
    pub(crate) fn render(&self, server: &ServerStats, version: &str, routes: &[&str]) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Summed once, so that the cumulative buckets and the count agree.
        let totals = self.counters.totals();
        let load = |i: usize| totals[i];

        header(
            &mut out,
            "http_requests_total",
            "counter",
            "HTTP requests answered, by method, route template and status.",
        );
        for (r, route) in routes.iter().enumerate().take(ROUTES) {
            for (m, method) in METHODS.iter().enumerate() {
                for s in 0..=STATUSES.len() {
                    let n = load((r * METHODS.len() + m) * (STATUSES.len() + 1) + s);
                    if n > 0 {
                        let status = STATUSES.get(s).map_or("other".to_string(), u16::to_string);
                        let _ = writeln!(
                            out,
                            "http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
                        );
                    }
                }
            }
        }

        header(&mut out, "http_request_duration_seconds", "histogram", "Time to answer a request, by route template.");
        for (r, route) in routes.iter().enumerate().take(ROUTES) {
            let base = REQUEST_WORDS + r * HISTOGRAM_STRIDE;
            let counts: Vec<u64> = (0..=BUCKETS.len()).map(|b| load(base + b)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (b, bound) in BUCKETS.iter().enumerate() {
                cumulative += counts[b];
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(out, "http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {total}");
            let sum = load(base + BUCKETS.len() + 1) as f64 / 1e6;
            let _ = writeln!(out, "http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}");
            let _ = writeln!(out, "http_request_duration_seconds_count{{route=\"{route}\"}} {total}");
        }

        header(&mut out, "http_requests_in_flight", "gauge", "Requests being handled right now, in all workers.");
        let _ = writeln!(out, "http_requests_in_flight {}", server.in_flight);

        header(&mut out, "supervisor_workers", "gauge", "Worker processes by state.");
        for (state, n) in &server.workers {
            let _ = writeln!(out, "supervisor_workers{{state=\"{state}\"}} {n}");
        }
        header(
            &mut out,
            "supervisor_worker_memory_bytes",
            "gauge",
            "Memory of each worker (proportional set size, else resident set size) as the master last sampled it, \
             by scoreboard slot.",
        );
        for w in &server.each_worker {
            let _ = writeln!(out, "supervisor_worker_memory_bytes{{slot=\"{}\"}} {}", w.slot, w.memory_bytes);
        }
        header(
            &mut out,
            "supervisor_worker_age_seconds",
            "gauge",
            "Seconds since each worker was forked, by scoreboard slot.",
        );
        for w in &server.each_worker {
            let _ = writeln!(out, "supervisor_worker_age_seconds{{slot=\"{}\"}} {:.3}", w.slot, w.age_seconds);
        }
        header(&mut out, "supervisor_worker_restarts_total", "counter", "Workers replaced or retired, by reason.");
        for (reason, n) in &server.restarts {
            let _ = writeln!(out, "supervisor_worker_restarts_total{{reason=\"{reason}\"}} {n}");
        }
        header(&mut out, "supervisor_reloads_total", "counter", "Configuration reloads (HUP), by result.");
        let _ = writeln!(out, "supervisor_reloads_total{{result=\"ok\"}} {}", server.reloads_ok);
        let _ = writeln!(out, "supervisor_reloads_total{{result=\"aborted\"}} {}", server.reloads_aborted);
        header(
            &mut out,
            "log_lines_dropped_total",
            "counter",
            "Log lines dropped instead of delaying the server (the log output was not keeping up), by process role.",
        );
        for (role, n) in &server.log_lines_dropped {
            let _ = writeln!(out, "log_lines_dropped_total{{role=\"{role}\"}} {n}");
        }
        header(
            &mut out,
            "supervisor_heartbeat_age_seconds",
            "gauge",
            "Heartbeat age of the most silent serving worker.",
        );
        let _ = writeln!(out, "supervisor_heartbeat_age_seconds {:.3}", server.max_heartbeat_age);

        header(&mut out, "db_pool_connections", "gauge", "Database connections held by the workers' pools, by state.");
        let size = server.gauges[GAUGE_POOL_SIZE];
        let available = server.gauges[GAUGE_POOL_AVAILABLE].min(size);
        let _ = writeln!(out, "db_pool_connections{{state=\"idle\"}} {available}");
        let _ = writeln!(out, "db_pool_connections{{state=\"busy\"}} {}", size - available);
        header(&mut out, "db_pool_waiting_requests", "gauge", "Requests waiting for a pooled connection.");
        let _ = writeln!(out, "db_pool_waiting_requests {}", server.gauges[GAUGE_POOL_WAITING]);
        header(&mut out, "app_ready_workers", "gauge", "Workers whose last readiness check passed.");
        let _ = writeln!(out, "app_ready_workers {}", server.gauges[GAUGE_READY]);

        header(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the master, seconds since the Unix epoch.",
        );
        let _ = writeln!(out, "process_start_time_seconds {}", server.start_time);
        header(&mut out, "app_build_info", "gauge", "Build information; always 1.");
        let _ = writeln!(out, "app_build_info{{version=\"{version}\"}} 1");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: [&str; 3] = ["/healthz", "/api/items", "unmatched"];

    fn route(template: &str) -> usize {
        LABELS.iter().position(|t| *t == template).unwrap()
    }

    #[test]
    fn requests_are_counted_by_method_route_and_status() {
        let m = Metrics::private();
        let healthz = route("/healthz");
        for _ in 0..3 {
            m.record(&Method::GET, healthz, 200, Duration::from_millis(2));
        }
        m.record(&Method::from_bytes(b"BREW").unwrap(), route("unmatched"), 418, Duration::from_millis(40));
        let text = m.render(&ServerStats::default(), "1.0", &LABELS);
        assert!(text.contains("http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 3\n"), "{text}");
        assert!(
            text.contains("http_requests_total{method=\"other\",route=\"unmatched\",status=\"other\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn dropped_log_lines_are_counted_by_role() {
        let server = ServerStats { log_lines_dropped: [("master", 2), ("worker", 345)], ..ServerStats::default() };
        let text = Metrics::private().render(&server, "1.0", &LABELS);
        assert!(text.contains("# TYPE log_lines_dropped_total counter\n"), "{text}");
        assert!(text.contains("log_lines_dropped_total{role=\"master\"} 2\n"), "{text}");
        assert!(text.contains("log_lines_dropped_total{role=\"worker\"} 345\n"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_match_the_count() {
        let m = Metrics::private();
        let r = route("/api/items");
        for ms in [1, 3, 30, 700, 70_000] {
            m.record(&Method::POST, r, 201, Duration::from_millis(ms));
        }
        let text = m.render(&ServerStats::default(), "1.0", &LABELS);
        let bucket = |le: &str| -> u64 {
            let prefix = format!("http_request_duration_seconds_bucket{{route=\"/api/items\",le=\"{le}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap().parse().unwrap()
        };
        assert_eq!(bucket("0.001"), 1);
        assert_eq!(bucket("0.005"), 2);
        assert_eq!(bucket("0.05"), 3);
        assert_eq!(bucket("1"), 4);
        assert_eq!(bucket("30"), 4);
        assert_eq!(bucket("+Inf"), 5);
        assert!(text.contains("http_request_duration_seconds_count{route=\"/api/items\"} 5\n"));
        assert!(text.contains("http_request_duration_seconds_sum{route=\"/api/items\"} 70.734\n"), "{text}");
    }
}
