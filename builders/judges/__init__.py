"""Everything between a prompt and a stored answer: endpoint backends (TGI, OpenAI-compatible, local),
the fleet that routes among them, the annotator (retries, parse-retries, resume), the judgment
store, prompt shortening to the input limit, prompt scoring and the cost ledger."""
