"""The OpenAI-compatible HTTP gateway: the aiohttp app (`gateway`) and OpenAI's wire format
(`openai`: requests into SpawnSpecs, results into responses and stream chunks)."""
