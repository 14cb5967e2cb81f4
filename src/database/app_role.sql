-- Least-privilege role for the services: they may insert and read orders, nothing else.
-- Run as the database owner with psql -v app_user=... -v app_password=...
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_user') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'app_user', :'app_password') \gexec
SELECT format('REVOKE ALL ON orders FROM %I', :'app_user') \gexec
SELECT format('GRANT SELECT, INSERT ON orders TO %I', :'app_user') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'app_user') \gexec
