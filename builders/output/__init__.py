"""Write and publish a build: parquet configs in the Hub's layout, sharding, and the Hub push."""
