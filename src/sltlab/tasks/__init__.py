"""Tasks: the approximation study, GLUE, byte-level LM, PEFT baselines."""
