-- Fixes from the outside review (issue 12). MySQL 8 and MariaDB 10.11 alike.

-- Idempotency keys are compared byte for byte by the appender; the unique index must
-- agree, or "ABC-KEY" after "abc-key" passes the check and then fails the batch.
ALTER TABLE events
    MODIFY idempotency_key VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;

-- The relay claims overdue rows with a short UPDATE (a token and an expiry on the
-- database's clock) instead of holding row locks while it publishes.
ALTER TABLE outbox
    ADD COLUMN claim_token CHAR(32) NULL,
    ADD COLUMN claimed_until DATETIME(6) NULL,
    ADD KEY idx_outbox_claim (claim_token);

-- The oldest unanswered message of a conversation, whatever its age.
ALTER TABLE chat_history
    ADD KEY idx_history_pending (user_id, chatbot_id, status, seq);

-- One answerer per conversation at a time, across every worker process. A holder
-- renews its lease while it works; a crashed holder's lease simply expires.
CREATE TABLE conversation_leases (
    stream_id VARCHAR(128) NOT NULL PRIMARY KEY,
    holder CHAR(32) NOT NULL,
    expires_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Emails are unique, case-insensitively (the column's collation), and an absent
-- email is NULL rather than a value, since many accounts have none. Accounts that
-- shared an email could never log in with it; the oldest keeps it.
ALTER TABLE users MODIFY email VARCHAR(254) NULL DEFAULT NULL;
UPDATE users SET email = NULL WHERE email = '';
UPDATE users u
    JOIN (SELECT MIN(id) AS keep_id, email FROM users WHERE email IS NOT NULL GROUP BY email) k
      ON u.email = k.email AND u.id <> k.keep_id
    SET u.email = NULL;
ALTER TABLE users DROP KEY idx_users_email, ADD UNIQUE KEY uq_users_email (email);

-- Login sessions, a read model of the `session-<id>` streams: the refresh token a
-- session may still spend, and whether it was revoked.
CREATE TABLE sessions (
    session_id CHAR(36) NOT NULL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    refresh_jti CHAR(32) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    revoked_at DATETIME(6) NULL,
    revoked_reason VARCHAR(64) NULL,
    KEY idx_sessions_user (user_id, revoked_at),
    KEY idx_sessions_revoked (revoked_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
