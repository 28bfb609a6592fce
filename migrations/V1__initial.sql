-- Kiln's schema: the build queue, its attempts, the workers and the live
-- event stream (log lines, state changes, steps) of every build.

CREATE TYPE build_state AS ENUM ('queued', 'running', 'succeeded', 'failed', 'cancelled');
CREATE TYPE attempt_outcome AS ENUM (
    'succeeded', 'failed', 'errored', 'lease_lapsed', 'preempted', 'cancelled', 'handed_back'
);
CREATE TYPE worker_state AS ENUM ('active', 'draining', 'preempted', 'stopped', 'gone');

CREATE TABLE builds (
    -- Content address of the resolved request (kiln_domain::BuildKey).
    key              text PRIMARY KEY CHECK (key ~ '^[0-9a-f]{64}$'),
    recipe           text NOT NULL,
    -- The resolved request (kiln_domain::BuildSpec) as JSON.
    spec             jsonb NOT NULL,
    state            build_state NOT NULL DEFAULT 'queued',
    -- Higher runs first.
    priority         integer NOT NULL DEFAULT 0,
    -- Build attempts consumed (counted at claim, given back on preemption).
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    -- Preemption and shutdown hand-backs: their own budget.
    preemptions      integer NOT NULL DEFAULT 0,
    max_preemptions  integer NOT NULL,
    -- Every claim, whatever its end: numbers the attempt rows.
    claims           integer NOT NULL DEFAULT 0,
    -- Not claimable before this (retry backoff).
    run_at           timestamptz NOT NULL DEFAULT now(),
    -- The lease: holder, fencing token (the attempt row id) and expiry.
    lease_holder     text,
    lease_attempt    bigint,
    lease_expires_at timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false,
    error            text,
    failure_kind     text CHECK (failure_kind IN ('build', 'infrastructure')),
    -- Sizes and SHA-256s of what was stored, once succeeded.
    artifact         jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CHECK ((state = 'running') = (lease_attempt IS NOT NULL))
);

-- The claim query walks this index: queued jobs by priority, then age.
CREATE INDEX builds_claimable ON builds (priority DESC, run_at, created_at) WHERE state = 'queued';
CREATE INDEX builds_leases ON builds (lease_expires_at) WHERE state = 'running';
CREATE INDEX builds_finished ON builds (finished_at) WHERE state IN ('succeeded', 'failed', 'cancelled');

CREATE TABLE build_attempts (
    id          bigserial PRIMARY KEY,
    build_key   text NOT NULL REFERENCES builds (key) ON DELETE CASCADE,
    attempt_no  integer NOT NULL,
    worker_id   text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    outcome     attempt_outcome,
    error       text
);
CREATE INDEX build_attempts_by_build ON build_attempts (build_key, id);

CREATE TABLE workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    recipes      text[] NOT NULL DEFAULT '{}',
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    state        worker_state NOT NULL DEFAULT 'active',
    note         text
);

-- Everything a watcher of a build sees, in order: log chunks, state changes,
-- step starts and ends, the result. The id is the SSE event id.
CREATE TABLE build_events (
    id          bigserial PRIMARY KEY,
    build_key   text NOT NULL REFERENCES builds (key) ON DELETE CASCADE,
    attempt_id  bigint,
    kind        text NOT NULL,
    data        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX build_events_by_build ON build_events (build_key, id);

-- Notifications:
--   kiln_jobs   (payload: recipe)      a job became claimable now;
--   kiln_builds (payload: "key state") a build changed state;
--   kiln_events (payload: key)         a build has new events.
CREATE FUNCTION kiln_build_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        INSERT INTO build_events (build_key, attempt_id, kind, data)
        VALUES (NEW.key, NEW.lease_attempt, 'state',
                json_build_object('state', NEW.state, 'attempts', NEW.attempts, 'error', NEW.error)::text);
        PERFORM pg_notify('kiln_builds', NEW.key || ' ' || NEW.state::text);
        IF NEW.state = 'queued' AND NEW.run_at <= now() THEN
            PERFORM pg_notify('kiln_jobs', NEW.recipe);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER builds_changed
    AFTER INSERT OR UPDATE ON builds
    FOR EACH ROW EXECUTE FUNCTION kiln_build_changed();

CREATE FUNCTION kiln_event_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kiln_events', NEW.build_key);
    RETURN NULL;
END;
$$;

CREATE TRIGGER build_events_added
    AFTER INSERT ON build_events
    FOR EACH ROW EXECUTE FUNCTION kiln_event_added();
