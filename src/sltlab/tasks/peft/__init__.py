"""Parameter-efficient fine-tuning of a pretrained BERT-family model: full, BitFit, LayerNorm-only, random
subset and Fisher-selected LayerNorm subsets (ValizadehAslani & Liang, "LayerNorm: a key component in
parameter-efficient fine-tuning"; issue 7), and binary masks over the frozen pretrained weights (issue 13).

Masks on pretrained weights (`mask`, `mask+ln`; Zhao et al. 2020, "Masking as an efficient alternative to
finetuning"): every Linear weight of the encoder's blocks (not the embeddings) gets an edge-popup supermask
(`sltlab.tickets.supermask`): the top-k of learned scores is kept, with the straight-through gradient dL/ds =
dL/dW_eff * W. The kept fraction follows a cubic schedule from 1 (every weight kept, so the first forward is the
pretrained model's, bit for bit) down to the density target `fraction` (default 0.9) at half the steps, then stays
there. Scores start at |W|, so the first weights dropped are the smallest, until the learned scores take over.
`mask` trains the scores and the head; `mask+ln` also the LayerNorm gain and bias: the LayerNorm-integrated ticket
on a pretrained model. What a method must store is recorded with every run: its trained floats and, for masks,
the mask bits as range-coded by the ticket artifact coder.

Every run saves what it trained in its artifact folder (`trained.safetensors`: the full tensors that hold a
trained scalar; `masks.bin`: the coded masks; `trained.json`: the manifest with checksums). `load_run_model`
rebuilds the trained model from the pretrained one and that folder; `export_run` writes ln / ln-fisher runs as a
Hugging Face `peft` LN-tuning adapter and every other run as a plain state-dict diff (`load_diff`).

Why parameter-level gradient masks: a method such as "the top 20% of LayerNorm scalars by Fisher information"
trains part of a tensor. Turning requires_grad on for the tensor and multiplying its gradient by a 0/1 mask
keeps Adam's moments of the frozen scalars at exactly zero, so their update is exactly zero; weight decay is
applied by us through the same mask (the optimiser's own decay is off), so a frozen scalar is bit-identical
after training. The trainable count of a run is therefore the number of True entries of its masks, exactly.

One run = one (task, method, fraction, mask source, lr, seed) cell, recorded in the store as kind "peft". The
lr grid is the paper's: every point is a run; the report takes the best on dev. Fisher information (for
ln-fisher masks and the component ranking) is computed once per (task, model, settings) on the pretrained
encoder with the seed-0 head and recorded as kind "peft-fisher" with its safetensors in the run's artifact
folder.

The package: config, masks, data, model, fisher, train (one run), artifacts (save, load, export), sweep; the
report writer is sltlab.report.peft."""

from sltlab.tasks.peft.artifacts import (  # noqa: F401
    DIFF,
    DIFF_MASKS,
    PEFT_BASE,
    TRAINED,
    TRAINED_MANIFEST,
    TRAINED_MASKS,
    _export_ln_adapter,
    _read_run_artifact,
    _sha_bytes,
    export_run,
    exported_base,
    load_diff,
    load_run_model,
    save_run_artifact,
    trained_tensors,
)
from sltlab.tasks.peft.config import (  # noqa: F401
    DEFAULT_FISHER_TASKS,
    DEFAULT_LR_GRID,
    DEFAULT_MASK_DENSITY,
    MASK_EXCLUDE,
    MASK_METHODS,
    MASK_SOURCES,
    MASK_TARGETS,
    METHODS,
    PeftConfig,
    SweepConfig,
    base_settings,
    default_base,
    fisher_tasks,
    make_config,
    model_label,
    parse_method,
)
from sltlab.tasks.peft.data import (  # noqa: F401
    Batches,
    Tokenized,
    _Rows,
    _SeededBatches,
    _tokenizer_hash,
    fixed_subsample,
    token_cache_dir,
    tokenize_split,
)
from sltlab.tasks.peft.fisher import (  # noqa: F401
    FISHER_FILE,
    FisherArg,
    ensure_fisher,
    fisher_cell,
    fisher_cells,
    fisher_config,
    mask_scores,
)
from sltlab.tasks.peft.masks import (  # noqa: F401
    GradientMasks,
    attach_masks,
    body_names,
    count,
    density_at,
    head_names,
    layernorm_names,
    score_names,
    trainable_masks,
)
from sltlab.tasks.peft.model import (  # noqa: F401
    _ENCODERS,
    _finished,
    _run_id,
    _table_json,
    evaluate,
    fresh_model,
    mean_loss,
    per_sample_loss,
    pristine,
    table_from_json,
)
from sltlab.tasks.peft.sweep import (  # noqa: F401
    _summary,
    best_lr,
    run_sweep,
    sweep_cells,
)
from sltlab.tasks.peft.train import (  # noqa: F401
    PeftArg,
    peft_cell,
    peft_cells,
    run_peft,
    train_masked,
)
