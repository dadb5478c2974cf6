-- Least-privilege database roles for kube-secret-sync: step 3 of 3.
--
-- Run as kss_owner once `kube-secret-sync migrate` (step 2) has created the
-- tables, and again after an upgrade that adds tables:
--
--   psql -v ON_ERROR_STOP=1 "postgresql://kss_owner@db.example.com/kss?sslmode=verify-full" \
--     -f docs/database-grants.sql
--
-- docs/database-roles.sql (step 1) explains the roles and what each
-- statement of the daemon needs.

-- Step 3: as kss_owner (or an administrator), after the migrations, and
-- again after an upgrade that adds tables.

GRANT SELECT, INSERT, UPDATE ON TABLE kss_secrets TO kss_leader;
GRANT SELECT, UPDATE ON TABLE kss_version TO kss_leader;
GRANT SELECT ON TABLE kss_schema_migrations TO kss_leader;
GRANT SELECT, UPDATE ON TABLE kss_writer TO kss_leader;

GRANT SELECT ON TABLE kss_secrets, kss_version, kss_schema_migrations TO kss_follower;
-- The writer claim, for `kube-secret-sync status` (who writes, until when).
GRANT SELECT ON TABLE kss_writer TO kss_follower;
