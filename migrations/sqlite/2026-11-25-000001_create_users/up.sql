-- Same tables and columns as migrations/postgres (a test compares them). `INTEGER PRIMARY KEY`
-- is SQLite's 64-bit rowid, the counterpart of PostgreSQL's BIGINT identity. Timestamps are
-- UTC text with millisecond precision, the format Diesel reads as a Timestamp.
CREATE TABLE users (
    id INTEGER PRIMARY KEY NOT NULL,
    email TEXT NOT NULL,
    display_name TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    updated_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    CONSTRAINT users_email_key UNIQUE (email)
);

-- Keeps updated_at current on every UPDATE that does not set it itself.
CREATE TRIGGER users_set_updated_at
    AFTER UPDATE ON users
    FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE users SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = NEW.id;
END;
