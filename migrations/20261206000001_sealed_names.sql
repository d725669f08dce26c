-- Bots' names are sealed in the read models as in the log (events::sealing):
-- a sealed name of 100 characters is longer than the 100 the column held.
ALTER TABLE bots MODIFY chatbot_name VARCHAR(1000) NOT NULL;
ALTER TABLE chat_list MODIFY chatbot_name VARCHAR(1000) NOT NULL;
