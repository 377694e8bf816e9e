CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT);
INSERT INTO audit (note) VALUES ('000002 applied');
