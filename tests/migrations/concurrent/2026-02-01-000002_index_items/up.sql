-- Two statements, each refused inside a transaction block: run one at a time.
CREATE INDEX CONCURRENTLY items_x_idx ON items (x);
CREATE INDEX CONCURRENTLY items_id_x_idx ON items (id, x);
