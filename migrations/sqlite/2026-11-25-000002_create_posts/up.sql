CREATE TABLE posts (
    id INTEGER PRIMARY KEY NOT NULL,
    author_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    published BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    published_at TIMESTAMP
);

-- Serves "a user's posts, newest first" and its keyset pagination.
CREATE INDEX posts_author_id_created_at_idx ON posts (author_id, created_at);
