-- migrations/0001_jobs.sql: the job queue (DESIGN.md "The service"). Forward-only; never edit after merge.
-- seq orders jobs (FIFO claim, list cursor); id is the public, unguessable name.
CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    idem_key         TEXT    UNIQUE,            -- Idempotency-Key header, NULL when absent
    spec             TEXT    NOT NULL,          -- validated job spec, defaults filled (JSON)
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    stage            TEXT,                      -- downloading, loading, ... while running
    progress         REAL    NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0, -- counted at claim time
    max_attempts     INTEGER NOT NULL DEFAULT 3,
    recoveries       INTEGER NOT NULL DEFAULT 0, -- requeued because the daemon itself died
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    wake_at          INTEGER NOT NULL DEFAULT 0, -- unix ms; a queued job is claimable from then (retry backoff)
    worker           TEXT,                      -- boot id + slot of the claiming process
    created_at       INTEGER NOT NULL,          -- unix ms
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    error_rc         INTEGER,                   -- enum slm_rc (frozen numbers)
    error_msg        TEXT,
    metrics          TEXT                       -- JSON from job_run
);
CREATE INDEX jobs_state_seq ON jobs (state, seq);

CREATE TABLE events (
    job_seq  INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    n        INTEGER NOT NULL,                  -- 1, 2, ... per job
    at       INTEGER NOT NULL,                  -- unix ms
    kind     TEXT    NOT NULL,                  -- state, progress, log
    stage    TEXT,
    progress REAL,
    message  TEXT    NOT NULL,
    PRIMARY KEY (job_seq, n)
) WITHOUT ROWID;
