-- API tokens of a private farm (`api.auth.mode: tokens`), made and revoked
-- with `kiln-janitor token create|revoke`, and the build quota they carry.

CREATE TABLE api_tokens (
    id          bigserial PRIMARY KEY,
    -- Who or what holds it, for people: "ci", "alice's laptop".
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- Any of 'download', 'submit', 'admin'.
    scopes      text[] NOT NULL CHECK (scopes <@ ARRAY['download', 'submit', 'admin']::text[]),
    -- SHA-256 of the whole token (`kiln_` and 64 hex digits: 256 random
    -- bits). A plain fast hash is enough here: slow, salted hashes (argon2,
    -- bcrypt) protect guessable passwords from a stolen table, but nobody can
    -- search a space of 2^256 secrets whatever the hash costs; a fast hash
    -- keeps the lookup of every request cheap, and a stolen table still
    -- yields no usable token. Unique: the lookup is by this column.
    secret_hash bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    -- Updated at most about once a minute per API process.
    last_used   timestamptz
);

-- Who caused a build to be queued (NULL: anonymous, the bootstrap admin
-- token, or a build from before tokens): what the concurrent-build quota of
-- a token counts.
ALTER TABLE builds ADD COLUMN token_id bigint REFERENCES api_tokens (id) ON DELETE SET NULL;
CREATE INDEX builds_active_by_token ON builds (token_id) WHERE state IN ('queued', 'running');

-- Notification kiln_tokens (payload: the token's id) when a token is revoked
-- or removed, so every API drops it from its cache at once.
CREATE FUNCTION kiln_token_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('kiln_tokens', OLD.id::text);
    ELSIF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL THEN
        PERFORM pg_notify('kiln_tokens', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_tokens_revoked
    AFTER UPDATE OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION kiln_token_revoked();
