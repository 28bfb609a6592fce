//! The janitor's tasks and the report each run leaves: counts by name, for
//! the log line, the `janitor_runs` table, `once`'s summary and `--json`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::ser::SerializeMap;

/// One of the janitor's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    /// Jobs whose lease lapsed go back to the queue, or fail when out of attempts.
    Rescue,
    /// Builds whose retry backoff ran out are announced to idle workers.
    Retry,
    /// Workers silent too long are marked gone and their jobs rescued at once.
    Workers,
    /// Builds past their lifetime lose their stored objects, then their rows.
    Expiry,
    /// Old live-log chunks, attempt rows and departed workers' rows go.
    Prune,
    /// Shared image objects (blobs, indexes, base records) that no build
    /// with a row names, and older than the grace period, go.
    Sweep,
}

impl Task {
    /// Every task, in the order `once` runs them: rescue first (so its
    /// counts are the lapsed leases), then workers (whose counts are then the
    /// jobs of workers it found gone), retry after both, the slow storage
    /// tasks last, the sweep after expiry (whose removed rows free blobs).
    pub const ALL: [Task; 6] = [Task::Rescue, Task::Workers, Task::Retry, Task::Expiry, Task::Prune, Task::Sweep];

    /// The task's name in the configuration, logs and `janitor_runs`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Rescue => "rescue",
            Task::Retry => "retry",
            Task::Workers => "workers",
            Task::Expiry => "expiry",
            Task::Prune => "prune",
            Task::Sweep => "sweep",
        }
    }

    /// The counts of this task that are changes it made, as opposed to what
    /// it saw: a run is worth an INFO line only when one of them is not zero.
    /// (`retry` changes nothing: it nudges workers and counts the backlog.)
    fn changes(self) -> &'static [&'static str] {
        match self {
            Task::Rescue => &["requeued", "failed", "cancelled"],
            Task::Retry => &[],
            Task::Workers => &["gone", "requeued", "failed", "cancelled"],
            Task::Expiry => &["expired", "removed_failed", "objects_deleted"],
            Task::Prune => &["log_chunks", "attempts", "workers"],
            Task::Sweep => &["swept", "bytes_swept"],
        }
    }

    /// Its cron expression in `janitor.schedules`.
    pub fn schedule(self, s: &kiln_config::JanitorSchedules) -> &str {
        match self {
            Task::Rescue => &s.rescue,
            Task::Retry => &s.retry,
            Task::Workers => &s.workers,
            Task::Expiry => &s.expiry,
            Task::Prune => &s.prune,
            Task::Sweep => &s.sweep,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Task {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What changed, by name, in the order the task reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(Vec<(&'static str, i64)>);

impl Counts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `name` to `n` (added at the end when new).
    pub fn set(&mut self, name: &'static str, n: i64) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v = n,
            None => self.0.push((name, n)),
        }
    }

    /// Add `n` to `name` (0 when new).
    pub fn add(&mut self, name: &'static str, n: i64) {
        let now = self.get(name);
        self.set(name, now + n);
    }

    /// The count called `name`, 0 when never set.
    pub fn get(&self, name: &str) -> i64 {
        self.0.iter().find(|(k, _)| *k == name).map_or(0, |(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, i64)> + '_ {
        self.0.iter().copied()
    }

    /// As a JSON object, for `janitor_runs`.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.0.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect()
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// One run of one task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    pub task: Task,
    /// False when the run failed, in part or whole; `error` says why.
    pub ok: bool,
    /// What it changed, even when it failed part way.
    pub counts: Counts,
    pub started_at: DateTime<Utc>,
    pub elapsed_ms: i64,
    pub error: Option<String>,
}

impl TaskReport {
    /// Did the run change anything or fail? Then it is news, logged at INFO
    /// (WARN when it failed); a run with nothing to report is logged at DEBUG.
    pub fn is_news(&self) -> bool {
        !self.ok || self.task.changes().iter().any(|name| self.counts.get(name) != 0)
    }

    /// The structured log line: `task=rescue requeued=2 failed=0 elapsed_ms=3`.
    pub fn log_line(&self) -> String {
        let mut line = format!("task={}", self.task);
        for (k, v) in self.counts.iter() {
            line.push_str(&format!(" {k}={v}"));
        }
        line.push_str(&format!(" elapsed_ms={}", self.elapsed_ms));
        if let Some(e) = &self.error {
            line.push_str(&format!(" error={e:?}"));
        }
        line
    }

    /// One line for a person: what the run did, in words.
    pub fn summary(&self) -> String {
        let c = |name: &str| self.counts.get(name);
        let plural = |n: i64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let what = match self.task {
            Task::Rescue => format!(
                "{} back in the queue, {} for good, {} cancelled (lapsed leases)",
                plural(c("requeued"), "build", "builds"),
                c("failed").to_string() + " failed",
                c("cancelled"),
            ),
            Task::Retry => format!(
                "{} claimable now (workers woken), {} still backing off",
                plural(c("due"), "build", "builds"),
                c("waiting"),
            ),
            Task::Workers => format!(
                "{} marked gone; of their builds {} requeued, {} failed for good, {} cancelled",
                plural(c("gone"), "silent worker", "silent workers"),
                c("requeued"),
                c("failed"),
                c("cancelled"),
            ),
            Task::Expiry => format!(
                "{} and {} removed ({} deleted), {} kept after a storage error, {} skipped",
                plural(c("expired"), "expired build", "expired builds"),
                plural(c("removed_failed"), "old failed or cancelled build", "old failed or cancelled builds"),
                plural(c("objects_deleted"), "object", "objects"),
                c("storage_errors"),
                c("skipped"),
            ),
            Task::Prune => format!(
                "{} pruned ({} kept: log not in storage), {} and {} removed",
                plural(c("log_chunks"), "live-log chunk", "live-log chunks"),
                plural(c("logs_not_stored"), "build", "builds"),
                plural(c("attempts"), "attempt row", "attempt rows"),
                plural(c("workers"), "worker row", "worker rows"),
            ),
            Task::Sweep => format!(
                "{} ({} bytes) of images swept, {} kept (named by {}), {} kept (younger than the grace), {} not deleted after a storage error",
                plural(c("swept"), "shared object", "shared objects"),
                c("bytes_swept"),
                c("kept"),
                plural(c("live_images"), "build image", "build images"),
                c("kept_young"),
                c("storage_errors"),
            ),
        };
        let mut line = format!("{:<8} {what} ({} ms)", self.task.name(), self.elapsed_ms);
        if let Some(e) = &self.error {
            line.push_str(&format!("\n         FAILED: {e}"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(task: Task, counts: &[(&'static str, i64)], error: Option<&str>) -> TaskReport {
        let mut c = Counts::new();
        for (k, v) in counts {
            c.set(k, *v);
        }
        TaskReport {
            task,
            ok: error.is_none(),
            counts: c,
            started_at: Utc::now(),
            elapsed_ms: 3,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn the_log_line_is_logfmt_in_report_order() {
        let r = report(Task::Rescue, &[("requeued", 2), ("failed", 0)], None);
        assert_eq!(r.log_line(), "task=rescue requeued=2 failed=0 elapsed_ms=3");
        let r = report(Task::Retry, &[], Some("database \"down\""));
        assert_eq!(r.log_line(), r#"task=retry elapsed_ms=3 error="database \"down\"""#);
    }

    #[test]
    fn only_changes_and_failures_are_news() {
        assert!(!report(Task::Rescue, &[("requeued", 0), ("failed", 0), ("cancelled", 0)], None).is_news());
        assert!(report(Task::Rescue, &[("requeued", 0), ("failed", 1), ("cancelled", 0)], None).is_news());
        assert!(!report(Task::Retry, &[("due", 3), ("waiting", 7)], None).is_news(), "the backlog is no news");
        assert!(report(Task::Retry, &[("due", 0), ("waiting", 0)], Some("database down")).is_news());
        assert!(!report(Task::Expiry, &[("expired", 0), ("skipped", 2)], None).is_news());
        assert!(report(Task::Expiry, &[("objects_deleted", 4)], None).is_news());
        assert!(!report(Task::Prune, &[("log_chunks", 0), ("logs_not_stored", 5)], None).is_news());
        assert!(report(Task::Prune, &[("workers", 1)], None).is_news());
        assert!(report(Task::Workers, &[("gone", 1)], None).is_news());
    }

    #[test]
    fn counts_add_set_and_serialize_in_order() {
        let mut c = Counts::new();
        c.add("b", 2);
        c.add("a", 1);
        c.add("b", 3);
        assert_eq!(c.get("b"), 5);
        assert_eq!(c.get("missing"), 0);
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"b":5,"a":1}"#);
        let json = serde_json::to_value(report(Task::Prune, &[("workers", 1)], None)).unwrap();
        assert_eq!(json["task"], "prune");
        assert_eq!(json["counts"]["workers"], 1);
        assert_eq!(json["ok"], true);
    }

    #[test]
    fn summaries_say_what_happened() {
        let r = report(Task::Rescue, &[("requeued", 1), ("failed", 2), ("cancelled", 0)], None);
        assert_eq!(
            r.summary(),
            "rescue   1 build back in the queue, 2 failed for good, 0 cancelled (lapsed leases) (3 ms)"
        );
        let r = report(Task::Expiry, &[("expired", 2)], Some("storage down"));
        assert!(r.summary().contains("2 expired builds") && r.summary().contains("FAILED: storage down"));
    }
}
