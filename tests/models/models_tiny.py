"""Tiny randomly initialised models, tokenizers and GGUF files built in the tests themselves:
:func:`make_tiny_model` is the one model builder of every test (``tests/conftest.py``'s
fixtures call it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CORPUS = [
    "The capital of France is Paris.",
    "Question: 3 + 4 = ? Answer: 7",
    "True and False or True is True",
    "hello world, hello tiny model",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z 0 1 2 3 4 5 6 7 8 9",
]


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on a few strings, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def tiny_config(arch: str, vocab_size: int, **overrides):
    """The config of a 2-layer model of ``arch`` (hidden size 32, 4 heads, 2 KV heads where the
    family has them); ``overrides`` replace any setting."""
    import transformers as tf

    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    with_head_dim = {**llama_like, "head_dim": 8}
    configs = {
        "llama": (tf.LlamaConfig, llama_like),
        "mistral": (tf.MistralConfig, {**llama_like, "sliding_window": None}),
        "qwen2": (tf.Qwen2Config, llama_like),
        "qwen3": (tf.Qwen3Config, with_head_dim),
        "gemma": (tf.GemmaConfig, with_head_dim),
        "gemma2": (
            tf.Gemma2Config,
            {
                **with_head_dim,
                "sliding_window": 64,
                "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0,
            },
        ),
        "gemma3": (
            tf.Gemma3TextConfig,
            {
                **with_head_dim,
                "sliding_window": 64,
                "layer_types": ["sliding_attention", "full_attention"],
            },
        ),
        "olmo2": (tf.Olmo2Config, {**llama_like, "pad_token_id": 0}),
        "smollm3": (tf.SmolLM3Config, {**llama_like, "pad_token_id": 0, "no_rope_layers": [1, 0]}),
        "phi3": (tf.Phi3Config, {**llama_like, "pad_token_id": 0, "partial_rotary_factor": 0.5}),
        "gpt2": (tf.GPT2Config, dict(n_embd=32, n_layer=2, n_head=4, n_positions=1024)),
        # Pythia's family: fused q|k|v laid out per head, partial rotary
        "gpt_neox": (
            tf.GPTNeoXConfig,
            dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=1024,
                rotary_pct=0.5,
            ),
        ),
        # GPT-Neo: a global and a local-attention layer (window in cache slots)
        "gpt_neo": (
            tf.GPTNeoConfig,
            dict(
                hidden_size=32,
                intermediate_size=64,
                num_layers=2,
                num_heads=4,
                attention_types=[[["global", "local"], 1]],
                window_size=256,
                max_position_embeddings=1024,
            ),
        ),
    }
    cls, kwargs = configs[arch]
    kwargs = {**kwargs, "vocab_size": vocab_size}
    for k, v in overrides.items():  # gpt2 names its context n_positions
        kwargs["n_positions" if arch == "gpt2" and k == "max_position_embeddings" else k] = v
    cfg = cls(**kwargs)
    return cfg


def make_tiny_model(
    arch: str, vocab_size: int, seed: int = 0, attn_implementation: str = "auto", **overrides
):
    """A model of :func:`tiny_config`, random weights from ``seed``, fp32, eval."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch, vocab_size, **overrides)
    torch.manual_seed(seed)
    if attn_implementation == "auto":
        from iclft.models.anatomy import attention_for

        attn_implementation = attention_for(cfg.model_type)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation)
    return model.float().eval()


#: the Llama of :func:`save_tiny_model` and the GGUF file: special token ids of
#: :func:`tiny_tokenizer`, a context the GGUF header states, untied output weights
GGUF_LLAMA = dict(
    max_position_embeddings=128, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False
)


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Save a tiny random Llama and its tokenizer (safetensors) to ``directory``."""
    tokenizer = tiny_tokenizer()
    model = make_tiny_model("llama", len(tokenizer), seed, **GGUF_LLAMA)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write a tiny random Llama with its tokenizer as an F32 GGUF file that transformers loads."""
    import gguf

    tokenizer = tiny_tokenizer()
    cfg = tiny_config("llama", len(tokenizer), **GGUF_LLAMA)
    vocab = tokenizer.backend_tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    import json

    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    specials = {"<unk>", "<s>", "</s>"}

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("iclft tiny test model")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<s>"])
    w.add_eos_token_id(vocab["</s>"])
    w.add_unk_token_id(vocab["<unk>"])

    rng = np.random.default_rng(seed)
    h, f, v = cfg.hidden_size, cfg.intermediate_size, len(tokens)
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(v, h))
    w.add_tensor("output_norm.weight", np.ones(h, dtype=np.float32))
    w.add_tensor("output.weight", rand(v, h))
    for i in range(cfg.num_hidden_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(h, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(h, h))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(kv, h))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(kv, h))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(h, h))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(h, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(f, h))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(f, h))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(h, f))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_wheel(directory: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """Write a minimal pure-Python wheel holding ``files`` (archive path -> bytes)."""
    import zipfile

    dist = package.replace("-", "_")
    wheel = directory / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: iclft-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name, text in meta.items():
            zf.writestr(name, text)
        record = [f"{name},," for name in [*files, *meta, f"{info}/RECORD"]]
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel
