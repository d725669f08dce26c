-- A delivery that finds its conversation's lease held hands its message to the
-- holder (counting a hand-off on the lease row) instead of waiting, so waiting
-- costs a worker nothing (issue 19). The holder releases only if no hand-off came
-- since it last looked; a holder that died leaves its row to expire, and the
-- workers' sweep of expired leases takes the work over. MySQL 8 and MariaDB 10.11.
ALTER TABLE conversation_leases
    ADD COLUMN handoffs BIGINT NOT NULL DEFAULT 0,
    ADD KEY idx_leases_expiry (expires_at);
