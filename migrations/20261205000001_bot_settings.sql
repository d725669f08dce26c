-- A bot's model settings, chosen with bots/update (BotUpdated). NULL: never
-- chosen, so the worker's defaults apply (OPENAI_MODEL, the model's own
-- temperature, no cap on a reply's tokens).
ALTER TABLE bots
    ADD COLUMN model VARCHAR(100) NULL,
    ADD COLUMN temperature DOUBLE NULL,
    ADD COLUMN max_reply_tokens INT UNSIGNED NULL;
