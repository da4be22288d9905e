"""The plain TRL script the app is measured against: same model, data and settings, no app.

python bench/plain_trl.py MODEL_DIR ROWS.jsonl STEPS BATCH MAX_LENGTH   (prints one JSON line)
    [--minutes M --out DIR --lr LR --r R --alpha A --targets q_proj,k_proj,...
     --eval ROWS.jsonl --packing --warmup W --schedule NAME]

What a practitioner writes by hand: PEFT's LoraConfig, TRL's SFTTrainer on prompt/completion
rows, one torch thread. With --minutes, a callback stops training when the time is up (STEPS is
then only a cap): a script cannot know in advance how many steps fit, so its learning rate stays
constant after the warm-up (--schedule constant_with_warmup, the default then).
"""

import argparse
import itertools
import json
import time

import torch

torch.set_num_threads(1)
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

parser = argparse.ArgumentParser()
for name in ("model_dir", "rows_path"):
    parser.add_argument(name)
for name in ("steps", "batch", "max_length"):
    parser.add_argument(name, type=int)
parser.add_argument("--minutes", type=float)
parser.add_argument("--out")
parser.add_argument("--lr", type=float, default=2e-4)
parser.add_argument("--r", type=int, default=16)
parser.add_argument("--alpha", type=int, default=32)
parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
parser.add_argument("--eval")
parser.add_argument("--packing", action="store_true")
parser.add_argument("--warmup", type=float, default=0.0, help="below 1: a share of STEPS")
parser.add_argument("--schedule")
args = parser.parse_args()


def prompt_completion(path: str) -> Dataset:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return Dataset.from_list(
        [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    )


data = prompt_completion(args.rows_path)
eval_data = prompt_completion(args.eval) if args.eval else None
t_load = time.perf_counter()
tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
model = get_peft_model(
    model,
    LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=0.05,
        target_modules=args.targets.split(","),
        task_type="CAUSAL_LM",
    ),
)
load_s = time.perf_counter() - t_load
steps_log = []
evals = []


class Clock(TrainerCallback):
    def on_train_begin(self, args_, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args_, state, control, **kwargs):
        if args.minutes and time.perf_counter() - self.start >= args.minutes * 60:
            control.should_training_stop = True

    def on_log(self, args_, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            steps_log.append((state.global_step, time.perf_counter(), state.num_input_tokens_seen))
        if logs and "eval_loss" in logs:
            evals.append((state.global_step, logs["eval_loss"]))


config = SFTConfig(
    output_dir="/tmp/plain-trl",
    max_steps=args.steps,
    per_device_train_batch_size=args.batch,
    per_device_eval_batch_size=args.batch,
    learning_rate=args.lr,
    lr_scheduler_type=args.schedule or ("constant_with_warmup" if args.minutes else "linear"),
    warmup_steps=args.warmup if args.warmup < 1 else int(args.warmup),
    max_length=args.max_length,
    packing=args.packing,
    logging_steps=1,
    eval_strategy="steps" if eval_data is not None else "no",
    eval_steps=max(1, args.steps // 4),
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
    model=model,
    args=config,
    train_dataset=data,
    eval_dataset=eval_data,
    processing_class=tokenizer,
    callbacks=[Clock()],
)
t_train = time.perf_counter()
trainer.train()
train_s = time.perf_counter() - t_train
final_eval = trainer.evaluate()["eval_loss"] if eval_data is not None else None
if args.out:
    model.save_pretrained(args.out)
# Per step, as the app computes it: tokens since the last log / time since the last log.
per_step = [(k - k0) / (t - t0) for (_, t0, k0), (_, t, k) in itertools.pairwise(steps_log)]
print(
    json.dumps(
        {
            "tokens_per_s": per_step,
            "load_s": load_s,
            "first_step_s": steps_log[0][1] - t_train,
            "steps": trainer.state.global_step,
            "train_s": train_s,
            "tokens": trainer.state.num_input_tokens_seen,
            "evals": evals,
            "final_eval_loss": final_eval,
        }
    )
)
