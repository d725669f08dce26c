-- Where `worker replay encrypt-history` stands: it seals, in place, the
-- personal texts that releases before sealing wrote in the clear. One row;
-- a run resumes after `position`, and the counts add up over runs.
CREATE TABLE history_encryption (
    id TINYINT NOT NULL PRIMARY KEY,
    position BIGINT NOT NULL,
    events_sealed BIGINT NOT NULL,
    fields_sealed BIGINT NOT NULL,
    -- 0 while the views still hold texts sealed since the last rebuild in the clear.
    views_rebuilt TINYINT NOT NULL,
    updated_at DATETIME(6) NOT NULL
) ENGINE=InnoDB;
