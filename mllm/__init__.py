"""The multimodal LLM: vocabulary, location codec, processor, model with super-link queries."""
