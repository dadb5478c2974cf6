-- The writer claim: the one leader allowed to write rows. A leader writes
-- only while it holds the claim, and every writing transaction first reads
-- this row for its holder and epoch (fencing): a serializable transaction
-- that read an older epoch cannot commit after a newer epoch's writes, so
-- a leader that lost the claim commits no row. expires_at is set from the
-- database's clock (now()), never from a daemon's; a standby leader may
-- take the claim over once it is released (holder '') or expired.
CREATE TABLE IF NOT EXISTS kss_writer (
    id         INT         PRIMARY KEY CHECK (id = 1),
    holder     TEXT        NOT NULL,
    epoch      BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

INSERT INTO kss_writer (id, holder, epoch, expires_at) VALUES (1, '', 0, '1970-01-01 00:00:00+00') ON CONFLICT (id) DO NOTHING;

-- The epoch of the claim under which each row was written: epochs never
-- go down in version (commit) order.
ALTER TABLE kss_secrets ADD COLUMN IF NOT EXISTS writer_epoch BIGINT NOT NULL DEFAULT 0;
