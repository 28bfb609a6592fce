//! Prometheus metrics of the API, served at `/metrics` in the text format.
//!
//! - `kiln_http_requests_total{route, method, status}`: every answered request;
//! - `kiln_http_rejections_total{reason}`: requests refused before their
//!   handler (`rate_token`, `rate_address`, `unauthorized`, `invalid_token`,
//!   `insufficient_scope`, `body_too_large`, `unavailable`) and builds refused
//!   by the per-token quota (`build_quota`);
//! - `kiln_builds{state}` and `kiln_queue_depth`: read from the database at scrape time;
//! - `kiln_wait_seconds{kind}`: how long compat requests and long-polls waited;
//! - `kiln_waiting{kind}`: compat requests and long-polls waiting right now;
//! - `kiln_registry_requests_total{kind, method, status}`: answers of the
//!   registry under `/v2/` (`kind`: `manifest`, `blob` or `base`);
//! - in both, `method` is one of the nine standard methods or `other`, so
//!   a client cannot add series by inventing methods;
//! - `kiln_registry_pulls_total{outcome}`: manifest requests by outcome
//!   (`served`, `build_failed`, `pending`, `refused`, `error`);
//! - `kiln_registry_blob_bytes_total`: blob bytes sent (`307`s not counted);
//! - `kiln_build_duration_seconds{recipe, state}`: start to end of builds
//!   that ended while this API process was up (seen through `NOTIFY`);
//! - `kiln_janitor_changes{task, janitor, what}`, `kiln_janitor_runs{…}`,
//!   `kiln_janitor_failed_runs{…}`, `kiln_janitor_last_run_timestamp_seconds{…}`:
//!   what each janitor task changed in total, read at scrape time from the
//!   `janitor_runs` table the janitor keeps (the janitor serves no port);
//! - `kiln_worker_disk_free_bytes{worker}` and `kiln_worker_disk_low{worker}`
//!   (1 while the worker claims nothing because its free disk is below
//!   `worker.min_free_disk_mb`): read at scrape time from the rows of active
//!   and draining workers.

use std::sync::atomic::AtomicI64;

use axum::http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The labels of `kiln_http_requests_total`, counted on every request: a
/// struct rather than [`Labels`], so counting costs no formatting and one
/// allocation at most.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

/// A method as a label: the standard ones, else `other` (a client may send
/// any token as a method, and each would be a new series).
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::TRACE, "TRACE"),
        (Method::CONNECT, "CONNECT"),
    ];
    STANDARD.iter().find(|(m, _)| m == method).map_or("other", |(_, name)| name)
}

/// The API's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    rejections: Family<Labels, Counter>,
    builds: Family<Labels, Gauge<i64, AtomicI64>>,
    queue_depth: Gauge<i64, AtomicI64>,
    waits: Histograms,
    waiting: Family<Labels, Gauge<i64, AtomicI64>>,
    durations: Histograms,
    janitor_changes: Family<Labels, Gauge<i64, AtomicI64>>,
    janitor_runs: Family<Labels, Gauge<i64, AtomicI64>>,
    janitor_failures: Family<Labels, Gauge<i64, AtomicI64>>,
    janitor_last_run: Family<Labels, Gauge<i64, AtomicI64>>,
    registry_requests: Family<Labels, Counter>,
    registry_pulls: Family<Labels, Counter>,
    registry_blob_bytes: Counter,
    worker_disk_free: Family<Labels, Gauge<i64, AtomicI64>>,
    worker_disk_low: Family<Labels, Gauge<i64, AtomicI64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("kiln_http_requests", "HTTP requests answered, by route and status", requests.clone());
        let rejections = Family::<Labels, Counter>::default();
        registry.register(
            "kiln_http_rejections",
            "Requests refused by auth, rate limits, quotas and size limits, by reason",
            rejections.clone(),
        );
        let builds = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        registry.register("kiln_builds", "Builds in the database by state", builds.clone());
        let queue_depth = Gauge::<i64, AtomicI64>::default();
        registry.register("kiln_queue_depth", "Builds waiting to be claimed", queue_depth.clone());
        let waits: Histograms = Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 2.5, 14)));
        registry.register("kiln_wait_seconds", "Time requests spent waiting for a build", waits.clone());
        let waiting = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        registry.register("kiln_waiting", "Requests waiting for a build now", waiting.clone());
        let durations: Histograms = Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.5, 2.0, 14)));
        registry.register("kiln_build_duration_seconds", "Build durations, start to end", durations.clone());
        let gauges = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<Labels, Gauge<i64, AtomicI64>>::default();
            registry.register(name, help, family.clone());
            family
        };
        let janitor_changes =
            gauges(&mut registry, "kiln_janitor_changes", "What janitor tasks changed, summed over their runs");
        let janitor_runs = gauges(&mut registry, "kiln_janitor_runs", "Janitor task runs");
        let janitor_failures = gauges(&mut registry, "kiln_janitor_failed_runs", "Janitor task runs that failed");
        let janitor_last_run = gauges(
            &mut registry,
            "kiln_janitor_last_run_timestamp_seconds",
            "When a janitor task last finished (Unix time)",
        );
        let registry_requests = Family::<Labels, Counter>::default();
        registry.register("kiln_registry_requests", "Registry (/v2/) requests answered", registry_requests.clone());
        let registry_pulls = Family::<Labels, Counter>::default();
        registry.register("kiln_registry_pulls", "Registry manifest requests by outcome", registry_pulls.clone());
        let registry_blob_bytes = Counter::default();
        registry.register("kiln_registry_blob_bytes", "Blob bytes the registry sent", registry_blob_bytes.clone());
        let worker_disk_free = gauges(
            &mut registry,
            "kiln_worker_disk_free_bytes",
            "Free space on each live worker's work directory filesystem",
        );
        let worker_disk_low = gauges(
            &mut registry,
            "kiln_worker_disk_low",
            "1 while a worker claims nothing because its free disk is below worker.min_free_disk_mb",
        );
        Self {
            registry,
            requests,
            rejections,
            builds,
            queue_depth,
            waits,
            waiting,
            durations,
            janitor_changes,
            janitor_runs,
            janitor_failures,
            janitor_last_run,
            registry_requests,
            registry_pulls,
            registry_blob_bytes,
            worker_disk_free,
            worker_disk_low,
        }
    }

    pub fn registry_request(&self, kind: &str, method: &Method, status: u16) {
        self.registry_requests
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("method", method_label(method).to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    pub fn registry_pull(&self, outcome: &str) {
        self.registry_pulls.get_or_create(&vec![("outcome", outcome.to_owned())]).inc();
    }

    pub fn registry_blob_bytes(&self, bytes: u64) {
        self.registry_blob_bytes.inc_by(bytes);
    }

    pub fn request(&self, route: &str, method: &Method, status: u16) {
        let labels = RequestLabels { route: route.to_owned(), method: method_label(method), status };
        self.requests.get_or_create(&labels).inc();
    }

    /// Count a request refused for `reason`.
    pub fn rejected(&self, reason: &str) {
        self.rejections.get_or_create(&vec![("reason", reason.to_owned())]).inc();
    }

    /// Count a request of `kind` as waiting until the guard is dropped.
    pub fn waiting(&self, kind: &'static str) -> Waiting {
        let gauge = self.waiting.get_or_create(&vec![("kind", kind.to_owned())]).clone();
        gauge.inc();
        Waiting(gauge)
    }

    pub fn waited(&self, kind: &'static str, secs: f64) {
        self.waits.get_or_create(&vec![("kind", kind.to_owned())]).observe(secs);
    }

    pub fn build_finished(&self, recipe: &str, state: &str, secs: f64) {
        self.durations.get_or_create(&vec![("recipe", recipe.to_owned()), ("state", state.to_owned())]).observe(secs);
    }

    pub fn set_states(&self, counts: &kiln_queue::StateCounts) {
        for (state, n) in [
            ("queued", counts.queued),
            ("running", counts.running),
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
            ("cancelled", counts.cancelled),
        ] {
            self.builds.get_or_create(&vec![("state", state.to_owned())]).set(n);
        }
        self.queue_depth.set(counts.queued);
    }

    /// Mirror the janitor's `janitor_runs` rows.
    pub fn set_janitor(&self, runs: &[kiln_queue::JanitorRun]) {
        for run in runs {
            let labels = vec![("task", run.task.clone()), ("janitor", run.janitor_id.clone())];
            self.janitor_runs.get_or_create(&labels).set(run.runs);
            self.janitor_failures.get_or_create(&labels).set(run.failures);
            self.janitor_last_run.get_or_create(&labels).set(run.finished_at.timestamp());
            for (what, n) in &run.totals {
                let mut labels = labels.clone();
                labels.push(("what", what.clone()));
                self.janitor_changes.get_or_create(&labels).set(n.as_i64().unwrap_or(0));
            }
        }
    }

    /// Mirror the live workers' rows (workers that left are dropped).
    pub fn set_workers(&self, workers: &[kiln_queue::WorkerRow]) {
        self.worker_disk_free.clear();
        self.worker_disk_low.clear();
        for w in workers {
            let labels = vec![("worker", w.id.clone())];
            if let Some(mb) = w.disk_free_mb {
                self.worker_disk_free.get_or_create(&labels).set(mb.saturating_mul(1024 * 1024));
            }
            self.worker_disk_low.get_or_create(&labels).set(i64::from(w.disk_low));
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// A waiting request, counted in `kiln_waiting` while it lives.
#[derive(Debug)]
pub struct Waiting(Gauge<i64, AtomicI64>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_method_and_status_with_methods_bounded() {
        let m = Metrics::new();
        let brew = Method::from_bytes(b"BREW").unwrap();
        m.request("/api/compat", &Method::GET, 200);
        m.request("/api/compat", &Method::GET, 200);
        m.request("other", &brew, 405);
        m.registry_request("base", &brew, 405);
        let text = m.encode();
        assert!(
            text.contains(r#"kiln_http_requests_total{route="/api/compat",method="GET",status="200"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"kiln_http_requests_total{route="other",method="other",status="405"} 1"#), "{text}");
        assert!(text.contains(r#"kiln_registry_requests_total{kind="base",method="other",status="405"} 1"#), "{text}");
        assert!(!text.contains("BREW"), "{text}");
    }
}
