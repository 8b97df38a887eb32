-- How a reader's MQTT payloads are written: 'sealed' (the native contract) or an unsealed
-- format an operator chose for a reader that cannot seal ('json', 'impinj', 'zebra').
ALTER TABLE readers ADD COLUMN format TEXT NOT NULL DEFAULT 'sealed';
