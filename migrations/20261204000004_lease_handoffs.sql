-- A delivery that finds its conversation's lease held hands its message to the
-- holder (counting a hand-off on the lease row) instead of waiting, so waiting
-- costs a worker nothing (issue 19). The holder releases only if no hand-off came
-- since it last looked; a holder that died leaves its row to expire, and the
-- workers' sweep of expired leases takes the work over. Only holders that take
-- hand-offs (`takes_handoffs`, set by this release) are handed anything: a
-- holder of an earlier release, mid rolling deploy, would let them drop.
-- `failures` counts holders that gave up part-way in a row: past a few, the
-- oldest unanswered message is recorded as failed, so that one message that can
-- never be answered does not hold its conversation (and a model call a second).
-- MySQL 8 and MariaDB 10.11.
ALTER TABLE conversation_leases
    ADD COLUMN handoffs BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN takes_handoffs TINYINT NOT NULL DEFAULT 0,
    ADD COLUMN failures INT NOT NULL DEFAULT 0,
    ADD KEY idx_leases_expiry (expires_at);
