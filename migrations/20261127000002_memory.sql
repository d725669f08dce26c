-- Long-term memory: a read model of the memory events on each chat stream
-- (ConversationSummarized, UserProfileUpdated, MemoryErased).
-- `*_covers` is the chat stream version a text covers; a text only replaces one that
-- covers less, and nothing at or below `erased_through` (a MemoryErased's version)
-- is ever remembered again.
CREATE TABLE conversation_memory (
    user_id BIGINT NOT NULL,
    chatbot_id BIGINT NOT NULL,
    summary MEDIUMTEXT NULL,
    summary_covers BIGINT NULL,
    profile MEDIUMTEXT NULL,
    profile_covers BIGINT NULL,
    erased_through BIGINT NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NULL,
    PRIMARY KEY (user_id, chatbot_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
