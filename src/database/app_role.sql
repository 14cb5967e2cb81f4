-- Least-privilege role for the services: they may insert and read orders, nothing else.
-- Run as the database owner with psql -v app_user=..., the password set as the psql
-- variable app_password without putting it on the command line: Compose's db-init runs
-- \getenv app_password APP_PASSWORD first, scripts/local_stack.sh a \set line on stdin.
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password') \gexec
SELECT format('REVOKE ALL ON orders FROM %I', :'app_user') \gexec
SELECT format('GRANT SELECT, INSERT ON orders TO %I', :'app_user') \gexec
-- PostgreSQL grants CONNECT and TEMPORARY on every database to PUBLIC, so any role could
-- connect to every database and create temporary tables. Take both back from PUBLIC on
-- this database and on the two every server has (the owners and superusers keep theirs;
-- new databases do not copy these rights from template1). The app role then connects
-- here only, through the GRANT below. Other databases on a shared server are their
-- owners' to close the same way.
SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', datname)
FROM pg_database
WHERE datname IN (current_database(), 'postgres', 'template1')
  AND (pg_has_role(current_user, datdba, 'MEMBER')
       OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)) \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'app_user') \gexec
