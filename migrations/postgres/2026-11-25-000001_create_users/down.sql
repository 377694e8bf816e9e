DROP TRIGGER users_set_updated_at ON users;
DROP FUNCTION datalayer_set_updated_at();
DROP TABLE users;
