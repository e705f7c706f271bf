"""Read a build's rows: source readers (BGE jsonl/parquet, Tevatron, Hub ids), validation with
file/line/query_id errors, and which rows a ``--shard i/N`` build owns."""
