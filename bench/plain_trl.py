"""The plain TRL script the app is measured against: same model, data and settings, no app.

python bench/plain_trl.py MODEL_DIR ROWS.jsonl STEPS BATCH MAX_LENGTH   (prints one JSON line)
"""

import itertools
import json
import sys
import time

import torch

torch.set_num_threads(1)
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

model_dir, rows_path, steps, batch, max_length = sys.argv[1:6]
with open(rows_path) as f:
    rows = [json.loads(line) for line in f]
data = Dataset.from_list(
    [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
)
t_load = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model = get_peft_model(
    model,
    LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    ),
)
load_s = time.perf_counter() - t_load
steps_log = []


class Clock(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            steps_log.append((state.global_step, time.perf_counter(), state.num_input_tokens_seen))


config = SFTConfig(
    output_dir="/tmp/plain-trl",
    max_steps=int(steps),
    per_device_train_batch_size=int(batch),
    learning_rate=2e-4,
    max_length=int(max_length),
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    disable_tqdm=True,
    activation_checkpointing=False,
    use_cpu=True,
    bf16=False,
    include_num_input_tokens_seen="non_padding",
    seed=42,
)
trainer = SFTTrainer(
    model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()]
)
t_train = time.perf_counter()
trainer.train()
# Per step, as the app computes it: tokens since the last log / time since the last log.
per_step = [(k - k0) / (t - t0) for (_, t0, k0), (_, t, k) in itertools.pairwise(steps_log)]
print(
    json.dumps(
        {"tokens_per_s": per_step, "load_s": load_s, "first_step_s": steps_log[0][1] - t_train}
    )
)
