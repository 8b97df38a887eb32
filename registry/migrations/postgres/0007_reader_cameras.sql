-- Video linkage (雪亮工程, issue #17): the cameras nearest a reader, as JSON
-- ([{"id", "name", "url_template"}]; see registry/src/cameras.rs).
ALTER TABLE readers ADD COLUMN cameras TEXT NOT NULL DEFAULT '[]';
