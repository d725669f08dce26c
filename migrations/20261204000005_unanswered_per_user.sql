-- Counting a user's unanswered messages across all their bots (the admission
-- cap USER_MAX_UNANSWERED, issue 19) reads this index's range for
-- (user, 'pending'), whatever the user's history holds. MySQL 8 and MariaDB 10.11.
ALTER TABLE chat_history ADD KEY idx_history_user_status (user_id, status);
