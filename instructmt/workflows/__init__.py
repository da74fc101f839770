"""Multi-step flows built from the layers below (evaluate a run, ScaLearn stage 1 and transfer, MHR
adaptation, QFA scoring): what `commands/` and `scripts/` call. A command parses arguments and calls
one function here, the way lm-eval's CLI calls `simple_evaluate`."""
