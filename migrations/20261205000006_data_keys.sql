-- Data keys for crypto-shredding (events::sealing): each wrapped by the
-- key-encryption key (DATA_KEY_ENCRYPTION_KEY), never in the log. Deleting a
-- key's row makes everything it sealed unreadable, in every copy of the log.
CREATE TABLE data_keys (
    key_id VARCHAR(64) NOT NULL PRIMARY KEY,
    scope VARCHAR(100) NOT NULL,
    wrapped VARBINARY(128) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    KEY idx_data_keys_scope (scope, created_at)
) ENGINE=InnoDB;
