"""Engines: the contract (`contract.py`), its implementations (`vllm_engine.py`,
`transformers_engine.py`, `fake.py`) and `factory.create_engine`, which imports only the one
chosen: vLLM and torch are heavy, and a machine may have one engine's dependencies and not
another's."""
