-- Least-privilege database roles for kube-secret-sync: step 1 of 3.
--
-- The three steps, each as a different role, in this order (the README's
-- "The database" gives the commands; TestDatabaseGrantsCommands runs them
-- as written):
--
--   1. as an administrator: this file, docs/database-roles.sql (the roles);
--   2. as kss_owner: kube-secret-sync migrate (the tables);
--   3. as kss_owner: docs/database-grants.sql (the grants on the tables,
--      which exist only after step 2).
--
-- Both files run as they are on PostgreSQL (psql -v ON_ERROR_STOP=1 -f) and
-- CockroachDB (cockroach sql -f): plain statements only, no psql
-- meta-commands, no DO blocks, no PostgreSQL-only syntax.
--
-- Three roles:
--
--   kss_owner     owns the tables and applies the migrations. Used only to
--                 install or upgrade the schema, never by a running daemon.
--   kss_leader    the leader's daemon: reads and upserts kss_secrets and
--                 bumps the version counter. It cannot delete rows, change
--                 the schema or drop anything.
--   kss_follower  every follower's daemon: SELECT only. Its cursor lives in
--                 its own cluster, so it writes nothing to the database.
--
-- What each statement of the daemon needs (db.go):
--
--   leader    SELECT namespace, name, hash, … FROM kss_secrets     SELECT on kss_secrets
--             INSERT … ON CONFLICT DO UPDATE … WHERE hash <> …    INSERT, UPDATE, SELECT on kss_secrets
--             UPDATE kss_version SET version = version + 1 …     UPDATE, SELECT on kss_version
--               RETURNING version
--             SELECT name FROM kss_schema_migrations             SELECT on kss_schema_migrations
--             UPDATE kss_writer SET holder, epoch, expires_at …   UPDATE, SELECT on kss_writer
--               (take, renew and release the writer claim; every
--               write transaction reads it: failover.go)
--   follower  SELECT … FROM kss_secrets (pull, full pass)        SELECT on kss_secrets
--             SELECT version FROM kss_version                    SELECT on kss_version
--             SELECT name FROM kss_schema_migrations             SELECT on kss_schema_migrations
--
-- `kube-secret-sync rotate-key` (re-encrypting rows after a key rotation)
-- runs with the leader's role: it reads and updates kss_secrets and bumps
-- kss_version, nothing more. No daemon ever deletes a row: a deleted
-- Secret becomes a tombstone row, which is an UPDATE. kss_migration_lock is
-- used only while migrations are applied, by the owner.
--
-- Privileges are granted on whole tables: CockroachDB has no column
-- privileges, and every column of kss_secrets is written by the leader's
-- upsert anyway.
--
-- Use a database of its own for kube-secret-sync (step 1 changes the
-- privileges of its public schema for every role).


-- Step 1: as an administrator, in the kube-secret-sync database, before the
-- first start.
--
-- The roles log in; give each a password afterwards without writing it into
-- a file or a shell history: in psql, `\password kss_leader`; in CockroachDB,
-- `ALTER ROLE kss_leader WITH PASSWORD …` from an interactive session, or
-- client certificates instead of passwords. CREATE ROLE fails if a role
-- exists already: this step is run once.

CREATE ROLE kss_owner WITH LOGIN;
CREATE ROLE kss_leader WITH LOGIN;
CREATE ROLE kss_follower WITH LOGIN;

-- PostgreSQL up to 14 and CockroachDB let every role create tables in the
-- public schema. Only the owner may: without this the leader and the
-- followers could still add tables.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO kss_owner;
GRANT USAGE ON SCHEMA public TO kss_leader, kss_follower;

-- If the database's CONNECT privilege was revoked from PUBLIC, also:
--   GRANT CONNECT ON DATABASE kss TO kss_owner, kss_leader, kss_follower;


-- Step 2 (not SQL): as kss_owner, apply the migrations.
--
-- kube-secret-sync applies the migrations embedded in its binary, with the
-- role its DSN names, before anything else (at the start of the daemon and
-- of `kube-secret-sync rotate-key`). As the owner, run them on their own:
--
--   DSN='postgresql://kss_owner:…@db.example.com:26257/kss?sslmode=verify-full' \
--     kube-secret-sync migrate
--
-- It needs only DSN (no encryption key, no Kubernetes) and exits 0 once the
-- schema is up to date.
--
-- A daemon whose role may not change the schema and that finds migrations
-- pending waits: it logs "database not ready" and retries until the owner
-- has applied them. Upgrade the schema first, then roll out the daemons.
-- A table added by a later migration needs its grants added to step 3,
-- docs/database-grants.sql.
