-- Migration 001: create the orders table.
-- Format: the section after "-- migrate:up" moves the schema forward, the section
-- after "-- migrate:down" rolls it back. foodpipe.db.migration_sections() splits them.

-- migrate:up
CREATE TABLE IF NOT EXISTS orders (
    order_id      VARCHAR(32)   PRIMARY KEY,            -- idempotency key: a redelivered order is a no-op
    customer_id   VARCHAR(16)   NOT NULL,
    items         JSONB         NOT NULL,
    total_amount  NUMERIC(10,2) NOT NULL CONSTRAINT orders_total_amount_positive CHECK (total_amount > 0),
    status        VARCHAR(16)   NOT NULL,
    created_at    TIMESTAMPTZ   NOT NULL,               -- when the producer created the order
    processed_at  TIMESTAMPTZ   NOT NULL DEFAULT now()  -- when the consumer's transaction wrote it
);
CREATE INDEX IF NOT EXISTS idx_orders_created_at  ON orders (created_at);
CREATE INDEX IF NOT EXISTS idx_orders_customer_id ON orders (customer_id);

-- migrate:down
DROP TABLE IF EXISTS orders;
