-- Daily token budgets (USER_DAILY_TOKEN_BUDGET). A model call reserves the most
-- it can cost before it starts, and gives the reservation back once its usage is
-- recorded (usage_daily); a worker that dies leaves its reservation to expire.
-- Not a read model: operational state, like the conversation leases.
CREATE TABLE token_reservations (
    reservation_id CHAR(36) NOT NULL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    KEY idx_reservations_user (user_id, expires_at)
) ENGINE=InnoDB;

-- One row per user with a budget, locked while a reservation is weighed, so
-- that concurrent calls are admitted one after another; it also records the day
-- a call was refused for the budget (and the budget then), which the api then
-- refuses new messages for.
CREATE TABLE token_budgets (
    user_id BIGINT NOT NULL PRIMARY KEY,
    exhausted_on DATE NULL,
    exhausted_budget BIGINT NULL
) ENGINE=InnoDB;
