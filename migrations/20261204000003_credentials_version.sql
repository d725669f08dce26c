-- A user's credentials version rises with every password change, in the same
-- UPDATE as the new hash, and every token carries the version it was issued
-- under: a token of an older version is refused, however its login raced the
-- change (issue 18). `credentials_changed_at` lets every api reload recent
-- changes it may have missed. MySQL 8 and MariaDB 10.11 alike.
ALTER TABLE users
    ADD COLUMN credentials_version INT UNSIGNED NOT NULL DEFAULT 0,
    ADD COLUMN credentials_changed_at DATETIME(6) NULL,
    ADD KEY idx_users_credentials_changed (credentials_changed_at);
