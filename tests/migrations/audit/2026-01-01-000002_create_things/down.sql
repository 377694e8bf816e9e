DROP TABLE things;
DELETE FROM audit WHERE note = '000002 applied';
