-- The seq window itself, not only its highest seq: which of the 1,024 seqs below the
-- highest were processed (17 little-endian u64 words, a ring indexed by seq % 1025). With
-- NATS JetStream another node takes a reader over when its node dies, and a batch the dead
-- node processed may be redelivered: the new owner loads this window first, so it takes
-- such a batch once, and still takes the ones the dead node never processed.
ALTER TABLE reader_seqs ADD COLUMN window_bits BYTEA;
