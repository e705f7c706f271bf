"""Write and publish a build: parquet configs in the Hub's layout, sharding, the card's
``dataset_info`` and file fingerprints (fresh ``load_dataset`` reads), and the Hub push."""
