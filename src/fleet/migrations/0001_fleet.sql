-- The fleet's job store: jobs and their records, archives in content-addressed chunks,
-- history, lanes (leases with fencing tokens) and nodes.

-- Fleet-wide arrival numbers (a job's `seq`).
CREATE SEQUENCE dropdeploy_job_seq;

-- Archive content in chunks of at most 1 MiB, each keyed by the SHA-256 of its bytes
-- (lowercase hex): an archive sent twice, or two archives sharing chunks, store them once.
CREATE TABLE chunks (
    sha256 text PRIMARY KEY,
    data bytea NOT NULL
);

-- A whole archive, keyed by its SHA-256, and the chunks it is made of, in order.
CREATE TABLE archives (
    sha256 text PRIMARY KEY,
    bytes bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE archive_chunks (
    archive text NOT NULL REFERENCES archives (sha256) ON DELETE CASCADE,
    idx integer NOT NULL,
    chunk text NOT NULL REFERENCES chunks (sha256),
    PRIMARY KEY (archive, idx)
);

-- One row per job: its record (the spool's job.json), its archive, where it came from (the
-- node that claimed it and the dropped file's path, NULL when there is no file to place),
-- when it finished and when the origin node placed its file in done/ or failed/.
CREATE TABLE jobs (
    id text PRIMARY KEY,
    app text NOT NULL,
    seq bigint NOT NULL,
    record jsonb NOT NULL,
    archive text REFERENCES archives (sha256),
    origin_node text NOT NULL,
    origin_path text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    placed_at timestamptz
);
CREATE INDEX jobs_unfinished ON jobs (app, seq) WHERE finished_at IS NULL;
CREATE INDEX jobs_unplaced ON jobs (origin_node)
    WHERE finished_at IS NOT NULL AND placed_at IS NULL AND origin_path IS NOT NULL;

-- One history entry per finished job (the history file's line).
CREATE TABLE history (
    n bigserial PRIMARY KEY,
    job text NOT NULL UNIQUE,
    app text NOT NULL,
    entry jsonb NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX history_app ON history (app, n);

-- Who drives each app's lane, with which fencing token, until when (the database's clock).
-- A row is never deleted (a release sets expires_at to -infinity), so tokens only grow.
CREATE TABLE lanes (
    app text PRIMARY KEY,
    node text NOT NULL,
    token bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The nodes of the fleet, as they last said (heartbeat).
CREATE TABLE nodes (
    node text PRIMARY KEY,
    info jsonb NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now()
);
