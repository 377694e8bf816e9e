-- Built without blocking writers: outside a transaction (see metadata.toml).
CREATE INDEX CONCURRENTLY todos_open_idx ON todos (created_at) WHERE done_at IS NULL;
