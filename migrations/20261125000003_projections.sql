-- Read models. Each is rebuilt from the event log alone; `projection_checkpoint`
-- records the last global position applied, in the same transaction as the rows.

CREATE TABLE projection_checkpoint (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL
) ENGINE=InnoDB;

INSERT INTO projection_checkpoint (name, position) VALUES ('read_models', 0);

CREATE TABLE bots (
    chatbot_id BIGINT NOT NULL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    chatbot_name VARCHAR(100) NOT NULL,
    chatbot_type TINYINT NOT NULL,
    chatbot_persona TEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    deleted_at DATETIME(6) NULL,
    KEY idx_bots_user (user_id, chatbot_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row per message, user's or bot's, in conversation order (`seq` is the
-- chat stream's version of the event that produced the row).
CREATE TABLE chat_history (
    user_id BIGINT NOT NULL,
    chatbot_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    message_id CHAR(36) NOT NULL,
    reply_to CHAR(36) NULL,
    by_user TINYINT NOT NULL,
    content MEDIUMTEXT NOT NULL,
    status VARCHAR(16) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id, chatbot_id, seq),
    UNIQUE KEY uq_history_message (message_id),
    KEY idx_history_reply_to (reply_to)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The latest message of each conversation, for `chat/list`.
CREATE TABLE chat_list (
    user_id BIGINT NOT NULL,
    chatbot_id BIGINT NOT NULL,
    chatbot_name VARCHAR(100) NOT NULL,
    last_content MEDIUMTEXT NOT NULL,
    last_at DATETIME(6) NOT NULL,
    last_seq BIGINT NOT NULL,
    last_position BIGINT NOT NULL,
    PRIMARY KEY (user_id, chatbot_id),
    KEY idx_chat_list_recent (user_id, last_position)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
