-- foodpipe database initialisation.
--
-- Applied by PostgreSQL's /docker-entrypoint-initdb.d in Compose and by
-- scripts/local_stack.sh without Docker. It must stay identical in effect to
-- migrations/001_create_orders_table.sql (forward); tests/integration/test_schema.py
-- checks that both, and the SQLAlchemy table in src/foodpipe/db.py, agree.
--
-- One row per order. order_id is the primary key, which is what makes the consumer's
-- write idempotent: Kafka delivers at least once, and INSERT ... ON CONFLICT (order_id)
-- DO NOTHING turns a redelivery into a no-op, so the table holds each order exactly once.

CREATE TABLE IF NOT EXISTS orders (
    order_id      VARCHAR(32)   PRIMARY KEY,
    customer_id   VARCHAR(16)   NOT NULL,
    items         JSONB         NOT NULL,
    total_amount  NUMERIC(10,2) NOT NULL CONSTRAINT orders_total_amount_positive CHECK (total_amount > 0),
    status        VARCHAR(16)   NOT NULL,
    created_at    TIMESTAMPTZ   NOT NULL,
    processed_at  TIMESTAMPTZ   NOT NULL DEFAULT now()
);

-- Time-range queries ("orders in the last hour") and per-customer lookups.
CREATE INDEX IF NOT EXISTS idx_orders_created_at  ON orders (created_at);
CREATE INDEX IF NOT EXISTS idx_orders_customer_id ON orders (customer_id);

-- Sample queries:
--   SELECT count(*), sum(total_amount) FROM orders WHERE created_at > now() - interval '1 hour';
--   SELECT customer_id, count(*) FROM orders GROUP BY customer_id ORDER BY 2 DESC LIMIT 10;
--   SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY processed_at - created_at) FROM orders;
