#!/usr/bin/env python3
"""Generate the reference fixtures for the Rust parity tests into tests/fixtures/generated/.

Everything is rebuilt from scratch in a temporary sibling folder which is renamed into place only
when complete, so a half-written folder never looks like a finished one. Random models are seeded.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python scripts/make_fixtures.py [--student DIR]

Fixtures (each reference file is computed by LOADING the saved directory, i.e. from the same files
the Rust side reads):
  minilm_embeddings.json      student model (all-MiniLM-L6-v2) on parity_texts.jsonl
  tiny_bi_{mean,cls,max,mean_sqrt}/   one random 2-layer BERT (hidden 32), Pooling mode differs,
                              + Normalize (not for mean_sqrt: normalised it equals mean),
                              SentenceTransformer.save(); embeddings.json inside
  tiny_bi_gamma_beta/         tiny_bi_mean as pytorch_model.bin, keys "bert."-prefixed and
                              LayerNorm .weight/.bias renamed .gamma/.beta; embeddings.json = tiny_bi_mean's
  ce_msmarco/                 random BertForSequenceClassification with the ms-marco-MiniLM-L-6-v2 config,
                              hub layout (pytorch_model.bin + slow tokenizer files, Identity activation in
                              config.json "sbert_ce_default_activation_function"); logits.json (512), logits_128.json
  ce_sigmoid/                 small random BertForSequenceClassification saved by CrossEncoder.save_pretrained
                              (activation Sigmoid), fast tokenizer; logits.json (max_length 128)
  versions.json               library versions
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with a cargo build the
# default spin-wait made fixture generation ~5x slower. Does not change results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import reference  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
TEXTS = FIXTURES / "parity_texts.jsonl"
PAIRS = FIXTURES / "parity_pairs.jsonl"
TMP_PREFIX = ".generated-tmp-"
SEED = 20240601

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            vocab_size=30522, max_position_embeddings=512)
# cross-encoder/ms-marco-MiniLM-L-6-v2 architecture
MSMARCO = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
               vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu",
               layer_norm_eps=1e-12, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
               initializer_range=0.02, pad_token_id=0)
SPECIAL = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
           "mask_token": "[MASK]"}


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def summary(name: str, path: Path, t0: float, detail: str, warnings_: list[str]) -> None:
    w = f"load warnings: {len(warnings_)}" + (" <-- CHECK" if warnings_ else "")
    print(f"{name:<24} {human(dir_size(path)):>8}  {time.time() - t0:5.1f}s  {detail}; {w}", flush=True)


def randomize(model: torch.nn.Module, gen: torch.Generator, std: float) -> None:
    """Re-initialise a random BERT so that its outputs depend clearly on the input.

    With the default HF init (std 0.02) a small random BERT attends almost uniformly and gives nearly
    the same logit for every pair, which would hide bugs. Here: Linear/Embedding weights ~ N(0, std),
    Linear biases ~ N(0, 0.05), LayerNorm gamma ~ 1 + N(0, 0.1) and beta ~ N(0, 0.1) (so that a
    dropped or mis-mapped gamma/beta/bias changes the output), classifier weights ~ N(0, 2/sqrt(H)).
    """
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))
            elif isinstance(mod, torch.nn.Linear):
                w_std = 2.0 / mod.in_features ** 0.5 if name == "classifier" else std
                mod.weight.copy_(w_std * torch.randn(mod.weight.shape, generator=gen))
                if mod.bias is not None:
                    mod.bias.copy_(0.05 * torch.randn(mod.bias.shape, generator=gen))
            elif isinstance(mod, torch.nn.Embedding):
                mod.weight.copy_(std * torch.randn(mod.weight.shape, generator=gen))


def check_student(student: Path) -> None:
    ok = (student / "config.json").is_file() and (student / "model.safetensors").is_file() and (
        (student / "tokenizer.json").is_file() or (student / "vocab.txt").is_file())
    if not ok:
        sys.exit(f"error: student model not found at {student} (need config.json, model.safetensors, "
                 f"tokenizer.json/vocab.txt): run make setup")


def manual_mean_embeddings(model_dir: Path, texts: list[str], max_len: int) -> np.ndarray:
    """Plain transformers: tokenize (truncate at max_len), BertModel, masked mean, L2 normalise."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for t in texts:
            enc = tok(t, truncation=True, max_length=max_len, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(v, dim=-1)[0].numpy())
    return np.stack(out)


# --------------------------------------------------------------------------- fixtures


def make_minilm(student: Path, out: Path) -> None:
    t0 = time.time()
    target = out / "minilm_embeddings.json"
    info = reference.embed_file(str(student), str(TEXTS), str(target), batch_size=16)
    # Self-check: ST semantics == tokenizer(truncation, max_seq_length) + mean pooling + normalise.
    ref = json.loads(target.read_text())
    texts = [r["text"] for r in reference.read_jsonl(str(TEXTS))]
    manual = manual_mean_embeddings(student, texts, ref["max_seq_length"])
    diff = float(np.abs(manual - np.asarray(ref["embeddings"], dtype=np.float32)).max())
    if diff > 1e-5:
        sys.exit(f"error: student self-check failed, ST vs manual mean pooling max diff {diff:.3g}")
    summary("minilm_embeddings.json", target, t0,
            f"{info['n']} texts, dim {info['dim']}, max_seq_length {ref['max_seq_length']}, "
            f"manual check {diff:.1e}", info["load_warnings"])


def make_tiny_bi(student: Path, out: Path, work: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer, BertConfig, BertModel

    t0 = time.time()
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    bert = BertModel(BertConfig(**TINY)).eval()
    randomize(bert, gen, std=0.2)
    hf_dir = work / "tiny_bert"
    bert.save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(student).save_pretrained(hf_dir)

    modes = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt": "mean_sqrt_len_tokens"}
    for suffix, mode in modes.items():
        t1 = time.time() if suffix != "mean" else t0
        d = out / f"tiny_bi_{suffix}"
        # A fresh Transformer per model: saving one runs the tokenizer (model card), which rewrites the
        # truncation/padding block of the tokenizer.json it would save next.
        transformer = Transformer(str(hf_dir), max_seq_length=64)
        modules = [transformer, Pooling(TINY["hidden_size"], mode)]
        if mode != "mean_sqrt_len_tokens":
            # mean_sqrt_len is mean * sqrt(n): after Normalize it would equal tiny_bi_mean exactly.
            modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu")
        st.save(str(d))
        shutil.copy(student / "vocab.txt", d / "vocab.txt")  # MiniLM tokenizer files: tokenizer.json + vocab.txt
        info = reference.embed_file(str(d), str(TEXTS), str(d / "embeddings.json"), batch_size=16)
        norm = "" if mode == "mean_sqrt_len_tokens" else " + Normalize"
        summary(f"tiny_bi_{suffix}/", d, t1, f"pooling {mode}{norm}, dim {info['dim']}, {info['n']} texts",
                info["load_warnings"])

    # Same weights as tiny_bi_mean, legacy key names, pytorch_model.bin.
    t1 = time.time()
    src, d = out / "tiny_bi_mean", out / "tiny_bi_gamma_beta"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("model.safetensors"))
    from safetensors.torch import load_file

    renamed = {}
    for k, v in load_file(src / "model.safetensors").items():
        if ".LayerNorm." in k:
            k = k.replace(".LayerNorm.weight", ".LayerNorm.gamma").replace(".LayerNorm.bias", ".LayerNorm.beta")
        renamed["bert." + k] = v.clone().contiguous()
    torch.save(renamed, d / "pytorch_model.bin")
    # Self-check: sentence-transformers reads the renamed checkpoint to the same embeddings.
    model, warns = reference.load_sentence_transformer(str(d))
    texts = [r["text"] for r in reference.read_jsonl(str(TEXTS))]
    got = reference.embed_texts(model, texts)
    want = np.asarray(json.loads((src / "embeddings.json").read_text())["embeddings"], dtype=np.float32)
    diff = float(np.abs(got - want).max())
    if diff > 1e-6:
        sys.exit(f"error: tiny_bi_gamma_beta does not reproduce tiny_bi_mean (max diff {diff:.3g})")
    n_gb = sum(k.endswith((".gamma", ".beta")) for k in renamed)
    summary("tiny_bi_gamma_beta/", d, t1, f"{len(renamed)} keys ({n_gb} gamma/beta), ST reload diff {diff:.1e}",
            warns)


def write_slow_tokenizer(student: Path, d: Path, model_max_length: int) -> None:
    """vocab.txt + tokenizer_config.json + special_tokens_map.json, as older hub repos ship it."""
    shutil.copy(student / "vocab.txt", d / "vocab.txt")
    cfg = {"do_lower_case": True, "do_basic_tokenize": True, "never_split": None, **SPECIAL,
           "tokenize_chinese_chars": True, "strip_accents": None, "model_max_length": model_max_length,
           "tokenizer_class": "BertTokenizer"}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (d / "special_tokens_map.json").write_text(json.dumps(SPECIAL) + "\n")


def check_slow_tokenizer(d: Path) -> int:
    """The pure-python BertTokenizerLegacy and AutoTokenizer must agree on every text and pair."""
    import transformers
    from transformers import AutoTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # "overflowing tokens are not returned" noise
    try:
        return _compare_tokenizers(AutoTokenizer.from_pretrained(d),
                                   BertTokenizerLegacy(vocab_file=str(d / "vocab.txt"), do_lower_case=True,
                                                       model_max_length=512))
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def _compare_tokenizers(auto, slow) -> int:
    pairs = reference.read_jsonl(str(PAIRS))
    for r in pairs:
        a = auto(r["query"], r["passage"], truncation="longest_first", max_length=512)["input_ids"]
        b = slow(r["query"], r["passage"], truncation="longest_first", max_length=512)["input_ids"]
        if a != b:
            sys.exit(f"error: slow and fast tokenizers disagree on pair {r['id']}")
    texts = reference.read_jsonl(str(TEXTS))
    for r in texts:
        if auto(r["text"])["input_ids"] != slow(r["text"])["input_ids"]:
            sys.exit(f"error: slow and fast tokenizers disagree on text {r['id']}")
    return len(pairs) + len(texts)


def make_ce_msmarco(student: Path, out: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    t0 = time.time()
    d = out / "ce_msmarco"
    d.mkdir()
    torch.manual_seed(SEED + 1)
    gen = torch.Generator().manual_seed(SEED + 1)
    config = BertConfig(**MSMARCO, num_labels=1, id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0})
    config.architectures = ["BertForSequenceClassification"]
    config.sbert_ce_default_activation_function = "torch.nn.modules.linear.Identity"
    model = BertForSequenceClassification(config).eval()
    randomize(model, gen, std=0.1)  # config keeps initializer_range 0.02 as on the hub
    config.save_pretrained(d)
    # transformers 5 only writes safetensors; the old hub checkpoint is a torch.save'd state dict.
    torch.save({k: v.clone().contiguous() for k, v in model.state_dict().items()}, d / "pytorch_model.bin")
    write_slow_tokenizer(student, d, 512)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["sbert_ce_default_activation_function"] == "torch.nn.modules.linear.Identity", cfg
    assert cfg["id2label"] == {"0": "LABEL_0"}, cfg["id2label"]
    n = check_slow_tokenizer(d)

    info = reference.rerank_file(str(d), str(PAIRS), str(d / "logits.json"), max_length=512)
    info128 = reference.rerank_file(str(d), str(PAIRS), str(d / "logits_128.json"), max_length=128)
    summary("ce_msmarco/", d, t0,
            f"{info['n']} pairs @512 and @128 ({info128['fallbacks']} longest_first fallback at 128), "
            f"activation {info['activation_fn'].rsplit('.', 1)[-1]}, slow==fast tokenizer on {n} inputs",
            info["load_warnings"] + info128["load_warnings"])


def make_ce_sigmoid(student: Path, out: Path, work: Path) -> None:
    import sentence_transformers
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    t0 = time.time()
    d = out / "ce_sigmoid"
    torch.manual_seed(SEED + 2)
    gen = torch.Generator().manual_seed(SEED + 2)
    model = BertForSequenceClassification(BertConfig(**TINY, num_labels=1)).eval()
    randomize(model, gen, std=0.2)
    hf_dir = work / "tiny_ce"
    model.save_pretrained(hf_dir)
    AutoTokenizer.from_pretrained(student, model_max_length=128).save_pretrained(hf_dir)
    ce = CrossEncoder(str(hf_dir), device="cpu", activation_fn=torch.nn.Sigmoid(), max_length=128)
    ce.save_pretrained(str(d))
    # sentence-transformers 6.2 stores the activation only in config_sentence_transformers.json; add
    # the ST 4/5 config.json convention as well (6.2 still reads it), consistent with the former.
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text())
    st_cfg = json.loads((d / "config_sentence_transformers.json").read_text())
    assert st_cfg.get("activation_fn") == "torch.nn.modules.activation.Sigmoid", st_cfg
    cfg.setdefault("sentence_transformers", {"activation_fn": "torch.nn.modules.activation.Sigmoid",
                                             "version": sentence_transformers.__version__})
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    info = reference.rerank_file(str(d), str(PAIRS), str(d / "logits.json"), max_length=128)
    if not info["activation_fn"].endswith("Sigmoid"):
        sys.exit(f"error: ce_sigmoid loaded with activation {info['activation_fn']}")
    summary("ce_sigmoid/", d, t0, f"{info['n']} pairs @128 ({info['fallbacks']} longest_first fallback), "
            f"activation {info['activation_fn'].rsplit('.', 1)[-1]}", info["load_warnings"])


def write_versions(out: Path) -> None:
    import sentence_transformers
    import tokenizers
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "sentence_transformers": sentence_transformers.__version__, "tokenizers": tokenizers.__version__,
                "numpy": np.__version__, "python": sys.version.split()[0], "seed": SEED,
                "parity_texts_sha256": hashlib.sha256(TEXTS.read_bytes()).hexdigest(),
                "parity_pairs_sha256": hashlib.sha256(PAIRS.read_bytes()).hexdigest()}
    (out / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    print(f"{'versions.json':<24} {human(dir_size(out / 'versions.json')):>8}  torch {versions['torch']}, "
          f"transformers {versions['transformers']}, sentence-transformers {versions['sentence_transformers']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="models/all-MiniLM-L6-v2",
                    help="all-MiniLM-L6-v2 directory (relative paths are relative to the repo root)")
    ap.add_argument("--out", default=str(FIXTURES / "generated"), help="output folder (replaced)")
    args = ap.parse_args()

    student = Path(args.student)
    if not student.is_absolute():
        student = ROOT / student
    check_student(student)
    out_final = Path(args.out).resolve()
    out_final.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_final.parent.glob(TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out_final.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="distill-fixtures-work-") as work_dir:
            work = Path(work_dir)
            write_versions(tmp)
            make_minilm(student, tmp)
            make_tiny_bi(student, tmp, work)
            make_ce_msmarco(student, tmp)
            make_ce_sigmoid(student, tmp, work)
        old = None
        if out_final.exists():
            old = out_final.parent / f"{TMP_PREFIX}old-{os.getpid()}"
            out_final.rename(old)
        tmp.rename(out_final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"fixtures written to {out_final} ({human(dir_size(out_final))}) in {time.time() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
