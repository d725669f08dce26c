-- What model calls cost (usage_daily, a read model of the usage the events
-- record): per user, UTC day, bot, kind (`reply` or `memory`) and model.
CREATE TABLE usage_daily (
    user_id BIGINT NOT NULL,
    day DATE NOT NULL,
    chatbot_id BIGINT NOT NULL,
    kind VARCHAR(8) NOT NULL,
    model VARCHAR(100) NOT NULL,
    calls BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (user_id, day, chatbot_id, kind, model)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
