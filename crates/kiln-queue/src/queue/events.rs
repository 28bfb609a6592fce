//! A build's event stream: the live log and progress that workers append
//! and the API reads (`/log?follow=1`, `/events`). State changes are added
//! by the `builds` trigger, so no code path can forget them.

use chrono::{DateTime, Utc};
use kiln_domain::BuildKey;

use super::Queue;
use super::leases::{Lease, lost};
use crate::QueueError;

/// Kinds of entries in a build's event stream. The stream's closing
/// `result` is not stored: the API derives it from the final build row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A chunk of build output (text).
    Log,
    /// A state change (JSON, written by the database trigger).
    State,
    /// A step started (JSON: name, index).
    StepStarted,
    /// A step ended (JSON: name, index, exit code, seconds).
    StepFinished,
}

impl EventKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventKind::Log => "log",
            EventKind::State => "state",
            EventKind::StepStarted => "step_started",
            EventKind::StepFinished => "step_finished",
        }
    }
}

/// One entry of a build's event stream. `kind` stays text: a process of a
/// newer release may write kinds this one does not know, and readers pass
/// them on (as SSE event names) rather than fail.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    pub id: i64,
    pub attempt_id: Option<i64>,
    pub kind: String,
    pub data: String,
    pub created_at: DateTime<Utc>,
}

impl Queue {
    /// Append a chunk of build output. Fenced on the attempt (not on the
    /// lease's expiry: late output of a live attempt is still worth keeping).
    pub async fn append_log(&self, lease: &Lease, text: &str) -> Result<i64, QueueError> {
        self.append_event(lease, EventKind::Log, text).await
    }

    /// Append an event to the build's stream; returns its id.
    pub async fn append_event(&self, lease: &Lease, kind: EventKind, data: &str) -> Result<i64, QueueError> {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO build_events (build_key, attempt_id, kind, data)
             SELECT $1, $2, $3, $4
             WHERE EXISTS (SELECT 1 FROM builds WHERE key = $1 AND lease_attempt = $2 AND state = 'running')
             RETURNING id",
        )
        .bind(lease.key.as_str())
        .bind(lease.attempt_id)
        .bind(kind.as_str())
        .bind(data)
        .fetch_optional(&self.pool)
        .await?;
        id.ok_or_else(|| lost(lease))
    }

    /// Events of a build after `after_id`, oldest first, at most `limit`.
    pub async fn events_after(&self, key: &BuildKey, after_id: i64, limit: i64) -> Result<Vec<Event>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT id, attempt_id, kind, data, created_at FROM build_events
             WHERE build_key = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(key.as_str())
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Log chunks after `after_id` (id, text), oldest first, at most `limit`.
    pub async fn log_after(&self, key: &BuildKey, after_id: i64, limit: i64) -> Result<Vec<(i64, String)>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT id, data FROM build_events WHERE build_key = $1 AND kind = 'log' AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(key.as_str())
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The whole live log of a build so far, every attempt in order.
    pub async fn log_text(&self, key: &BuildKey) -> Result<String, QueueError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT string_agg(data, '' ORDER BY id) FROM build_events WHERE build_key = $1 AND kind = 'log'",
        )
        .bind(key.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(text.unwrap_or_default())
    }
}
