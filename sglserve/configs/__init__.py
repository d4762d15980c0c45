from sglserve.configs.model_config import ModelConfig, get_rope_config

__all__ = ["ModelConfig", "get_rope_config"]
