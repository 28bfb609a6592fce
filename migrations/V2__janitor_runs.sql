-- What the janitor's tasks did, for `/metrics`: one row per task, rewritten
-- by every run of it, whichever janitor was the leader at the time.

CREATE TABLE janitor_runs (
    -- rescue, retry, workers, expiry, prune.
    task         text PRIMARY KEY,
    -- The janitor process that ran it last (`kiln-janitor --id`).
    janitor_id   text NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    elapsed_ms   bigint NOT NULL,
    -- False when the last run failed; `error` says why.
    ok           boolean NOT NULL,
    error        text,
    -- What the last run changed, by name: {"requeued": 2, "failed": 0}.
    counts       jsonb NOT NULL DEFAULT '{}',
    -- The same counts summed over every run (Prometheus counters).
    totals       jsonb NOT NULL DEFAULT '{}',
    runs         bigint NOT NULL DEFAULT 0,
    failures     bigint NOT NULL DEFAULT 0
);
