-- The outbox counts failed publishes per row, and parks a row the broker keeps
-- refusing, so that it cannot hold back the rows behind it (issue 18). A parked
-- row stays for an operator (`worker outbox parked`, `worker outbox retry`).
-- MySQL 8 and MariaDB 10.11 alike.
ALTER TABLE outbox
    ADD COLUMN attempts INT NOT NULL DEFAULT 0,
    ADD COLUMN parked_at DATETIME(6) NULL,
    ADD COLUMN last_error VARCHAR(512) NULL,
    ADD KEY idx_outbox_parked (parked_at);
