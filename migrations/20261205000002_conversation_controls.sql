-- Regeneration (ReplyRegenerationRequested): which attempt at answering a user
-- message a row belongs to. A user message holds the attempt it waits for or
-- was last answered by; a reply, the attempt it is. Every row written before
-- regeneration existed is the first attempt.
ALTER TABLE chat_history ADD COLUMN attempt INT NOT NULL DEFAULT 1;
