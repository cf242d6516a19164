"""Any upstream that speaks OpenAI's REST API (OpenAI, Azure, vLLM, llama.cpp, Ollama, OVMS, …)."""
