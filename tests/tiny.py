"""A tiny Llama with its own trained tokenizer and a ChatML template, built in about a second."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    words = [
        "what",
        "is",
        "the",
        "answer",
        "hello",
        "how",
        "are",
        "you",
        "fine",
        "thanks",
        "a",
        "an",
        "of",
        "to",
        "in",
        "plus",
        "minus",
        "times",
    ]
    lines = [f"What is {a} + {b}? {a + b}" for a in range(10, 40) for b in range(10, 20)]
    return lines + [" ".join(words)] * 20 + ["system user assistant"] * 5


def _tokenizer(path: Path, chat: bool = True):
    """A byte-level BPE tokenizer trained on the corpus, with ChatML's special tokens (and its
    chat template for a chat model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    if chat:
        tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)
    return tokenizer


def build_tiny_model(path: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_t5(path: Path, seed: int = 0) -> Path:
    """An encoder-decoder (seq2seq), T5-shaped: linear layers q, k, v, o, wi, wo."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _tokenizer(path, chat=False)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_bert(path: Path, seed: int = 0) -> Path:
    """An encoder (BERT-shaped, for classification): linear layers query, key, value, dense."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = _tokenizer(path, chat=False)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path
