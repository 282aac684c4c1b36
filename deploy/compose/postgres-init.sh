#!/bin/bash
# Runs once, when the postgres container initializes its data directory: the roles pgwarden
# logs in as, and the `shop` database with the sample customers and orders.
set -euo pipefail

: "${APP_RW_PASSWORD:?set APP_RW_PASSWORD}"
: "${APP_RO_PASSWORD:?set APP_RO_PASSWORD}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v rw="$APP_RW_PASSWORD" -v ro="$APP_RO_PASSWORD" <<'SQL'
CREATE ROLE app_rw LOGIN PASSWORD :'rw';
CREATE ROLE app_ro LOGIN PASSWORD :'ro';
CREATE DATABASE shop OWNER app_rw;
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname shop <<'SQL'
SET ROLE app_rw;
\i /sample/sample_schema.sql
GRANT SELECT ON ALL TABLES IN SCHEMA public TO app_ro;
SQL
