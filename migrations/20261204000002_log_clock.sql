-- The log's own clock: every append takes `recorded_at` from the database inside
-- the head-row lock, never earlier than the last event's, so that it rises with
-- the position whatever the appending processes' clocks say (issue 18).
-- MySQL 8 and MariaDB 10.11 alike.
ALTER TABLE event_log_head ADD COLUMN recorded_at DATETIME(6) NULL;

UPDATE event_log_head SET recorded_at = (SELECT MAX(recorded_at) FROM events) WHERE id = 1;
