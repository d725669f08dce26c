-- Sessions remember when they were last used (started or refreshed), so that the
-- ones whose tokens have all expired can be pruned after SESSION_RETENTION_SECS
-- (issue 18). The column has a default, so that a process of the previous
-- release, which does not set it, can still record a login during a rolling
-- deploy. MySQL 8 and MariaDB 10.11 alike.
ALTER TABLE sessions
    ADD COLUMN last_active_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    ADD KEY idx_sessions_last_active (last_active_at);

UPDATE sessions s SET last_active_at = COALESCE(
    (SELECT MAX(e.recorded_at) FROM events e
     WHERE e.stream_id = CONCAT('session-', s.session_id)
       AND e.event_type IN ('SessionStarted', 'SessionRefreshed')),
    s.created_at);
