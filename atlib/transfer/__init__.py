"""Transfer: fine-tuning a source model on a target in the paper's three modes.

`finetune` is the job; `inputs` checks the source model and target and reads the target's splits,
`modes` says what each mode trains, `cache` is mode 0's cached fast path.

May import every stage up to atlib.distance.
"""
