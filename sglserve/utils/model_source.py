"""Where the model's files are, settled in the launcher before any child starts or weight is read.

- A hub id (`--model-path org/name`, `--revision`) becomes the local snapshot folder that
  huggingface_hub downloads or finds in its cache (HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE and
  HF_TOKEN as huggingface_hub reads them). Only what serving needs is fetched: configs and
  tokenizer files, then the safetensors shards the index names (so a second copy in another
  naming, such as Mistral's consolidated.safetensors, stays on the hub).
- The checkpoint's quantization is checked from its config.json alone (layers/quantization/config):
  a method we cannot run stops the start-up with one line.

Local folders and .gguf files pass through unchanged. Torch-free: the launcher stays fast.
"""

from __future__ import annotations

import json
import logging
import os
from typing import List, Optional

from sglserve.layers.quantization.config import QuantizationError, check_model_quantization, get_quant_scheme

logger = logging.getLogger(__name__)

# What serving reads besides the weights: config, generation config, tokenizer (HF json,
# sentencepiece, tiktoken, BPE vocab/merges) and chat templates
META_PATTERNS = ["*.json", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt", "*.jinja"]
WEIGHT_INDEX = "model.safetensors.index.json"


class ModelSourceError(ValueError):
    """The model's files cannot be had; the message is one line."""


def is_hub_id(path: str) -> bool:
    """'org/name' that is not an existing local path (the test ServerArgs validates with)."""
    from sglserve.server_args import looks_like_hub_id

    return not os.path.exists(path) and looks_like_hub_id(path)


def _download(repo_id: str, revision: Optional[str], patterns: List[str]) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub import constants, errors

    where = f"{repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except errors.GatedRepoError:
        raise ModelSourceError(f"the hub model {where} is gated: accept its terms on huggingface.co and set HF_TOKEN") from None
    except errors.RepositoryNotFoundError:
        raise ModelSourceError(f"the hub model {where} does not exist (or is private: set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise ModelSourceError(f"the hub model {repo_id!r} has no revision {revision!r}") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, errors.HfHubHTTPError, OSError) as e:
        cache = constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE:
            raise ModelSourceError(f"the hub model {where} is not in the cache {cache} and HF_HUB_OFFLINE is set: "
                                   "download it once online, or pass a local --model-path") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSourceError(f"cannot download the hub model {where} (cache {cache}): {reason}") from None


def resolve_hub_model(repo_id: str, revision: Optional[str], weights: bool = True) -> str:
    """The local snapshot folder of `repo_id` with configs, tokenizer files and (weights=True)
    the safetensors shards; ModelSourceError when it cannot be had or holds no model."""
    folder = _download(repo_id, revision, META_PATTERNS)
    if weights:
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ModelSourceError(f"the hub model {repo_id!r} has no config.json: not a transformers model repo")
        index = os.path.join(folder, WEIGHT_INDEX)
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        else:
            shards = ["*.safetensors"]
        folder = _download(repo_id, revision, shards)
        if not any(name.endswith(".safetensors") for name in os.listdir(folder)):
            raise ModelSourceError(f"the hub model {repo_id!r} has no *.safetensors weights (only safetensors "
                                   "repos are served from the hub; pass a local .gguf file for GGUF)")
    logger.info("hub model %s%s -> %s", repo_id, f"@{revision}" if revision else "", folder)
    return folder


def prepare_model_source(server_args) -> None:
    """Resolve hub ids in --model-path / --tokenizer-path to local folders (in place) and check
    the checkpoint's quantization. Raises ModelSourceError or QuantizationError (one line each)."""
    if is_hub_id(server_args.model_path):  # dummy weights need only the config
        hub_id = server_args.model_path
        server_args.model_path = resolve_hub_model(hub_id, server_args.revision, server_args.load_format != "dummy")
        if server_args.tokenizer_path == hub_id:
            server_args.tokenizer_path = server_args.model_path
    if server_args.tokenizer_path and is_hub_id(server_args.tokenizer_path):
        server_args.tokenizer_path = resolve_hub_model(server_args.tokenizer_path, None, weights=False)
    if server_args.is_gguf:  # no quantization_config: GGUF weights are dequantized at load
        get_quant_scheme(None, server_args.quantization, server_args.load_format)
    else:
        check_model_quantization(server_args.model_path, server_args.quantization, server_args.load_format)


__all__ = ["ModelSourceError", "QuantizationError", "prepare_model_source", "resolve_hub_model", "is_hub_id"]
