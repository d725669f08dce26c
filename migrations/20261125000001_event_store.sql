-- The event log, its position counter, and the outbox.
-- Written for both MySQL 8 and MariaDB 10.11: no RETURNING, no CHECK-dependent logic.

-- One row that hands out global positions. Appenders take its row lock inside their
-- transaction, so positions become visible strictly in order and never leave holes
-- (AUTO_INCREMENT would do neither: see DESIGN.md).
CREATE TABLE event_log_head (
    id TINYINT NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL
) ENGINE=InnoDB;

INSERT INTO event_log_head (id, position) VALUES (1, 0);

CREATE TABLE events (
    global_position BIGINT NOT NULL PRIMARY KEY,
    event_id CHAR(36) NOT NULL,
    stream_id VARCHAR(128) NOT NULL,
    stream_version BIGINT NOT NULL,
    event_type VARCHAR(64) NOT NULL,
    schema_version SMALLINT NOT NULL,
    payload JSON NOT NULL,
    metadata JSON NOT NULL,
    -- Set when the same command must never be recorded twice (a reply to one message,
    -- a client's retried POST). NULLs do not collide in a UNIQUE index.
    idempotency_key VARCHAR(191) NULL,
    recorded_at DATETIME(6) NOT NULL,
    UNIQUE KEY uq_event_id (event_id),
    UNIQUE KEY uq_stream_version (stream_id, stream_version),
    UNIQUE KEY uq_idempotency_key (idempotency_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Written in the same transaction as the event; the relay marks a row sent only after
-- the broker confirmed it.
CREATE TABLE outbox (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    global_position BIGINT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    sent_at DATETIME(6) NULL,
    KEY idx_outbox_unsent (sent_at, id),
    KEY idx_outbox_position (global_position)
) ENGINE=InnoDB;

-- Integer bot ids, handed out by the database rather than the clock.
CREATE TABLE bot_id_sequence (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY
) ENGINE=InnoDB;
