-- The bot stream's version each bots row reflects, so that a reply can record
-- which state of its bot (persona, settings) it was written with; existing rows
-- take the version of their stream's last event.
ALTER TABLE bots ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
UPDATE bots SET version = (
    SELECT COALESCE(MAX(e.stream_version), 1) FROM events e
    WHERE e.stream_id = CONCAT('bot-', bots.chatbot_id)
);
