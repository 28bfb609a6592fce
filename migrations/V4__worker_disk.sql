-- Limits of a build, the worker's side.
--
-- The farm's identity: one row, made by the first worker that asks (not
-- here, so a database cloned from a migrated template gets its own).
-- Workers label their step containers and work directories with it, so a
-- worker sweeping orphans on a host shared with another farm (another
-- database) leaves that farm's alone.
CREATE TABLE farm (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    id  text NOT NULL
);

-- A worker's free disk space on its work directory's filesystem (MiB), and
-- whether that is below its `worker.min_free_disk_mb` (it claims nothing then).
ALTER TABLE workers
    ADD COLUMN disk_free_mb bigint,
    ADD COLUMN disk_low boolean NOT NULL DEFAULT false;
