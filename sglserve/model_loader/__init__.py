from sglserve.model_loader.loader import get_model

__all__ = ["get_model"]
