#!/usr/bin/env python3
"""Reference outputs from Hugging Face transformers / sentence-transformers for parity tests.

    reference.py embed  --model DIR --input TEXTS.jsonl --output OUT.json [--batch-size 16] [--fail-on-warning]
    reference.py rerank --model DIR --input PAIRS.jsonl --output OUT.json [--max-length N] [--fail-on-warning]

Run with HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1; models are always read from local directories.

`--fail-on-warning` records every python `warnings` warning and every logging record at WARNING or
above (root, `transformers`, `sentence_transformers`, `huggingface_hub` loggers) emitted while the
model and tokenizer are LOADED; if there is any, they are printed and the command exits with 3.

Warning-free loading, found by experiment with sentence-transformers 6.2.0, transformers 5.23.0,
torch 2.11 (save with the libraries, then delete / edit files and reload):

(a) SentenceTransformer = Transformer + Pooling + Normalize (BERT)
  * modules.json: REQUIRED. Without it ST 6.2 logs only at INFO level and silently builds
    Transformer + mean Pooling with NO Normalize (wrong output, no warning). Legacy type names
    ("sentence_transformers.models.Transformer" / ".Pooling" / ".Normalize", paths "", "1_Pooling",
    "2_Normalize") load without warnings, as do the 6.2 names that save() writes
    ("sentence_transformers.base.modules.transformer.Transformer",
     "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
     "sentence_transformers.base.modules.normalize.Normalize").
  * config.json: needs "model_type": "bert" (error without it) plus the BertConfig sizes;
    "architectures" is optional (["BertModel"] is what save() writes).
  * model.safetensors (or pytorch_model.bin): keys with or without the "bert." prefix both load
    silently (e.g. "embeddings.word_embeddings.weight" or "bert.embeddings.word_embeddings.weight").
    "pooler.dense.weight" / "pooler.dense.bias" MUST be present, otherwise a
    "BertModel LOAD REPORT ... pooler.dense.* | MISSING" warning (from transformers.modeling_utils).
    Extra keys (e.g. "cls.predictions.bias") give an "UNEXPECTED" LOAD REPORT warning. An
    "embeddings.position_ids" buffer is tolerated. LayerNorm ".gamma"/".beta" names are renamed
    silently (in .bin and in safetensors). fp16 tensors are upcast silently (config dtype float32).
  * tokenizer: tokenizer.json OR vocab.txt. With neither, transformers silently builds a 5-token
    vocabulary (all [UNK]) and NOTHING warns. tokenizer_config.json ({"do_lower_case": true,
    "model_max_length": N, "tokenizer_class": "BertTokenizer"} is enough); special_tokens_map.json
    is not needed.
  * sentence_bert_config.json: optional for warnings, but it holds "max_seq_length" (legacy
    {"max_seq_length": 256, "do_lower_case": false} still honoured). ST 6.2 save() no longer writes
    max_seq_length there; it writes {"transformer_task": "feature-extraction", "modality_config":
    {...}, "module_output_name": "token_embeddings"} and puts max_seq_length into
    tokenizer_config.json "model_max_length". If neither gives it, max_seq_length becomes 512
    (silently): write max_seq_length in sentence_bert_config.json AND model_max_length.
  * 1_Pooling/config.json: REQUIRED (TypeError without it). Legacy keys ("word_embedding_dimension",
    "pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens") or 6.2 keys ("embedding_dimension", "pooling_mode":
    "mean"|"cls"|"max"|"mean_sqrt_len_tokens", "include_prompt": true), both without warnings.
  * 2_Normalize/: may be empty or absent (6.2 save() writes config.json {"module_input_name":
    "sentence_embedding", "module_output_name": "sentence_embedding"}).
  * config_sentence_transformers.json: optional (absent -> model_type "SentenceTransformer"). If
    present, "__version__.sentence_transformers" must not be newer than the installed ST
    ("This model was created with Sentence Transformers version X, but you're using ..." warning).
    6.2 save() writes {"__version__": {...}, "model_type": "SentenceTransformer", "prompts":
    {"query": "", "document": ""}, "default_prompt_name": null, "similarity_fn_name": "cosine"}.
  * README.md: optional.
  * ST 6.2 does NOT strip() input texts; for BERT WordPiece it makes no difference (the basic
    tokenizer drops leading/trailing whitespace and control chars; checked on parity_texts.jsonl).

(b) CrossEncoder with BertForSequenceClassification, num_labels=1
  * Plain HF layout (no modules.json): config.json + weights + tokenizer loads warning-free.
    config.json needs "model_type": "bert" and num_labels=1, i.e. "id2label": {"0": "LABEL_0"}
    (or "num_labels": 1). Without them the model gets 2 labels -> "MISMATCH" LOAD REPORT warning
    and a RuntimeError. "architectures" optional (["BertForSequenceClassification"]).
  * Activation, first match wins: config_sentence_transformers.json "activation_fn" (what
    CrossEncoder.save_pretrained writes in 6.2), then config.json
    "sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid", "version": ...}
    (ST 4/5 convention; 6.2 still reads it but no longer writes it), then config.json
    "sbert_ce_default_activation_function" (< v4), else Sigmoid for num_labels == 1 (silently).
    A path not starting with "torch." warns ("... is not trusted, using default ...").
  * Weights: "bert.<encoder keys>" + "bert.pooler.dense.{weight,bias}" + "classifier.{weight,bias}".
    Missing pooler or classifier -> MISSING LOAD REPORT warning. Encoder keys WITHOUT the "bert."
    prefix are also mapped silently (transformers 5). safetensors or pytorch_model.bin both fine.
  * Tokenizer: tokenizer.json or vocab.txt (+ tokenizer_config.json with "do_lower_case": true and
    "model_max_length"; the latter is CrossEncoder.max_length, default 512 = max_position_embeddings).
    special_tokens_map.json optional. The old hub layout (pytorch_model.bin, vocab.txt,
    tokenizer_config.json, special_tokens_map.json, sbert_ce_default_activation_function) is clean.
  * ST 6.2 layout (what CrossEncoder.save_pretrained writes: modules.json with one Transformer,
    sentence_bert_config.json {"transformer_task": "sequence-classification", "modality_config":
    {"text": {"method": "forward", "method_output_name": "logits"}}, "module_output_name": "scores"},
    config_sentence_transformers.json {"model_type": "CrossEncoder", "activation_fn": ...}): if
    modules.json is present, config_sentence_transformers.json with "model_type": "CrossEncoder" is
    REQUIRED ("Converting SentenceTransformer model ... to CrossEncoder." warning otherwise) and so
    is that sentence_bert_config.json (otherwise BertModel is loaded: UNEXPECTED classifier.* and
    a KeyError).
  * CrossEncoder.predict truncates pairs with "longest_first"; the HF logits below use
    "only_second" (fallback "longest_first"). They differ only when the query takes more than half
    of the budget (p37 at max_length 128).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import warnings
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with a cargo build the
# default spin-wait made fixture generation ~5x slower. Does not change results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

transformers.utils.logging.disable_progress_bar()

LOAD_WARNING_EXIT = 3
CAPTURED_LOGGERS = ("", "transformers", "sentence_transformers", "huggingface_hub")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LoadWarningsError(RuntimeError):
    """Raised when loading a model emitted warnings and fail_on_warning was requested."""

    def __init__(self, model_dir: str, messages: list[str]):
        self.model_dir = model_dir
        self.messages = messages
        super().__init__(f"{len(messages)} warning(s) while loading {model_dir}:\n" + "\n".join(messages))


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # A record reaches every ancestor logger we attached to: keep it once.
        if not any(record is seen for seen in self.records):
            self.records.append(record)


@contextlib.contextmanager
def capture_warnings() -> Iterator[list[str]]:
    """Collect python warnings and WARNING+ log records emitted inside the block.

    The yielded list is filled when the block exits. Note: transformers' `warning_once` only fires
    the first time in a process, so capture the first load of a model.
    """
    recorder = _Recorder()
    touched = []
    for name in CAPTURED_LOGGERS:
        lg = logging.getLogger(name)
        touched.append((lg, lg.level))
        lg.addHandler(recorder)
        if lg.getEffectiveLevel() > logging.WARNING:
            lg.setLevel(logging.WARNING)
    messages: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        for lg, level in touched:
            lg.removeHandler(recorder)
            lg.setLevel(level)
    for r in recorder.records:
        messages.append(f"[{r.levelname} {r.name}] {_ANSI.sub('', r.getMessage())}")
    for w in caught:
        messages.append(f"[{w.category.__name__}] {w.message} ({w.filename}:{w.lineno})")


def _check(model_dir: str, messages: list[str], fail_on_warning: bool) -> None:
    if messages:
        for m in messages:
            print(f"load warning ({model_dir}): {m}", file=sys.stderr)
        if fail_on_warning:
            raise LoadWarningsError(model_dir, messages)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
        f.write("\n")


# --------------------------------------------------------------------------- embed


def load_sentence_transformer(model_dir: str, fail_on_warning: bool = False):
    from sentence_transformers import SentenceTransformer

    with capture_warnings() as messages:
        model = SentenceTransformer(model_dir, device="cpu")
    _check(model_dir, messages, fail_on_warning)
    model.eval()
    return model, messages


def embed_texts(model, texts: list[str], batch_size: int = 16) -> np.ndarray:
    with torch.inference_mode():
        emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def embed_file(model_dir: str, input_path: str, output_path: str, batch_size: int = 16,
               fail_on_warning: bool = False) -> dict[str, Any]:
    rows = read_jsonl(input_path)
    model, messages = load_sentence_transformer(model_dir, fail_on_warning)
    emb = embed_texts(model, [r["text"] for r in rows], batch_size)
    out = {
        "ids": [r["id"] for r in rows],
        "embeddings": emb.tolist(),  # float32 -> exact python floats
        "dim": int(emb.shape[1]),
        "max_seq_length": int(model.max_seq_length),
    }
    write_json(output_path, out)
    return {"n": len(rows), "dim": out["dim"], "load_warnings": messages}


# --------------------------------------------------------------------------- rerank


def default_max_length(tokenizer, config) -> int:
    limit = int(getattr(config, "max_position_embeddings", 512))
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is None or mml > 1_000_000:
        return limit
    return min(int(mml), limit)


def load_hf_classifier(model_dir: str, fail_on_warning: bool = False):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with capture_warnings() as messages:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    _check(model_dir, messages, fail_on_warning)
    model.eval()
    return tokenizer, model, messages


def hf_logits(tokenizer, model, pairs: list[tuple[str, str]], max_length: int) -> dict[str, list]:
    """Raw logits, one pair at a time, passage-only truncation (longest_first if the query alone is too long)."""
    logits, strategies, lengths, same_as_predict = [], [], [], []
    with torch.inference_mode():
        for query, passage in pairs:
            strategy = "only_second"
            try:
                enc = tokenizer(query, passage, truncation=strategy, max_length=max_length,
                                padding=True, return_tensors="pt")
            except Exception:  # query alone does not fit: tokenizers raises a truncation error
                strategy = "longest_first"
                enc = tokenizer(query, passage, truncation=strategy, max_length=max_length,
                                padding=True, return_tensors="pt")
            # CrossEncoder.predict truncates longest_first: its score is comparable with
            # act(logit) only where both strategies give the same tokens.
            predict_ids = tokenizer(query, passage, truncation="longest_first", max_length=max_length)["input_ids"]
            same_as_predict.append(predict_ids == enc["input_ids"][0].tolist())
            out = model(**enc).logits[0].float()
            logits.append(out.item() if out.numel() == 1 else out.tolist())
            strategies.append(strategy)
            lengths.append(int(enc["input_ids"].shape[1]))
    return {"logits": logits, "truncation": strategies, "num_tokens": lengths,
            "same_tokens_as_predict": same_as_predict}


def load_cross_encoder(model_dir: str, max_length: int, fail_on_warning: bool = False):
    from sentence_transformers import CrossEncoder

    with capture_warnings() as messages:
        ce = CrossEncoder(model_dir, device="cpu", max_length=max_length)
    _check(model_dir, messages, fail_on_warning)
    ce.eval()
    return ce, messages


def cross_encoder_scores(ce, pairs: list[tuple[str, str]], batch_size: int = 16) -> list:
    with torch.inference_mode():
        scores = ce.predict(pairs, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(scores, dtype=np.float32).tolist()


def rerank_file(model_dir: str, input_path: str, output_path: str, max_length: int | None = None,
                fail_on_warning: bool = False) -> dict[str, Any]:
    from sentence_transformers.util import fullname

    rows = read_jsonl(input_path)
    pairs = [(r["query"], r["passage"]) for r in rows]
    tokenizer, model, messages = load_hf_classifier(model_dir, fail_on_warning)
    if max_length is None:
        max_length = default_max_length(tokenizer, model.config)
    hf = hf_logits(tokenizer, model, pairs, max_length)
    del model
    ce, ce_messages = load_cross_encoder(model_dir, max_length, fail_on_warning)
    scores = cross_encoder_scores(ce, pairs)
    out = {
        "ids": [r["id"] for r in rows],
        "logits": hf["logits"],
        "scores": scores,
        "max_length": max_length,
        "activation_fn": fullname(ce.activation_fn),
        "truncation": hf["truncation"],
        "num_tokens": hf["num_tokens"],
        "same_tokens_as_predict": hf["same_tokens_as_predict"],
    }
    write_json(output_path, out)
    return {"n": len(rows), "max_length": max_length, "activation_fn": out["activation_fn"],
            "fallbacks": out["truncation"].count("longest_first"), "load_warnings": messages + ce_messages}


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("embed", help="SentenceTransformer.encode reference embeddings")
    e.add_argument("--model", required=True)
    e.add_argument("--input", required=True, help="jsonl with {id, text}")
    e.add_argument("--output", required=True)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--fail-on-warning", action="store_true")

    r = sub.add_parser("rerank", help="cross-encoder reference logits and scores")
    r.add_argument("--model", required=True)
    r.add_argument("--input", required=True, help="jsonl with {id, query, passage}")
    r.add_argument("--output", required=True)
    r.add_argument("--max-length", type=int, default=None)
    r.add_argument("--fail-on-warning", action="store_true")

    args = ap.parse_args(argv)
    if not os.path.isdir(args.model):
        print(f"model directory not found: {args.model}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    try:
        if args.cmd == "embed":
            info = embed_file(args.model, args.input, args.output, args.batch_size, args.fail_on_warning)
            print(f"embed: {info['n']} texts, dim {info['dim']} -> {args.output}")
        else:
            info = rerank_file(args.model, args.input, args.output, args.max_length, args.fail_on_warning)
            print(f"rerank: {info['n']} pairs, max_length {info['max_length']}, "
                  f"activation {info['activation_fn']}, {info['fallbacks']} longest_first fallback(s) -> {args.output}")
    except LoadWarningsError as err:
        print(f"FAIL: {err}", file=sys.stderr)
        return LOAD_WARNING_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
