//! Prometheus metrics of the API, served at `/metrics` in the text format.
//!
//! - `kiln_http_requests_total{route, method, status}`: every answered request;
//! - `kiln_builds{state}` and `kiln_queue_depth`: read from the database at scrape time;
//! - `kiln_wait_seconds{kind}`: how long compat requests and long-polls waited;
//! - `kiln_build_duration_seconds{recipe, state}`: start to end of builds
//!   that ended while this API process was up (seen through `NOTIFY`).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The API's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    builds: Family<Labels, Gauge<i64, AtomicI64>>,
    queue_depth: Gauge<i64, AtomicI64>,
    waits: Histograms,
    durations: Histograms,
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
        let requests = Family::<Labels, Counter>::default();
        registry.register("kiln_http_requests", "HTTP requests answered, by route and status", requests.clone());
        let builds = Family::<Labels, Gauge<i64, AtomicI64>>::default();
        registry.register("kiln_builds", "Builds in the database by state", builds.clone());
        let queue_depth = Gauge::<i64, AtomicI64>::default();
        registry.register("kiln_queue_depth", "Builds waiting to be claimed", queue_depth.clone());
        let waits: Histograms = Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 2.5, 14)));
        registry.register("kiln_wait_seconds", "Time requests spent waiting for a build", waits.clone());
        let durations: Histograms = Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.5, 2.0, 14)));
        registry.register("kiln_build_duration_seconds", "Build durations, start to end", durations.clone());
        Self { registry, requests, builds, queue_depth, waits, durations }
    }

    pub fn request(&self, route: &str, method: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_owned()),
                ("method", method.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
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

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
