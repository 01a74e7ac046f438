-- The fleet's API budget: one row per region and API token (never the token: its SHA-256).
-- `sent` holds when the requests of the last window took their places (a sliding window, as
-- the platform counts); `paused_until` is set by a 429 that any node met; `taker` is the
-- random number of the last take that got a place, which tells that take it did.
CREATE TABLE dropdeploy_budget (
    region text NOT NULL,
    token_sha256 text NOT NULL,
    sent timestamptz[] NOT NULL DEFAULT '{}',
    paused_until timestamptz,
    taker bigint,
    PRIMARY KEY (region, token_sha256)
);
