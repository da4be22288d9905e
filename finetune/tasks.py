"""Task types: what a base model can be trained for, and the transformers class that loads it.

A decoder (Llama, SmolLM2, ...) learns chat, instructions or plain text (causal LM); an
encoder-decoder (T5, BART) maps an input to a target (seq2seq); an encoder (BERT, MiniLM, ...)
learns to classify text. The task follows from the model, and the dataset must fit it.
"""

from __future__ import annotations

from typing import Any

CAUSAL_LM = "CAUSAL_LM"
SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
SEQ_CLS = "SEQ_CLS"
TASKS = {
    CAUSAL_LM: "causal LM (chat, instructions, plain text)",
    SEQ_2_SEQ_LM: "seq2seq (input -> target)",
    SEQ_CLS: "sequence classification (text -> label)",
}
# Encoder-only model types: they have no generation head, so they classify.
ENCODERS = frozenset(
    {
        "albert",
        "bert",
        "camembert",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "modernbert",
        "mpnet",
        "roberta",
        "xlm-roberta",
    }
)


def model_task(config: Any) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return SEQ_2_SEQ_LM
    if config.model_type in ENCODERS:
        return SEQ_CLS
    return CAUSAL_LM


# transformers' Auto class of each task (by name: importing transformers is slow)
AUTO_CLASSES = {
    CAUSAL_LM: "AutoModelForCausalLM",
    SEQ_2_SEQ_LM: "AutoModelForSeq2SeqLM",
    SEQ_CLS: "AutoModelForSequenceClassification",
}


def auto_class(task: str):
    import transformers

    return getattr(transformers, AUTO_CLASSES[task])


def label_kwargs(labels: list[str] | None) -> dict[str, Any]:
    """from_pretrained / from_config arguments that size a classification head."""
    if not labels:
        return {}
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
