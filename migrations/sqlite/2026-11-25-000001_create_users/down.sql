DROP TRIGGER users_set_updated_at;
DROP TABLE users;
