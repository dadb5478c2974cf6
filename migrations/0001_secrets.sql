-- One row per synced Secret. Only namespace and name are readable: the
-- Secret's type, data, labels and annotations are inside ciphertext
-- (AES-256-GCM, see crypto.go), and hash is an HMAC keyed from the
-- encryption key, so a database reader cannot test guesses.
--
-- version orders rows for the followers' incremental pull. It is taken from
-- kss_version inside the writing transaction, so version order equals commit
-- order; it is also bound into the ciphertext's associated data, so a
-- database writer cannot replay an old row under a newer version.
CREATE TABLE IF NOT EXISTS kss_secrets (
    namespace      TEXT        NOT NULL,
    name           TEXT        NOT NULL,
    ciphertext     BYTEA       NOT NULL,
    key_id         TEXT        NOT NULL,
    hash           BYTEA       NOT NULL,
    tombstone      BOOLEAN     NOT NULL DEFAULT false,
    version        BIGINT      NOT NULL,
    source_cluster TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, name)
);

-- The followers page by (version, namespace, name).
CREATE INDEX IF NOT EXISTS kss_secrets_version_idx ON kss_secrets (version, namespace, name);

-- The single-row version counter. Every writing transaction increments it
-- first: the row lock (PostgreSQL) or the serializable conflict
-- (CockroachDB) makes writers commit in version order. A sequence would not:
-- its values are handed out at nextval(), not at commit.
CREATE TABLE IF NOT EXISTS kss_version (
    id      INT    PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);

INSERT INTO kss_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
