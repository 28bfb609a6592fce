//! The states a build, an attempt and a worker go through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

string_enum! {
    /// `queued → running → succeeded | failed | cancelled`; a lapsed lease or
    /// a preemption puts a running build back to `queued`.
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    BuildState {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

impl BuildState {
    /// A final state: nothing more happens to the build unless it is retried.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

string_enum! {
    /// How one attempt at a build ended.
    AttemptOutcome {
        Succeeded => "succeeded",
        /// A build failure: a step exited non-zero. Final, not retried.
        Failed => "failed",
        /// An infrastructure failure: Docker, storage, a crash. Retried.
        Errored => "errored",
        LeaseLapsed => "lease_lapsed",
        Preempted => "preempted",
        Cancelled => "cancelled",
        /// Given back on shutdown (SIGTERM) before it could finish.
        HandedBack => "handed_back",
    }
}

string_enum! {
    /// Whether a failure is the build's fault (deterministic) or the farm's.
    FailureKind {
        /// A step exited non-zero: the same request fails the same way.
        Build => "build",
        /// Docker, storage, network, a lost worker: worth another try.
        Infrastructure => "infrastructure",
    }
}

string_enum! {
    /// The life of a worker process.
    WorkerState {
        Active => "active",
        Draining => "draining",
        Preempted => "preempted",
        Stopped => "stopped",
        Gone => "gone",
    }
}
