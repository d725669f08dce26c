-- A bot's model settings, chosen with bots/update (BotUpdated); NULL means the
-- worker's defaults (OPENAI_MODEL, the model's own temperature, MAX_REPLY_TOKENS).
ALTER TABLE bots
    ADD COLUMN model VARCHAR(100) NULL,
    ADD COLUMN temperature DOUBLE NULL,
    ADD COLUMN max_reply_tokens INT UNSIGNED NULL;
