//! What `kiln build` and `kiln download` show on stderr while they wait.
//!
//! On a terminal: one `indicatif` spinner line with the build's state and
//! the time elapsed, live log lines scrolling above it. Anywhere else (a
//! pipe, a CI log): plain lines, one per change, each with the elapsed time.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kiln_domain::BuildState;

use crate::api::Build;

/// The progress display; cheap to clone into another task.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    /// Plain mode: the last status printed and when.
    last: Arc<Mutex<Option<(String, Instant)>>>,
}

/// Plain mode repeats an unchanged status this often, to show it is alive.
const REPEAT: Duration = Duration::from_secs(30);

impl Progress {
    /// A spinner when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar, started: Instant::now(), last: Arc::default() }
    }

    /// Show where `build` is.
    pub fn build(&self, build: &Build) {
        self.status(&format!("build {}: {}", build.key.short(), describe(build)));
    }

    /// Show a status: the spinner's text, or a plain line when it changed
    /// (or has not been said for a while).
    pub fn status(&self, text: &str) {
        if let Some(bar) = &self.bar {
            return bar.set_message(text.to_owned());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.as_ref().is_some_and(|(said, at)| said == text && now.duration_since(*at) < REPEAT) {
            return;
        }
        eprintln!("[{:>4}s] {text}", self.started.elapsed().as_secs());
        *last = Some((text.to_owned(), now));
    }

    /// Print a line (a log line, a note) above the spinner.
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// Remove the spinner.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Time since the display was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A build's state in a few words: `running (attempt 1 of 3)`.
pub fn describe(build: &Build) -> String {
    match build.state {
        BuildState::Running | BuildState::Queued if build.attempts > 0 && build.max_attempts > 0 => {
            format!("{} (attempt {} of {})", build.state, build.attempts.max(1), build.max_attempts)
        }
        state => state.to_string(),
    }
}
